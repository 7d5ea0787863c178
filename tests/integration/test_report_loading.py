"""A report read by several processes gives exactly what one reader gives: records, line numbers, refusals."""
from __future__ import annotations

import threading
from pathlib import Path

import pytest

from conveyor.reconciliation import loading
from conveyor.reconciliation.formats import SettlementReader, SettlementReportError
from conveyor.reconciliation.loading import ReportRows, RunStopped, byte_ranges

HEADER = "reference,currency,amount,type,transaction_id"


def report(tmp_path: Path, rows: list[str], name: str = "report.csv") -> Path:
    path = tmp_path / name
    path.write_bytes(("\ufeff" + "\r\n".join([HEADER, *rows]) + "\r\n").encode())
    return path


def rows_read(path: Path, readers: int, monkeypatch) -> list[str]:
    monkeypatch.setattr(loading, "readers_for", lambda size: readers)
    with path.open(encoding="utf-8-sig", newline="") as text:
        blocks = list(ReportRows(path, SettlementReader(text), threading.Event()).copy_text(block_rows=7))
    return sorted(line for text, _ in blocks for line in (text.decode() if isinstance(text, bytes) else text).splitlines())


def many_rows(count: int) -> list[str]:
    # Quoted commas, doubled quotes and line ends inside quoted fields, a tab and a backslash.
    return [f'G-{n},USD,{n}.25,payment,"txn {n}, ""{n % 7}""\n\t\\\\"' if n % 5 == 0 else f"G-{n},usd,{n}.50,refund,t{n}"
            for n in range(count)]


def test_byte_ranges_start_after_line_ends_outside_quoted_fields(tmp_path):
    path = tmp_path / "r.csv"
    path.write_bytes(b'h1,h2\r\n1,"a\nb"\r\n2,x\r\n3,"q""\n"\r\n4,y\r\n')
    data = path.read_bytes()

    ranges = byte_ranges(path, 5)

    assert [data[start:end] for start, end, _ in ranges] == [b'1,"a\nb"\r\n', b"2,x\r\n", b'3,"q""\n"\r\n', b"4,y\r\n"]
    assert [lines for _, _, lines in ranges] == [1, 3, 4, 6]  # line ends before each range
    assert byte_ranges(path, 1) == [(7, len(data), 1)]


@pytest.mark.parametrize("readers", [2, 3, 4])
def test_several_readers_give_exactly_the_rows_one_reader_gives(tmp_path, monkeypatch, readers):
    path = report(tmp_path, many_rows(2_000))

    assert rows_read(path, readers, monkeypatch) == rows_read(path, 1, monkeypatch)


def test_malformed_rows_anywhere_refuse_the_report_with_their_file_line_numbers(tmp_path, monkeypatch):
    rows = many_rows(3_000)
    rows[10] = "G-bad-1,USD,1.005,payment,x"
    rows[2_900] = "G-bad-2,QQQ,1.00,payment,x"
    path = report(tmp_path, rows)
    # Quoted line ends count: a row's line is where it stands in the file.
    lines = path.read_bytes().split(b"\n")
    first, second = (lines.index(row.encode() + b"\r") + 1 for row in (rows[10], rows[2_900]))
    assert (first, second) == (14, 3_481)

    for readers in (1, 3):
        with pytest.raises(SettlementReportError) as refused:
            rows_read(path, readers, monkeypatch)
        message = str(refused.value)
        assert f"line {first}: amount '1.005'" in message
        assert f"line {second}: unknown ISO 4217 currency code 'QQQ'" in message
        assert message.index(f"line {first}:") < message.index(f"line {second}:")


def test_a_report_that_stops_being_utf8_is_refused_by_any_reader(tmp_path, monkeypatch):
    path = report(tmp_path, many_rows(1_000))
    path.write_bytes(path.read_bytes() + "G-late,USD,1.00,payment,caf\xe9\r\n".encode("latin-1"))

    with pytest.raises(SettlementReportError, match="not UTF-8"):
        rows_read(path, 2, monkeypatch)


def test_a_stop_request_ends_reading(tmp_path, monkeypatch):
    path = report(tmp_path, many_rows(2_000))
    monkeypatch.setattr(loading, "readers_for", lambda size: 2)
    stop = threading.Event()
    stop.set()
    with path.open(encoding="utf-8-sig", newline="") as text:
        with pytest.raises(RunStopped):
            list(ReportRows(path, SettlementReader(text), stop).copy_text())
