"""Runs survive the death of the process executing them, and a shutdown loses nothing, against a real PostgreSQL.

A run is orphaned when it is unfinished and no session holds its run lock (executing) or
its claim (queued in a live service process). A process killed with SIGKILL leaves such a
run; the next start of the service executes it again from its report, or marks it FAILED
saying what to do. A drained service leaves its unstarted and stopped runs QUEUED, with
their spooled reports, for that next start.
"""
from __future__ import annotations

import io
import os
import select
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import boto3
import psycopg
import pytest
from moto import mock_aws
from sqlalchemy.engine import make_url

from conveyor.adapters.database import Database
from conveyor.dataapi.client import DataApiDatabase
from conveyor_tools.local.database import libpq_url
from conveyor_tools.local.stack import LOCAL_CLUSTER_ARN, LOCAL_SECRET_ARN
from conveyor.reconciliation import engine
from conveyor.reconciliation.jobs import ORPHAN_FAILURE_GRACE_SECONDS, BackgroundRuns, ShuttingDown
from conveyor.reconciliation.service import (
    CLAIM_LOCK_CLASS, DirectConnectionRequired, ReconciliationService, RunClaims, RunConflict, direct_connection,
)
from conveyor.reconciliation.sources import (
    SPOOL_LEFTOVER_SECONDS, ReportUnavailable, SettlementFile, open_source, reopen, spool, sweep_spool,
)
from support import eventually

HEADER = "reference,currency,amount,created_at"


class Orders:
    """Orders settled by the generic format, written straight into the orders table."""

    def __init__(self, database: Database):
        self.database = database
        self.client_id = str(uuid.uuid4())
        database.execute("INSERT INTO clients (id, name, api_key_hash) VALUES (CAST(:id AS uuid), :id, :id)",
                         {"id": self.client_id})

    def add(self, reference: str, amount: int) -> str:
        order_id = str(uuid.uuid4())
        self.database.execute(
            "INSERT INTO orders (id, client_id, status, currency, total_amount, payment_provider, payment_reference,"
            " payment_amount, created_at) VALUES (CAST(:id AS uuid), CAST(:client AS uuid), 'CONFIRMED', 'USD',"
            " :amount, 'generic', :reference, :amount, '2026-10-01T00:00:00Z')",
            {"id": order_id, "client": self.client_id, "amount": amount, "reference": reference},
        )
        return order_id

    def payment_status(self, order_id: str) -> str | None:
        return self.database.fetch_json(
            "SELECT to_json((SELECT payment_status FROM order_payment_status WHERE order_id = CAST(:id AS uuid)))::text",
            {"id": order_id})


def report_bytes(*references: str) -> bytes:
    return ("\r\n".join([HEADER, *(f"{reference},USD,12.50,2026-10-02T00:00:00Z" for reference in references)]) + "\r\n").encode()



@pytest.fixture
def service(database: Database) -> ReconciliationService:
    return ReconciliationService(database, lambda: direct_connection(database.engine))


@pytest.fixture
def orders(database: Database) -> Orders:
    return Orders(database)


@pytest.fixture
def spool_folder(tmp_path, monkeypatch) -> Path:
    folder = tmp_path / "spool"
    monkeypatch.setenv("CONVEYOR_SPOOL_DIR", str(folder))
    folder.mkdir()
    return folder


@pytest.fixture
def start_service(service, spool_folder, tmp_path) -> Iterator[Callable[[], BackgroundRuns]]:
    """Each call is one service process's background runs, with its own claims session; it reads local
    reports under tmp_path."""
    started: list[BackgroundRuns] = []

    def start() -> BackgroundRuns:
        started.append(BackgroundRuns(service, report_dir=tmp_path))
        return started[-1]

    yield start
    for runs in started:
        runs.drain(10)


@pytest.fixture
def other_session(database_url) -> Iterator[psycopg.Connection]:
    """A session of its own, as another process would have."""
    with psycopg.connect(libpq_url(database_url), autocommit=True) as connection:
        yield connection


