"""Conveyor's `:name` parameters (the RDS Data API's form), rewritten into PostgreSQL's own `$n`.

One scanner for every path that talks to PostgreSQL itself: the direct adapter and the local Data
API endpoint. It skips what PostgreSQL would not read as a parameter: string literals, quoted
identifiers, dollar-quoted bodies and comments; `:x::text` is a parameter and a cast. It also counts
statements, because the Data API runs one statement per call.
"""
from __future__ import annotations

import functools
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_DOLLAR_QUOTE = re.compile(r"\$(?:[A-Za-z_][A-Za-z0-9_]*)?\$")
_IDENTIFIER_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_$")


@dataclass(frozen=True)
class CompiledStatement:
    sql: str  # with $1, $2, ...: run it with psycopg's RawCursor
    names: tuple[str, ...]  # the parameter behind $1, $2, ...
    statements: int  # non-empty statements separated by top-level semicolons

    def values(self, params: Mapping[str, Any]) -> list[Any]:
        """The parameters in placeholder order; KeyError names the first one missing."""
        return [params[name] for name in self.names]


@functools.lru_cache(maxsize=512)
def compile_statement(sql: str) -> CompiledStatement:
    out: list[str] = []
    names: dict[str, int] = {}  # name -> its number, in order of first use
    statements = 0
    has_content = False  # since the last top-level semicolon
    i, n = 0, len(sql)
    while i < n:
        char = sql[i]
        if char == "'":
            end = _end_of_string(sql, i, backslash_escapes=_is_escape_string(sql, i))
            chunk = sql[i:end]
        elif char == '"':
            chunk = sql[i:_end_of_quoted(sql, i, '"')]
        elif char == "$" and (i == 0 or sql[i - 1] not in _IDENTIFIER_CHARS) and (tag := _DOLLAR_QUOTE.match(sql, i)):
            close = sql.find(tag.group(), tag.end())
            chunk = sql[i:n if close < 0 else close + len(tag.group())]
        elif sql.startswith("--", i):
            newline = sql.find("\n", i)
            chunk = sql[i:n if newline < 0 else newline]
            out.append(chunk)
            i += len(chunk)
            continue  # a comment is not statement content
        elif sql.startswith("/*", i):
            chunk = sql[i:_end_of_block_comment(sql, i)]
            out.append(chunk)
            i += len(chunk)
            continue
        elif sql.startswith("::", i):
            chunk = "::"
        elif char == ":" and (name := _NAME.match(sql, i + 1)):
            number = names.setdefault(name.group(), len(names) + 1)
            out.append(f"${number}")
            has_content = True
            i = name.end()
            continue
        elif char == ";":
            statements += has_content
            has_content = False
            out.append(char)
            i += 1
            continue
        else:
            chunk = char
        out.append(chunk)
        has_content = has_content or not chunk.isspace()
        i += len(chunk)
    statements += has_content
    return CompiledStatement(sql="".join(out), names=tuple(names), statements=statements)


def _is_escape_string(sql: str, quote: int) -> bool:
    """E'...' strings take backslash escapes; e'...' too, but not an identifier ending in e."""
    return (
        quote > 0
        and sql[quote - 1] in "eE"
        and (quote == 1 or sql[quote - 2] not in _IDENTIFIER_CHARS)
    )


def _end_of_string(sql: str, start: int, *, backslash_escapes: bool) -> int:
    i, n = start + 1, len(sql)
    while i < n:
        if backslash_escapes and sql[i] == "\\":
            i += 2
        elif sql[i] == "'":
            if sql.startswith("''", i):
                i += 2
            else:
                return i + 1
        else:
            i += 1
    return n


def _end_of_quoted(sql: str, start: int, quote: str) -> int:
    i, n = start + 1, len(sql)
    while i < n:
        if sql[i] == quote:
            if sql.startswith(quote * 2, i):
                i += 2
            else:
                return i + 1
        else:
            i += 1
    return n


def _end_of_block_comment(sql: str, start: int) -> int:
    # PostgreSQL's block comments nest.
    depth, i, n = 0, start, len(sql)
    while i < n:
        if sql.startswith("/*", i):
            depth += 1
            i += 2
        elif sql.startswith("*/", i):
            depth -= 1
            i += 2
            if depth == 0:
                return i
        else:
            i += 1
    return n
