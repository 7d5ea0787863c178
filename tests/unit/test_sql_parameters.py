"""Conveyor's `:name` parameters rewritten into PostgreSQL's `$n`, without a database."""
from __future__ import annotations

import pytest

from conveyor.adapters.sql import compile_statement


@pytest.mark.parametrize(
    ("sql", "expected", "names"),
    [
        ("SELECT :a, :b_2", "SELECT $1, $2", ("a", "b_2")),
        ("SELECT CAST(:x AS jsonb), :y, :x::text", "SELECT CAST($1 AS jsonb), $2, $1::text", ("x", "y")),
        ("SELECT '{}'::jsonb, 'it''s :not' , \":nor\"", "SELECT '{}'::jsonb, 'it''s :not' , \":nor\"", ()),
        ("SELECT E'a\\' :no', $$ :no; $$, $f$ :no $f$", "SELECT E'a\\' :no', $$ :no; $$, $f$ :no $f$", ()),
        ("SELECT 1 -- :no\n/* :no /* nested */ :no */ + :yes", "SELECT 1 -- :no\n/* :no /* nested */ :no */ + $1",
         ("yes",)),
        ("SELECT '100%', 5 % :m, '12:30'", "SELECT '100%', 5 % $1, '12:30'", ("m",)),
    ],
)
def test_named_parameters_become_numbered_placeholders(sql, expected, names):
    compiled = compile_statement(sql)

    assert (compiled.sql, compiled.names, compiled.statements) == (expected, names, 1)


def test_values_come_in_placeholder_order():
    compiled = compile_statement("SELECT :b, :a, :b")

    assert compiled.values({"a": 1, "b": 2, "unused": 3}) == [2, 1]
    with pytest.raises(KeyError, match="'a'"):
        compiled.values({"b": 2})


@pytest.mark.parametrize(
    ("sql", "statements"),
    [
        ("SELECT 1", 1),
        ("SELECT 1;", 1),
        ("SELECT 1; -- trailing comment\n", 1),
        ("SELECT 1; SELECT 2", 2),
        ("SELECT ';'; SELECT $$;$$", 2),
        ("CREATE FUNCTION f() RETURNS int LANGUAGE plpgsql AS $$ BEGIN RETURN 1; END $$", 1),
        ("", 0),
    ],
)
def test_statements_are_counted_at_top_level_only(sql, statements):
    assert compile_statement(sql).statements == statements