def upload(content: bytes, name: str = "report.csv") -> SettlementFile:
    return spool(io.BytesIO(content), f"upload:{name}")


def orphan(service: ReconciliationService, report: SettlementFile, status: str = "QUEUED",
           seconds_ago: int = ORPHAN_FAILURE_GRACE_SECONDS + 60) -> str:
    """A run as a process that died `seconds_ago` leaves it: submitted, maybe started, held by nobody."""
    run_id = service.submit(report)["id"]
    started = status != "QUEUED"
    service.database.execute(
        "UPDATE reconciliation_runs SET status = :status, rows_loaded = :rows, attempts = :attempts,"
        " updated_at = now() - make_interval(secs => :seconds_ago) WHERE id = CAST(:id AS uuid)",
        {"id": run_id, "status": status, "rows": int(started), "attempts": int(started), "seconds_ago": seconds_ago})
    return run_id


def spool_names(folder: Path) -> set[str]:
    return {path.name for path in folder.iterdir()}


# A process that executes a run and hangs after its first chunk is loaded, as one killed mid-run would.
EXECUTE_AND_HANG = """
import sys, threading
from conveyor.adapters.database import Database, create_engine_for
from conveyor.reconciliation.service import ReconciliationService, direct_connection
from conveyor.reconciliation.sources import open_source

database = Database(create_engine_for(sys.argv[1]))
service = ReconciliationService(database, lambda: direct_connection(database.engine))
report = open_source(sys.argv[2])
run = service.submit(report)

def hang_once_loading(progress):
    if progress.stage == "LOADING" and progress.rows_loaded > 0:
        print("executing", run["id"], flush=True)
        threading.Event().wait()

service.execute(run["id"], report, on_progress=hang_once_loading)
"""


def test_a_run_is_orphaned_only_once_the_process_executing_it_is_killed(service, orders, database_url, tmp_path,
                                                                        start_service):
    order = orders.add("KILLED-1", 1250)
    path = tmp_path / "report.csv"
    path.write_bytes(report_bytes("KILLED-1", "NOBODY-1"))
    executor = subprocess.Popen([sys.executable, "-c", EXECUTE_AND_HANG, database_url, str(path)],
                                stdout=subprocess.PIPE, text=True)
    try:
        run_id = None
        while run_id is None:  # its stdout also carries its JSON log lines
            ready, _, _ = select.select([executor.stdout], [], [], 30)
            assert ready, "the executing process did not start loading"
            line = executor.stdout.readline()
            assert line, f"the executing process ended early (exit code {executor.wait()})"
            if line.startswith("executing "):
                run_id = line.split()[1]

        alive = service.get(run_id)
        assert alive["status"] == "LOADING" and alive["orphaned"] is False
        assert service.orphaned_runs() == []
        assert start_service().recover() == {"requeued": [], "failed": [], "unreadable_here": []}
    finally:
        executor.send_signal(signal.SIGKILL)
        executor.wait()
        executor.stdout.close()

    # PostgreSQL ends the session once it sees the connection closed: its locks go with it.
    orphaned = eventually(service.orphaned_runs, what="the killed run becoming orphaned")
    assert [run["id"] for run in orphaned] == [run_id]
    assert orphaned[0]["status"] == "LOADING" and orphaned[0]["orphaned"] is True
    assert service.get(run_id)["orphaned"] is True

    next_start = start_service()
    assert next_start.recover() == {"requeued": [run_id], "failed": [], "unreadable_here": []}
    assert next_start.drain(30) is True
    run = service.get(run_id)
    assert run["status"] == "COMPLETED" and run["orphaned"] is False, run["error"]
    assert run["attempts"] == 2 and run["counts"]["matched"] == 1 and run["counts"]["unknown_payment"] == 1
    assert orders.payment_status(order) == "matched"


