"""The fault-injection harness: exactly-once effects under redelivery, reordering, crashes and faults."""
from __future__ import annotations

import random

from conveyor_tools.chaos import MAX_RECEIVE_COUNT, ChaosRun, ChaosSettings, QueuedMessage, SimulatedQueue


def test_every_invariant_holds_over_20000_messages(database_url):
    summary = ChaosRun(ChaosSettings(), database_url).run()

    assert summary["messages"] >= 20_000
    assert summary["duplicates"] > 5_000 and summary["crashes"] > 0 and summary["faults"] > summary["crashes"]
    assert set(summary["fault_kinds"]) == {"crash_before_commit", "crash_after_commit", "database_fault",
                                           "cluster_paused", "slow"}
    assert summary["invariants"] == dict.fromkeys(summary["invariants"], True), summary


def test_every_invariant_holds_through_the_data_api(database_url):
    summary = ChaosRun(ChaosSettings(orders=2500, data_api=True), database_url).run()

    assert summary["path"] == "data_api" and summary["messages"] >= 2500 and summary["crashes"] > 0
    assert summary["invariants"] == dict.fromkeys(summary["invariants"], True), summary


def test_a_non_idempotent_store_is_caught(database_url):
    summary = ChaosRun(ChaosSettings(orders=1500, naive=True), database_url).run()

    assert summary["invariants"]["stock_conserved"] is False


def test_the_simulated_queue_redelivers_and_redrives():
    queue = SimulatedQueue(visibility_timeout=1.0, rng=random.Random(3))
    poison = QueuedMessage("poison", "{", deliveries_left=0)
    twice = QueuedMessage("twice", "{}", deliveries_left=1)
    queue.add(poison)
    queue.add(twice)
    now = 0.0

    for _ in range(MAX_RECEIVE_COUNT):
        batch = queue.receive(now)
        assert poison in batch
        assert queue.receive(now) == []  # invisible until the timeout passes
        poison.last_failure = "not a valid order message"
        if twice in batch:
            queue.delete(twice, now)
        now += 1.0
    queue.receive(now + 1.0)
    now += 2.0
    while not queue.drained:
        for message in queue.receive(now):
            queue.delete(message, now)
        now += 1.0

    assert queue.dlq == {"poison": "not a valid order message"}
    assert queue.counts["duplicates"] == 1
