"""What an operator does in the console, in a real browser against `conveyor dev`'s stack."""
from __future__ import annotations

import csv
import io
import json
import re
import time
import uuid

import boto3
import requests
from playwright.sync_api import expect

from browser_support import sign_in, shot
from conveyor_tools.local.stack import FIRST_ADMIN
from conveyor.services.access import Role

STRIPE_HEADER = "balance_transaction_id,created_utc,currency,gross,fee,net,reporting_category,charge_id,payment_intent_id"


def place_order(stack, reference: str, sku: str = "A-1", quantity: int = 2) -> str:
    answer = requests.post(f"{stack.api_url}/orders", timeout=10, headers={
        "X-Api-Key": stack.api_key, "Idempotency-Key": uuid.uuid4().hex, "Content-Type": "application/json"},
        data=json.dumps({"currency": "USD", "lines": [{"sku": sku, "quantity": quantity}],
                         "payment": {"provider": "stripe", "reference": reference, "amount": 1000 * quantity}}))
    assert answer.status_code == 202, answer.text
    order_id = answer.json()["order_id"]
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        got = requests.get(f"{stack.api_url}/orders/{order_id}", headers={"X-Api-Key": stack.api_key}, timeout=10)
        if got.status_code == 200 and got.json()["status"] != "PENDING":
            return order_id
        time.sleep(0.1)
    raise AssertionError(f"order {order_id} did not settle")


def test_the_first_admin_signs_in_and_out(page, stack, artifacts):
    page.goto("/")
    expect(page).to_have_url(re.compile(r"/login\?next="))
    shot(page, artifacts, "login")
    page.get_by_label("User name").fill(FIRST_ADMIN)
    page.get_by_label("Password").fill("not the password")
    page.get_by_role("button", name="Sign in").click()
    expect(page.get_by_role("alert")).to_contain_text("wrong user name or password")
    sign_in(page, FIRST_ADMIN, stack.admin_password)
    expect(page.get_by_role("heading", name="Dashboard")).to_be_visible()
    expect(page.get_by_text("Orders queue depth")).to_be_visible()
    shot(page, artifacts, "dashboard")
    page.get_by_role("button", name="Sign out").click()
    expect(page.get_by_role("status")).to_contain_text("signed out")
    page.goto("/orders")
    expect(page).to_have_url(re.compile(r"/login"))


def test_a_viewer_sees_but_cannot_act(page, stack, new_user, artifacts):
    sign_in(page, new_user(Role.VIEWER))
    page.goto("/stock")
    expect(page.get_by_role("cell", name="A-1", exact=True)).to_be_visible()
    expect(page.get_by_role("button", name="Adjust")).to_have_count(0)
    expect(page.get_by_role("link", name="Audit log")).to_have_count(0)
    shot(page, artifacts, "stock-viewer")
    # Posting anyway, with a valid CSRF token from the session, is refused by the server.
    token = page.locator("body").get_attribute("hx-headers")
    refused = page.request.post("/stock/A-1/adjust", form={
        "csrf_token": json.loads(token)["X-CSRFToken"], "delta": "5", "reason": "sneaky"})
    assert refused.status == 403
    assert page.request.get("/audit").status == 403


def test_an_order_placed_through_the_api_is_found_with_its_timeline(page, stack, new_user, artifacts):
    reference = f"pi_browser_{uuid.uuid4().hex[:8]}"
    order_id = place_order(stack, reference)
    sign_in(page, new_user(Role.OPERATOR))
    page.get_by_role("link", name="Orders", exact=True).click()
    page.get_by_label("Search").fill(reference)
    page.get_by_role("button", name="Search").click()
    shot(page, artifacts, "orders")
    page.get_by_role("link", name=re.compile(order_id[:8])).click()
    expect(page.get_by_role("heading", level=1)).to_contain_text(order_id)
    timeline = page.locator("ol.timeline")
    expect(timeline).to_contain_text("new → CONFIRMED")
    expect(page.get_by_text("20.00 USD").first).to_be_visible()
    # Times show in the viewer's zone, UTC on hover.
    expect(timeline.locator("time").first).to_have_attribute("title", re.compile(r"UTC$"))
    shot(page, artifacts, "order")
    page.get_by_label("Reason (goes in the audit log)").fill("customer called")
    page.get_by_role("button", name="Cancel order").click()
    expect(page.get_by_role("status")).to_contain_text("Cancellation queued")
    deadline = time.monotonic() + 20
    while "CONFIRMED → CANCELLED" not in page.locator("ol.timeline").inner_text():
        assert time.monotonic() < deadline, "the cancel did not reach the timeline"
        page.reload()
    expect(page.locator("ol.timeline")).to_contain_text("order.cancel")