def test_a_run_queued_in_a_live_process_is_claimed_not_orphaned(service, orders, other_session, start_service,
                                                               spool_folder):
    orders.add("QUEUED-1", 1250)
    # Another run holds the runs' lock: this process's only thread waits on it with the first run.
    other_session.execute("SELECT pg_advisory_lock(%s, %s)", (engine.LOCK_CLASS, engine.ALL_RUNS_LOCK_KEY))
    live = start_service()
    waiting = live.start(upload(report_bytes("QUEUED-1"), "a.csv"))
    queued = live.start(upload(report_bytes("QUEUED-2"), "b.csv"))
    eventually(lambda: service.holders(waiting["id"])["executing"], what="the first run taking its lock")

    assert service.get(queued["id"])["status"] == "QUEUED"
    assert service.get(waiting["id"])["orphaned"] is False and service.get(queued["id"])["orphaned"] is False
    assert service.orphaned_runs() == []
    another_process = start_service()
    assert another_process.recover() == {"requeued": [], "failed": [], "unreadable_here": []}
    with pytest.raises(RunConflict) as in_progress:
        another_process.restart(queued["id"])
    assert in_progress.value.code == "run_in_progress"
    # The same report again, to this process or another, joins the queued run.
    again = another_process.start(upload(report_bytes("QUEUED-2"), "b-again.csv"))
    assert again["id"] == queued["id"] and again["needs_execution"] is False

    other_session.execute("SELECT pg_advisory_unlock(%s, %s)", (engine.LOCK_CLASS, engine.ALL_RUNS_LOCK_KEY))
    assert live.drain(30) is True
    assert [service.get(run["id"])["status"] for run in (waiting, queued)] == ["COMPLETED", "COMPLETED"]
    assert service.get(queued["id"])["attempts"] == 1
    assert spool_names(spool_folder) == set()  # both copies removed once their runs completed


def test_a_submitted_run_is_claimed_before_its_row_exists(service, spool_folder, monkeypatch):
    claims = RunClaims(service.connect)
    written: list[bool] = []
    fetch_json = service.database.fetch_json

    def orphan_check_as_the_row_is_written(sql, params=None):
        result = fetch_json(sql, params)
        if "INSERT INTO reconciliation_runs" in sql:
            written.append(service.get(result["id"])["orphaned"])
        return result

    monkeypatch.setattr(service.database, "fetch_json", orphan_check_as_the_row_is_written)
    run, run_key = service.submit_claimed(upload(report_bytes("CLAIMED-1")), None, None, claims)
    monkeypatch.setattr(service.database, "fetch_json", fetch_json)
    assert written == [False]
    assert run_key and run["needs_execution"] is True and run["orphaned"] is False
    assert service.orphaned_runs() == []

    claims.close()  # what the death of its process does
    assert eventually(service.orphaned_runs, what="the released run becoming orphaned")[0]["id"] == run["id"]


def test_recovery_executes_a_spooled_upload_left_by_a_dead_process(service, orders, start_service, spool_folder):
    order = orders.add("SPOOLED-1", 1250)
    report = upload(report_bytes("SPOOLED-1"))
    run_id = orphan(service, report, status="CLASSIFYING")
    report.kept_for(run_id)  # as the dead process had kept it

    runs = start_service()
    assert runs.recover() == {"requeued": [run_id], "failed": [], "unreadable_here": []}
    assert runs.drain(30) is True

    run = service.get(run_id)
    assert run["status"] == "COMPLETED" and run["error"] is None
    assert orders.payment_status(order) == "matched"
    assert spool_names(spool_folder) == set()


def test_recovery_rereads_an_s3_source(service, orders, start_service, monkeypatch):
    for name, value in (("AWS_ACCESS_KEY_ID", "test"), ("AWS_SECRET_ACCESS_KEY", "test"),
                        ("AWS_DEFAULT_REGION", "us-east-1")):
        monkeypatch.setenv(name, value)
    orders.add("S3-1", 1250)
    with mock_aws():
        s3 = boto3.client("s3")
        s3.create_bucket(Bucket="settlements")
        s3.put_object(Bucket="settlements", Key="october.csv", Body=report_bytes("S3-1"))
        report = open_source("s3://settlements/october.csv")
        run_id = orphan(service, report, status="LOADING")
        report.discard()  # the dead process's copy is gone with its disk

        runs = start_service()
        assert runs.recover() == {"requeued": [run_id], "failed": [], "unreadable_here": []}
        assert runs.drain(30) is True
    assert service.get(run_id)["status"] == "COMPLETED"


