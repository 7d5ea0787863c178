"""A report's rows as the engine loads them: records, or COPY text read by several processes.

Reading CSV and converting amounts exactly is the part of a run Python does, on one
core: 3.8 s of a million-row run (2.9 s in two processes on two cores). A large report is cut into byte ranges at line
ends outside quoted fields, and each range is read by a process of its own (the same
SettlementReader, given the header and the number of lines before the range), so that
PostgreSQL receives COPY text from all of them through the run's one connection. Line
numbers stay those of the file, and a malformed row refuses the report as it would
read in one piece.
"""
from __future__ import annotations

import io
import json
import multiprocessing
import os
import threading
from collections.abc import Iterator
from itertools import islice
from multiprocessing.connection import Connection, wait
from pathlib import Path
from typing import Any

from conveyor.reconciliation.formats import (
    MAX_REPORTED_ERRORS,
    SettlementReader,
    SettlementReportError,
    copy_line,
    malformed_report,
)

# Smaller reports are read in the run's own process: starting processes costs more.
PARALLEL_MIN_BYTES = 16 << 20  # about 90,000 rows of a Stripe export
MAX_READERS = 4
LINES_PER_BLOCK = 5_000
_SCAN_BLOCK = 1 << 20
_DATA, _DONE, _REFUSED = b"D", b"E", b"X"


class RunStopped(RuntimeError):
    """Reading was stopped on request."""


class ReportRows:
    """The rows of one report, read once, either way."""

    def __init__(self, path: Path, reader: SettlementReader, stop: threading.Event):
        """`reader` has read the header of `path`; `stop` ends reading at the next block."""
        self.path = path
        self.reader = reader
        self.stop = stop

    def records(self, block_rows: int = LINES_PER_BLOCK) -> Iterator[tuple]:
        """Records (STAGING_COLUMNS tuples), read here; refuses a malformed report after the last."""
        records = self.reader.records()
        while block := list(islice(records, block_rows)):
            if self.stop.is_set():
                raise RunStopped()
            yield from block
        self.reader.raise_if_malformed()

    def copy_text(self, block_rows: int = LINES_PER_BLOCK) -> Iterator[tuple[str | bytes, int]]:
        """(COPY text, records in it) blocks; a large report is read by several processes.

        What the processes noticed is merged into `reader.notes` once they are done."""
        readers = readers_for(self.path.stat().st_size)
        if readers > 1:
            yield from copy_blocks(self.path, self.reader, readers, self.stop)
            return
        records = self.records(block_rows)
        while block := [copy_line(record) for record in islice(records, block_rows)]:
            yield "".join(block), len(block)


def readers_for(size: int) -> int:
    """How many processes read a report of `size` bytes: one per available core, up to MAX_READERS."""
    if size < PARALLEL_MIN_BYTES:
        return 1
    return max(1, min(MAX_READERS, len(os.sched_getaffinity(0))))


def byte_ranges(path: Path, parts: int) -> list[tuple[int, int, int]]:
    """(start, end, lines before start) of up to `parts` ranges of the report's rows, header excluded.

    A range starts right after a line end outside any quoted field: an even number of
    quote characters comes before it (a doubled quote inside a field counts two).
    """
    size = path.stat().st_size
    starts: list[tuple[int, int]] = []  # (row start, line ends before it); the first ends the header
    targets: list[int] = [0]
    quotes = lines = position = 0
    with path.open("rb") as report:
        while targets and (block := report.read(_SCAN_BLOCK)):
            offset = 0
            while targets:
                newline = block.find(b"\n", max(offset, targets[0] - position))
                if newline == -1:
                    break
                quotes += block.count(b'"', offset, newline)
                lines += block.count(b"\n", offset, newline) + 1
                offset = newline + 1
                if quotes % 2 == 0:
                    starts.append((position + offset, lines))
                    targets.pop(0)
                    if len(starts) == 1:  # the header's end: now the ranges can be cut evenly
                        data = size - starts[0][0]
                        targets = [starts[0][0] + data * part // parts for part in range(1, parts)]
            quotes += block.count(b'"', offset)
            lines += block.count(b"\n", offset)
            position += len(block)
    starts = [(start, lines) for start, lines in starts if start < size]
    ends = [start for start, _ in starts[1:]] + [size]
    return [(start, end, lines) for (start, lines), end in zip(starts, ends)]


def copy_blocks(path: Path, reader: SettlementReader, readers: int,
                stop: threading.Event) -> Iterator[tuple[bytes, int]]:
    """The report's records as (COPY text, record count) blocks, read by `readers` processes."""
    ranges = byte_ranges(path, readers)
    context = multiprocessing.get_context("spawn")  # fork is unsafe in a threaded server process
    channels: list[Connection] = []
    processes = []
    try:
        for start, end, lines_before in ranges:
            receiving, sending = context.Pipe(duplex=False)
            process = context.Process(
                target=_read_range, daemon=True,
                args=(str(path), start, end, lines_before, reader.header, reader.format, reader.column_map,
                      reader.timezone, sending))
            process.start()
            sending.close()
            channels.append(receiving)
            processes.append(process)
        errors: list[str] = []
        open_channels = list(channels)
        while open_channels:
            for channel in wait(open_channels):
                try:
                    message = channel.recv_bytes()
                except EOFError:
                    raise RuntimeError("a report reader process ended without finishing its part") from None
                kind, body = message[:1], message[1:]
                if kind == _DATA:
                    if stop.is_set():
                        raise RunStopped()
                    count, _, text = body.partition(b"\n")
                    yield text, int(count)
                elif kind == _DONE:
                    done = json.loads(body)
                    errors.extend(done["errors"])
                    reader.notes.merge(done["notes"])
                    open_channels.remove(channel)
                else:
                    raise SettlementReportError(body.decode())
        if errors:
            raise malformed_report(errors)
    finally:
        for process in processes:
            if process.is_alive():
                process.terminate()
            process.join()
        for channel in channels:
            channel.close()


def _read_range(path: str, start: int, end: int, lines_before: int, header: list[str], format: str,
                column_map: dict[str, str], timezone: str | None, channel: Connection) -> None:
    try:
        with open(path, "rb") as raw:
            raw.seek(start)
            text = io.TextIOWrapper(io.BufferedReader(_Range(raw, end - start)), encoding="utf-8", newline="")
            reader = SettlementReader(text, format, column_map, timezone=timezone, header=header,
                                      lines_before=lines_before)
            lines: list[str] = []
            for record in reader.records():
                lines.append(copy_line(record))
                if len(lines) == LINES_PER_BLOCK:
                    channel.send_bytes(_DATA + f"{len(lines)}\n{''.join(lines)}".encode())
                    lines.clear()
                if len(reader.errors) >= MAX_REPORTED_ERRORS:
                    break
            if lines:
                channel.send_bytes(_DATA + f"{len(lines)}\n{''.join(lines)}".encode())
            channel.send_bytes(_DONE + json.dumps({"errors": reader.errors, "notes": reader.notes.as_dict()}).encode())
    except SettlementReportError as exc:
        channel.send_bytes(_REFUSED + str(exc).encode())
    finally:
        channel.close()


class _Range(io.RawIOBase):
    """At most `remaining` bytes of a file, from where it stands."""

    def __init__(self, raw: Any, remaining: int):
        self._raw = raw
        self._remaining = remaining

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        if self._remaining <= 0:
            return 0
        view = memoryview(buffer)[: self._remaining]
        read = self._raw.readinto(view)
        self._remaining -= read
        return read