def test_a_poisoned_message_shows_its_reason_in_dead_letters_and_is_redriven(page, stack, new_user, artifacts,
                                                                           session_database):
    sqs = boto3.client("sqs", endpoint_url=stack.sqs.endpoint_url, region_name="us-east-1",
                       aws_access_key_id="test", aws_secret_access_key="test")
    poison = json.dumps({"type": "place_order", "poison": uuid.uuid4().hex})
    message_id = sqs.send_message(QueueUrl=stack.sqs.queue_url, MessageBody=poison)["MessageId"]
    sign_in(page, new_user(Role.OPERATOR))
    deadline = time.monotonic() + 60
    while True:  # five failed receives, a second apart, then SQS moves it to the DLQ
        page.goto("/dead-letters")
        if page.get_by_text(message_id).count():
            break
        assert time.monotonic() < deadline, "the poisoned message never reached the dead letters"
        time.sleep(1)
    row = page.get_by_role("row").filter(has_text=message_id)
    expect(row).to_contain_text("not a valid order message")
    shot(page, artifacts, "dead-letters")
    row.get_by_role("checkbox").check()
    page.get_by_role("button", name="Redrive to the orders queue").click()
    expect(page.get_by_role("status")).to_contain_text("Redrove 1 message(s)")
    expect(page.get_by_text(message_id)).to_have_count(0)
    # Back on the orders queue: the worker receives it again, under a new message id, and records why it failed.
    deadline = time.monotonic() + 30
    while not session_database.fetch_json(
            "SELECT to_json(count(*))::text FROM message_failures WHERE message_id <> :id AND failed_at >"
            " (SELECT occurred_at FROM admin_audit WHERE action = 'dlq.redrive' ORDER BY id DESC LIMIT 1)",
            {"id": message_id}):
        assert time.monotonic() < deadline, "the redriven message did not come back to the worker"
        time.sleep(0.2)


def test_a_stripe_report_is_reconciled_filtered_and_exported(page, stack, new_user, artifacts, tmp_path):
    reference = f"pi_recon_{uuid.uuid4().hex[:8]}"
    place_order(stack, reference, quantity=1)  # 10.00 USD, settled as 9.00: an amount mismatch
    report = tmp_path / "stripe.csv"
    report.write_text(f"{STRIPE_HEADER}\n"
                      f"txn_1,2026-10-02 09:00:00,usd,9.00,0.30,8.70,charge,ch_1,{reference}\n"
                      f"txn_2,2026-10-02 09:05:00,usd,5.00,0.45,4.55,charge,ch_2,pi_unknown_{uuid.uuid4().hex[:6]}\n")
    sign_in(page, new_user(Role.OPERATOR))
    page.goto("/reconciliations")
    page.get_by_label("Upload a report").set_input_files(str(report))
    page.get_by_role("button", name="Start reconciliation").click()
    expect(page.locator("#progress")).to_contain_text("COMPLETED", timeout=30_000)
    expect(page.get_by_role("heading", name="Discrepancies by category")).to_be_visible()
    shot(page, artifacts, "reconciliation-run")
    page.get_by_role("combobox", name="Category").select_option("amount_mismatch")
    page.get_by_role("button", name="Filter").click()
    table = page.locator("table").last
    expect(table).to_contain_text(reference)
    expect(table).not_to_contain_text("pi_unknown_")
    with page.expect_download() as download:
        page.get_by_role("button", name="Export CSV").click()
    rows = list(csv.DictReader(io.StringIO(open(download.value.path(), encoding="utf-8").read())))
    assert [(r["category"], r["payment_reference"]) for r in rows] == [("amount_mismatch", reference)]
    page.get_by_label(re.compile("Note for discrepancy")).first.fill("refund issued by finance")
    page.get_by_role("button", name="Resolve").first.click()
    expect(page.get_by_text("refund issued by finance")).to_be_visible()
    page.goto("/reconciliations")
    shot(page, artifacts, "reconciliations")


def test_a_stock_adjustment_shows_in_the_audit_log(page, stack, new_user, artifacts):
    sign_in(page, new_user(Role.ADMIN))
    page.goto("/stock")
    before = int(page.locator('[data-available="B-2"]').inner_text().replace(",", ""))
    page.get_by_label("Change for B-2 (e.g. 5 or -3)").fill("-4")
    page.get_by_label("Reason for B-2").fill("damaged in the warehouse")
    page.get_by_role("button", name="Adjust").nth(1).click()
    expect(page.get_by_role("status")).to_contain_text(f"B-2: {before - 4:,} available now")
    shot(page, artifacts, "stock")
    page.get_by_role("link", name="Audit log").click()
    entry = page.get_by_role("row").filter(has_text="sku:B-2").first
    expect(entry).to_contain_text("stock.adjust")
    expect(entry).to_contain_text("damaged in the warehouse")
    expect(entry).to_contain_text(f'"available": {before - 4}')
    shot(page, artifacts, "audit-log")
    for name, path in (("clients", "/clients"), ("users", "/users"), ("account", "/account")):
        page.goto(path)
        shot(page, artifacts, name)