@pytest.mark.parametrize("loss", ["deleted", "changed", "upload_gone", "spooled_copy_torn"])
def test_recovery_fails_a_run_whose_report_cannot_be_read_again_and_says_what_to_do(
        service, orders, start_service, spool_folder, tmp_path, loss):
    order = orders.add("LOST-1", 1250)
    if loss in ("upload_gone", "spooled_copy_torn"):
        report = upload(report_bytes("LOST-1"), "lost.csv")
        run_id = orphan(service, report, status="LOADING")
        if loss == "upload_gone":
            report.discard()
        else:
            report.kept_for(run_id).path.write_bytes(report_bytes("LOST-1")[:-5])
        expected = "Upload the report again"
    else:
        path = tmp_path / "lost.csv"
        path.write_bytes(report_bytes("LOST-1"))
        run_id = orphan(service, open_source(str(path)), status="LOADING")
        if loss == "deleted":
            path.unlink()
            expected = "is not there any more. Submit the report again"
        else:
            path.write_bytes(report_bytes("LOST-1", "LOST-2"))
            expected = "has changed since the run was submitted"

    assert start_service().recover() == {"requeued": [], "failed": [run_id], "unreadable_here": []}

    run = service.get(run_id)
    assert run["status"] == "FAILED" and run["orphaned"] is False and run["finished_at"]
    assert "stopped before it finished (nothing of it was applied)" in run["error"]
    assert expected in run["error"]
    assert orders.payment_status(order) is None
    assert spool_names(spool_folder) == set()  # a torn copy is removed, not kept


def test_a_run_whose_report_is_unreadable_here_is_left_to_its_own_process_for_a_while(
        service, start_service, spool_folder):
    # Its upload may be in the spool folder of the task it ran on, whose worker gunicorn is starting again.
    report = upload(report_bytes("ELSEWHERE-1"), "elsewhere.csv")
    run_id = orphan(service, report, status="LOADING", seconds_ago=5)
    report.discard()
    runs = start_service()

    assert runs.recover() == {"requeued": [], "failed": [], "unreadable_here": [run_id]}
    run = service.get(run_id)
    assert (run["status"], run["orphaned"], run["error"]) == ("LOADING", True, None)
    with pytest.raises(RunConflict) as unavailable:
        runs.restart(run_id)
    assert unavailable.value.code == "report_unavailable" and "Upload the report again" in str(unavailable.value)
    assert service.get(run_id)["status"] == "LOADING"

    service.database.execute("UPDATE reconciliation_runs SET updated_at = now() - make_interval(secs => :age)"
                             " WHERE id = CAST(:id AS uuid)", {"id": run_id, "age": ORPHAN_FAILURE_GRACE_SECONDS})
    assert runs.recover() == {"requeued": [], "failed": [run_id], "unreadable_here": []}
    assert service.get(run_id)["status"] == "FAILED"


def test_several_processes_starting_at_once_queue_each_orphan_once(service, orders, start_service, tmp_path):
    run_ids = []
    for number in range(3):
        orders.add(f"MANY-{number}", 1250)
        path = tmp_path / f"many-{number}.csv"
        path.write_bytes(report_bytes(f"MANY-{number}"))
        run_ids.append(orphan(service, open_source(str(path)), status="LOADING" if number else "QUEUED"))
    processes = [start_service() for _ in range(4)]
    all_start = threading.Barrier(len(processes))
    outcomes: list[dict] = []

    def start_up(runs: BackgroundRuns) -> None:
        all_start.wait()
        outcomes.append(runs.recover())

    threads = [threading.Thread(target=start_up, args=(runs,)) for runs in processes]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)

    requeued = [run_id for outcome in outcomes for run_id in outcome["requeued"]]
    assert sorted(requeued) == sorted(run_ids)  # each once, by one of them
    assert all(runs.drain(30) for runs in processes)
    assert [(service.get(run_id)["status"], service.get(run_id)["attempts"]) for run_id in run_ids] == \
        [("COMPLETED", 1), ("COMPLETED", 2), ("COMPLETED", 2)]


