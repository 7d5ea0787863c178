"""Order worker on Lambda: an SQS batch in, the messages to redeliver out."""
from __future__ import annotations

import os

# Conveyor uses no pydantic plugins; looking for them reads every installed package's metadata at cold start.
os.environ.setdefault("PYDANTIC_DISABLE_PLUGINS", "__all__")

from contextlib import nullcontext

from chalice import Chalice

from conveyor import bootstrap
from conveyor.dataapi.client import retry_budget
from conveyor.observability import CORRELATION_ATTRIBUTE, get_logger, publish_batch_metrics
from conveyor.services.processing import QueueRecord

# The queue's redrive maxReceiveCount: a failure on that receive is a DLQ send.
MAX_RECEIVE_COUNT = int(os.environ.get("ORDERS_MAX_RECEIVE_COUNT", "5"))
REPORT_RESERVE_SECONDS = 2.0

# Powertools owns log output; Chalice would add a second, plain-text handler.
app = Chalice(app_name="conveyor-worker", configure_logs=False)


@app.on_sqs_message(queue=os.environ.get("ORDERS_QUEUE_NAME", "conveyor-orders"), batch_size=10)
def handle_orders(event):
    records = []
    for record in event:
        raw = record.to_dict()
        attributes = raw.get("messageAttributes") or {}
        records.append(
            QueueRecord(
                message_id=raw["messageId"],
                body=record.body,
                correlation_id=(attributes.get(CORRELATION_ATTRIBUTE) or {}).get("stringValue"),
                receive_count=int((raw.get("attributes") or {}).get("ApproximateReceiveCount", 1)),
            )
        )
    # Retry a resuming database only while the batch can still be reported in time.
    budget = (retry_budget(event.context.get_remaining_time_in_millis() / 1000 - REPORT_RESERVE_SECONDS)
              if event.context else nullcontext())
    with budget:
        result = bootstrap.batch_processor().process(records)
        record_failure_reasons(result.failure_reasons, {r.message_id: r.receive_count for r in records})
    publish_batch_metrics(result, {r.message_id: r.receive_count for r in records}, MAX_RECEIVE_COUNT)
    # Needs ReportBatchItemFailures on the event source mapping (added in infra/, Chalice cannot).
    return {"batchItemFailures": [{"itemIdentifier": i} for i in result.failed_message_ids]}


def record_failure_reasons(reasons: dict[str, str], receive_counts: dict[str, int]) -> None:
    """Why each failed message failed, for the console's dead letters; one extra statement, only on failure."""
    if not reasons:
        return
    try:
        bootstrap.failure_log().record(reasons, receive_counts)
    except Exception as exc:  # noqa: BLE001 - the database may be what failed the batch; SQS redelivers anyway
        get_logger("conveyor-worker").warning("failure reasons not recorded", extra={"reason": str(exc)[:300]})
