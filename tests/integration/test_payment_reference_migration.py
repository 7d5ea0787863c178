"""Migration 0004 on a database that already holds orders sharing a payment reference."""
from __future__ import annotations

import uuid

import psycopg
import pytest
from sqlalchemy.engine import make_url

from conveyor_tools.local.database import libpq_url
from conveyor.migrations_runner import upgrade


@pytest.fixture
def database_at_0003(database_url: str):
    """A fresh database migrated to just before 0004, as a deployed one would be."""
    name = f"conveyor_0004_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(libpq_url(database_url), autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    url = make_url(database_url).set(database=name).render_as_string(hide_password=False)
    try:
        upgrade(url, "0003_generic_column_map")
        yield url
    finally:
        with psycopg.connect(libpq_url(database_url), autocommit=True) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def test_orders_already_sharing_a_held_payment_are_kept_and_the_earliest_keeps_it(database_at_0003):
    client = uuid.uuid4()
    rows = {  # name: (status, reference, created)
        "first": ("CONFIRMED", "pi_shared", "2026-10-01"),
        "second": ("CONFIRMED", "pi_shared", "2026-10-02"),
        "third": ("CONFIRMED", "pi_shared", "2026-10-03"),
        "rejected": ("REJECTED", "pi_shared", "2026-09-01"),
        "alone": ("CONFIRMED", "pi_alone", "2026-10-01"),
        "other_provider": ("CONFIRMED", "pi_shared", "2026-09-01"),
    }
    ids = {name: uuid.uuid4() for name in rows}
    with psycopg.connect(libpq_url(database_at_0003)) as connection:
        connection.execute("INSERT INTO clients (id, name, api_key_hash) VALUES (%s, 'legacy', 'legacy')", (client,))
        for name, (status, reference, created) in rows.items():
            connection.execute(
                "INSERT INTO orders (id, client_id, status, payment_provider, payment_reference, created_at)"
                " VALUES (%s, %s, %s, %s, %s, %s)",
                (ids[name], client, status, "adyen" if name == "other_provider" else "stripe", reference, created))

    upgrade(database_at_0003)

    with psycopg.connect(libpq_url(database_at_0003)) as connection:
        marked = {row[0] for row in connection.execute("SELECT id FROM orders WHERE legacy_duplicate_payment")}
        statuses = dict(connection.execute("SELECT id, status FROM orders").fetchall())
        assert marked == {ids["second"], ids["third"]}
        assert statuses == {ids[name]: status for name, (status, _, _) in rows.items()}  # nothing else changed
        # From now on the index holds: no new order may share a held reference.
        with pytest.raises(psycopg.errors.UniqueViolation, match="orders_payment_reference_held"):
            connection.execute(
                "INSERT INTO orders (id, client_id, status, payment_provider, payment_reference)"
                " VALUES (%s, %s, 'CONFIRMED', 'stripe', 'pi_alone')", (uuid.uuid4(), client))