def test_drain_leaves_stopped_and_unstarted_runs_queued_with_their_reports_for_the_next_start(
        service, orders, other_session, start_service, spool_folder):
    first_order, second_order = orders.add("DRAIN-1", 1250), orders.add("DRAIN-2", 1250)
    other_session.execute("SELECT pg_advisory_lock(%s, %s)", (engine.LOCK_CLASS, engine.ALL_RUNS_LOCK_KEY))
    draining = start_service()
    stopped = draining.start(upload(report_bytes("DRAIN-1"), "one.csv"))["id"]
    never_started = draining.start(upload(report_bytes("DRAIN-2"), "two.csv"))["id"]
    eventually(lambda: service.holders(stopped)["executing"], what="the first run taking its lock")

    assert draining.drain(0.2) is False
    other_session.execute("SELECT pg_advisory_unlock(%s, %s)", (engine.LOCK_CLASS, engine.ALL_RUNS_LOCK_KEY))
    eventually(lambda: len(service.orphaned_runs()) == 2, what="both runs being let go")

    for run_id, words in ((stopped, "stopped while executing"), (never_started, "stopped before it started")):
        run = service.get(run_id)
        assert (run["status"], run["orphaned"], run["rows_loaded"]) == ("QUEUED", True, 0)
        assert words in run["error"] and "nothing of it was applied" in run["error"]
    assert orders.payment_status(first_order) is None
    assert spool_names(spool_folder) == {f"run-{stopped}.csv", f"run-{never_started}.csv"}

    next_start = start_service()
    assert sorted(next_start.recover()["requeued"]) == sorted([stopped, never_started])
    assert next_start.drain(30) is True
    assert [service.get(run_id)["status"] for run_id in (stopped, never_started)] == ["COMPLETED", "COMPLETED"]
    assert service.get(stopped)["error"] is None
    assert orders.payment_status(second_order) == "matched"
    assert spool_names(spool_folder) == set()


def test_a_draining_service_refuses_to_take_runs_over(service, start_service, tmp_path):
    path = tmp_path / "a.csv"
    path.write_bytes(report_bytes("REFUSED-1"))
    run_id = orphan(service, open_source(str(path)))
    runs = start_service()
    runs.begin_drain()

    assert runs.recover() == {"requeued": [], "failed": [], "unreadable_here": []}
    with pytest.raises(ShuttingDown):
        runs.restart(run_id)
    assert service.get(run_id)["orphaned"] is True


def fail(service: ReconciliationService, run_id: str, error: str) -> None:
    service.database.execute("UPDATE reconciliation_runs SET status = 'FAILED', error = :error, finished_at = now()"
                             " WHERE id = CAST(:id AS uuid)", {"id": run_id, "error": error})


def test_restart_executes_a_failed_run_again_and_refuses_what_it_cannot(
        service, orders, start_service, spool_folder, tmp_path, other_session):
    order = orders.add("RESTART-1", 1250)
    path = tmp_path / "restart.csv"
    path.write_bytes(report_bytes("RESTART-1"))
    runs = start_service()
    failed = service.submit(open_source(str(path)))["id"]
    fail(service, failed, "the run stopped on an unexpected error (OperationalError: …); nothing was applied")

    other_session.execute("SELECT pg_advisory_lock(%s, %s)", (engine.LOCK_CLASS, engine.ALL_RUNS_LOCK_KEY))
    restarted = runs.restart(failed)  # it waits behind the lock held here, QUEUED
    assert restarted["status"] == "QUEUED" and restarted["error"] is None and restarted["orphaned"] is False
    with pytest.raises(RunConflict) as queued:
        runs.restart(failed)
    assert queued.value.code == "run_in_progress"
    other_session.execute("SELECT pg_advisory_unlock(%s, %s)", (engine.LOCK_CLASS, engine.ALL_RUNS_LOCK_KEY))
    assert runs.drain(30) is True
    assert service.get(failed)["status"] == "COMPLETED" and orders.payment_status(order) == "matched"

    again = start_service()
    with pytest.raises(RunConflict) as completed:
        again.restart(failed)
    assert completed.value.code == "already_completed" and "new run" in str(completed.value)
    assert again.restart(str(uuid.uuid4())) is None
    assert again.restart("not-a-run") is None

    gone_upload = upload(report_bytes("RESTART-2"), "gone.csv")
    failed_upload = service.submit(gone_upload)["id"]
    gone_upload.discard()
    fail(service, failed_upload, "the first failure")
    with pytest.raises(RunConflict) as unavailable:
        again.restart(failed_upload)
    assert unavailable.value.code == "report_unavailable" and "Upload the report again" in str(unavailable.value)
    assert service.get(failed_upload)["error"] == "the first failure"  # a FAILED run keeps its own reason


