"""The direct adapter against a real PostgreSQL: parameters, results, and lost sessions."""
from __future__ import annotations

import psycopg
import pytest
from sqlalchemy.engine import make_url

from conveyor.adapters.database import Database, create_engine_for
from conveyor.errors import PermanentError, RetryableConflict, TransientError


@pytest.fixture
def direct(database_url: str):
    """A database of its own with a pool of one, so the test knows which session it holds."""
    database = Database(create_engine_for(database_url, pool_size=1))
    yield database
    database.dispose()


def terminate(database_url: str, pid: int) -> None:
    url = make_url(database_url).set(drivername="postgresql")
    with psycopg.connect(url.render_as_string(hide_password=False), autocommit=True) as other:
        other.execute("SELECT pg_terminate_backend(%s, 5000)", (pid,))


def test_named_parameters_bind_by_name_and_leave_casts_and_literals_alone(direct):
    row = direct.fetch_json(
        "SELECT json_build_object('a', CAST(:a AS int), 'again', CAST(:a AS int) + 1, 'b', CAST(:b AS text),"
        " 'literal', ':b', 'cast', '7'::int)::text",
        {"b": "x:y'; --", "a": 41},
    )
    assert row == {"a": 41, "again": 42, "b": "x:y'; --", "literal": ":b", "cast": 7}


def test_rows_and_row_counts(direct):
    with direct.pinned():
        direct.execute("CREATE TEMP TABLE numbers (n integer PRIMARY KEY)")
        assert direct.execute("INSERT INTO numbers VALUES (CAST(:n AS integer))", [{"n": n} for n in range(5)]) == 5
        assert direct.execute("DELETE FROM numbers WHERE n < CAST(:n AS integer)", {"n": 2}) == 2
        assert direct.fetch_json_rows("SELECT to_json(n)::text FROM numbers ORDER BY n") == [2, 3, 4]
        direct.execute("DROP TABLE numbers")


@pytest.mark.parametrize("sql", ["SELECT '1' WHERE false", "SELECT '1' FROM generate_series(1, 2)"])
def test_fetch_json_wants_exactly_one_row(direct, sql):
    with pytest.raises(PermanentError, match="expected one row"):
        direct.fetch_json(sql)


def test_refused_statements_leave_as_the_projects_errors(direct):
    with pytest.raises(PermanentError) as refused:
        direct.fetch_json("SELECT CAST(1 / 0 AS text)")
    assert refused.value.sqlstate == "22012"
    with pytest.raises(RetryableConflict):
        direct.execute("DO $$ BEGIN RAISE EXCEPTION 'raced' USING ERRCODE = '40001'; END $$")
    assert direct.fetch_json("SELECT '\"still usable\"'") == "still usable"


def test_a_terminated_session_is_transient_and_replaced(direct, database_url):
    pid = direct.fetch_json("SELECT CAST(pg_backend_pid() AS text)")
    terminate(database_url, pid)

    with pytest.raises(TransientError):
        direct.fetch_json("SELECT '1'")

    assert direct.fetch_json("SELECT CAST(pg_backend_pid() AS text)") != pid


def test_a_session_lost_inside_a_pinned_block_fails_every_later_statement_of_the_block(direct, database_url):
    with direct.pinned():
        pid = direct.fetch_json("SELECT CAST(pg_backend_pid() AS text)")
        terminate(database_url, pid)
        with pytest.raises(TransientError):
            direct.fetch_json("SELECT '1'")
        with pytest.raises(TransientError, match="lost"):
            direct.fetch_json("SELECT '2'")

    with direct.pinned():
        assert direct.fetch_json("SELECT CAST(pg_backend_pid() AS text)") != pid


def test_an_unreachable_server_is_transient():
    unreachable = Database(create_engine_for("postgresql://nobody@127.0.0.1:9/nowhere?connect_timeout=2"))
    with pytest.raises(TransientError, match="unreachable"):
        unreachable.fetch_json("SELECT '1'")
    with pytest.raises(TransientError, match="unreachable"), unreachable.pinned():
        pass