def test_a_run_executing_in_a_session_that_claims_nothing_is_not_taken_over(service, other_session, start_service,
                                                                          tmp_path):
    path = tmp_path / "cli.csv"
    path.write_bytes(report_bytes("CLI-1"))
    run_id = orphan(service, open_source(str(path)), status="LOADING")
    # `conveyor reconcile` holds only the engine's run lock.
    with other_session.transaction():
        other_session.execute("SELECT pg_advisory_xact_lock(%s, hashtext(%s))", (engine.RUN_LOCK_CLASS, run_id))
        assert service.get(run_id)["orphaned"] is False
        with pytest.raises(RunConflict) as executing:
            start_service().restart(run_id)
        assert executing.value.code == "run_in_progress"
    assert service.get(run_id)["status"] == "LOADING" and service.get(run_id)["orphaned"] is True


def test_reopen_checks_the_content_it_finds(service, spool_folder, tmp_path):
    path = tmp_path / "a.csv"
    path.write_bytes(report_bytes("REOPEN-1"))
    original = open_source(str(path))

    copy = reopen("00000000-0000-0000-0000-000000000001", original.source, original.sha256, tmp_path)
    assert copy.spooled and copy.path.read_bytes() == path.read_bytes()  # a service reads a copy
    kept = upload(report_bytes("REOPEN-2")).kept_for("00000000-0000-0000-0000-000000000002")
    again = reopen("00000000-0000-0000-0000-000000000002", "upload:x.csv", kept.sha256, None)
    assert again.path == kept.path and again.spooled


def test_a_service_reopens_a_local_report_only_under_its_report_folder(service, spool_folder, tmp_path):
    # A run the CLI submitted may name any path; the service that takes it over reads only its folder.
    path = tmp_path / "a.csv"
    path.write_bytes(report_bytes("REOPEN-3"))
    original = open_source(str(path))
    elsewhere = tmp_path / "reports"
    elsewhere.mkdir()

    for report_dir in (None, elsewhere):
        with pytest.raises(ReportUnavailable) as refused:
            reopen("00000000-0000-0000-0000-000000000003", original.source, original.sha256, report_dir)
        assert "does not read" in str(refused.value) and "multipart field 'report'" in str(refused.value)
    with pytest.raises(ReportUnavailable, match="does not read"):
        reopen("00000000-0000-0000-0000-000000000004", "/etc/passwd", original.sha256, elsewhere)


def test_the_spool_sweep_removes_only_what_no_run_will_read_again(service, spool_folder, tmp_path):
    def run_with(status: str) -> str:
        path = tmp_path / f"{status}-{uuid.uuid4().hex[:6]}.csv"
        path.write_bytes(report_bytes(path.stem))
        run_id = service.submit(open_source(str(path)))["id"]
        service.database.execute("UPDATE reconciliation_runs SET status = :status WHERE id = CAST(:id AS uuid)",
                                 {"id": run_id, "status": status})
        return run_id

    old = time.time() - SPOOL_LEFTOVER_SECONDS - 60
    completed, failed_old, failed_fresh, unfinished_old = (
        run_with("COMPLETED"), run_with("FAILED"), run_with("FAILED"), run_with("LOADING"))
    unknown_old, unknown_fresh = uuid.uuid4(), uuid.uuid4()
    files = {
        f"run-{completed}.csv": None, f"run-{failed_old}.csv": old, f"run-{failed_fresh}.csv": None,
        f"run-{unfinished_old}.csv": old, f"run-{unknown_old}.csv": old, f"run-{unknown_fresh}.csv": None,
        "report-abandoned.csv": old, "report-uploading.csv": None, "notes.txt": old,
    }
    for name, mtime in files.items():
        (spool_folder / name).write_bytes(b"x")
        if mtime is not None:
            os.utime(spool_folder / name, (mtime, mtime))

    removed = sweep_spool(service.statuses)

    assert {path.name for path in removed} == {
        f"run-{completed}.csv", f"run-{failed_old}.csv", f"run-{unknown_old}.csv", "report-abandoned.csv"}
    assert spool_names(spool_folder) == {
        f"run-{failed_fresh}.csv", f"run-{unfinished_old}.csv", f"run-{unknown_fresh}.csv", "report-uploading.csv",
        "notes.txt"}
    assert service.statuses(["not-a-uuid", completed]) == {completed: "COMPLETED"}


def test_claims_survive_a_broken_claims_session(service, other_session):
    def claimed() -> int:
        return other_session.execute("SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND classid = %s::oid",
                                     (CLAIM_LOCK_CLASS,)).fetchone()[0]

    claims = RunClaims(service.connect)
    assert claims.take("key-1") is True
    assert claims.take("key-1") is False  # held by this process already
    other_session.execute("SELECT pg_terminate_backend(pid, 5000) FROM pg_locks"
                          " WHERE locktype = 'advisory' AND classid = %s::oid", (CLAIM_LOCK_CLASS,))
    assert claimed() == 0

    assert claims.take("key-2") is True  # on a new session, which claims key-1 again
    assert claimed() == 2
    other_session.execute("SELECT pg_advisory_lock(%s, hashtext('key-3'))", (CLAIM_LOCK_CLASS,))
    assert claims.take("key-3") is False  # another live process holds it
    other_session.execute("SELECT pg_advisory_unlock(%s, hashtext('key-3'))", (CLAIM_LOCK_CLASS,))
    claims.release("key-1")
    assert claimed() == 1
    claims.close()
    eventually(lambda: claimed() == 0, what="the claims session ending")
    assert claims.take("key-4") is False  # closed: this process takes nothing more


def test_through_the_data_api_runs_execute_but_are_neither_claimed_nor_recovered(
        orders, database_url, data_api_endpoint, spool_folder):
    data_api_endpoint.resume()
    data_api = DataApiDatabase(LOCAL_CLUSTER_ARN, LOCAL_SECRET_ARN, make_url(database_url).database)
    settled = orders.add("DATA-API-1", 1250)
    runs = BackgroundRuns(ReconciliationService(data_api, None))
    try:
        run = runs.start(upload(report_bytes("DATA-API-1", "DATA-API-UNKNOWN")))
        done = eventually(lambda: (current := runs.service.get(run["id"]))["status"] in ("COMPLETED", "FAILED")
                          and current, what="the run to finish")

        assert done["status"] == "COMPLETED", done["error"]
        assert done["counts"]["matched"] == 1 and done["counts"]["unknown_payment"] == 1
        assert orders.payment_status(settled) == "matched"
        # The job removes its spooled copy just after the run commits.
        eventually(lambda: spool_names(spool_folder) == set(), what="the spooled upload being removed")
        # A claim is a lock held by a lasting session, which the Data API does not keep.
        assert runs.recovered.is_set() and runs.recover_in_background() is None
        assert runs.recover() == {"requeued": [], "failed": [], "unreadable_here": []}
        with pytest.raises(DirectConnectionRequired):
            runs.restart(run["id"])
    finally:
        assert runs.drain(5) is True
        data_api.dispose()


def test_a_service_without_a_direct_connection_needs_the_data_api(database):
    with pytest.raises(TypeError, match="DataApiDatabase"):
        ReconciliationService(database, None)
