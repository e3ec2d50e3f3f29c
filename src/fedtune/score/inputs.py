"""Input files of `fedtune predict`, read row by row (constant memory whatever the file's size).

- CSV (`.csv`) / TSV (`.tsv`, `.tab`): a header row naming the columns; the kind's columns (e.g. `heavy`,
  `light`, or `text`) must be there, every other column (an `id`, your annotations) is kept in the output.
- FASTA (`.fasta`, `.fa`, `.faa`, `.fas`): for a kind of one column, one record per row (`>id`); for two
  columns (heavy and light chains) the two records of a row are consecutive and named `<id>_<column>`, with
  `H` and `L` standing for `heavy` and `light` (`>ab1_H` then `>ab1_L`, in either order; case-insensitive).
  The output has the columns `id` and the kind's columns.
- Plain text (`.txt`): one text per line (a kind of one column, e.g. sentiment); the output column is that
  column's name.
- Parquet (`.parquet`): the columns of a CSV, read in record batches (`score.parquet`); the kind's columns
  hold strings, the others keep their types; a null in one of the kind's columns is a bad row.

Rows are numbered from 1 (the first data row; a FASTA row is its pair of records). A row that cannot be read
(a wrong number of fields, a missing or unpaired record, a null) comes back with its `problem` set; the caller
reports it and goes on.
"""

from __future__ import annotations

import csv
import hashlib
from dataclasses import dataclass
from pathlib import Path

FASTA_SUFFIXES = (".fasta", ".fa", ".faa", ".fas")
CSV_DELIMITERS = {".csv": ",", ".tsv": "\t", ".tab": "\t"}
ALIASES = {"h": "heavy", "l": "light"}      # FASTA id suffixes standing for a column
ENCODING = dict(encoding="utf-8-sig", errors="surrogateescape")   # undecodable bytes: a bad row, not a crash


class InputError(ValueError):
    """An input file that cannot be scored at all (unknown format, missing columns); nothing was written."""


@dataclass
class Row:
    number: int                       # 1-based data row
    cells: list[str]                  # the row as it goes to the output (input columns, in header order)
    values: dict[str, str]            # the kind's columns -> value
    problem: str | None = None        # why the row cannot be read (then `values` may be incomplete)


def fingerprint(path: Path) -> tuple[str, int, int]:
    """(sha256, size in bytes, lines) of a file, read in 1 MiB blocks."""
    h, size, lines = hashlib.sha256(), 0, 0
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
            size += len(block)
            lines += block.count(b"\n")
    if size and not block.endswith(b"\n"):
        lines += 1
    return h.hexdigest(), size, lines


class InputFile:
    """`header` (the output's leading columns), `types` (their Arrow types for a Parquet input, else None),
    `rows()` (a generator of Row), `estimate(lines)` (rows)."""

    def __init__(self, path: str | Path, columns: tuple[str, ...]):
        self.path, self.columns = Path(path), tuple(columns)
        self.types = None                          # the header's Arrow types (a Parquet input)
        suffix = self.path.suffix.lower()
        if not self.path.is_file():
            raise InputError(f"{self.path}: no such file")
        if suffix in CSV_DELIMITERS:
            self.format, self.delimiter = "csv", CSV_DELIMITERS[suffix]
            self.header = self._csv_header()
        elif suffix in FASTA_SUFFIXES:
            self.format = "fasta"
            self.header = list(self.columns) if "id" in self.columns else ["id", *self.columns]
        elif suffix == ".txt":
            if len(self.columns) != 1:
                raise InputError(f"{self.path}: a text file has one text per line, but this model takes the "
                                 f"columns {list(self.columns)}: give a CSV or FASTA file")
            self.format, self.header = "text", list(self.columns)
        elif suffix == ".parquet":
            from .parquet import open_input
            self.format = "parquet"
            self.header, self.types, self._rows = open_input(self.path, self.columns)
        else:
            raise InputError(f"{self.path}: unknown input format {suffix or '(no extension)'!r}; use .csv, .tsv, "
                             f".fasta/.fa, .parquet, or .txt (one text per line)")

    def _csv_header(self) -> list[str]:
        with self.path.open(newline="", **ENCODING) as f:
            try:
                header = next(csv.reader(f, delimiter=self.delimiter), None)
            except csv.Error as exc:
                raise InputError(f"{self.path}: unreadable header row: {exc}") from None
        if not header:
            raise InputError(f"{self.path}: empty file (a header row naming the columns is needed)")
        header = [h.strip() for h in header]
        twice = sorted({h for h in header if header.count(h) > 1})
        if twice:
            raise InputError(f"{self.path}: the header names {twice} more than once")
        missing = [c for c in self.columns if c not in header]
        if missing:
            raise InputError(f"{self.path}: missing column(s) {missing}; this model takes {list(self.columns)}, "
                             f"the file has {header}")
        return header

    def estimate(self, lines: int) -> int:
        """About how many rows a file of `lines` lines holds (for the progress bar)."""
        if self.format == "csv":
            return max(lines - 1, 0)
        if self.format == "fasta":
            return max(lines // (2 * max(len(self.columns), 1)), 1)
        if self.format == "parquet":
            return self._rows                      # the footer says
        return lines

    def rows(self):
        if self.format == "parquet":
            from .parquet import read_rows
            return read_rows(self.path, self.header, self.columns)
        return {"csv": self._csv_rows, "fasta": self._fasta_rows, "text": self._text_rows}[self.format]()

    def _csv_rows(self):
        index = [self.header.index(c) for c in self.columns]
        with self.path.open(newline="", **ENCODING) as f:
            reader = csv.reader(f, delimiter=self.delimiter)
            next(reader)
            number = 0
            while True:
                try:
                    cells = next(reader)
                except StopIteration:
                    return
                except csv.Error as exc:            # e.g. a field over the csv module's size limit
                    number += 1
                    yield Row(number, [], {}, f"unreadable row: {exc}")
                    continue
                number += 1
                if len(cells) != len(self.header):
                    what = "an empty line" if not cells else f"{len(cells)} fields, the header has {len(self.header)}"
                    yield Row(number, cells, {}, what)
                    continue
                yield Row(number, cells, {c: cells[i] for c, i in zip(self.columns, index)})

    def _text_rows(self):
        with self.path.open(newline="", **ENCODING) as f:
            for number, line in enumerate(f, 1):
                text = line.rstrip("\r\n")
                yield Row(number, [text], {self.columns[0]: text})

    def _records(self):
        """(header line, sequence) of each FASTA record; text before the first '>' is a record with no id."""
        name, seq = None, []
        with self.path.open(**ENCODING) as f:
            for line in f:
                line = line.strip()
                if line.startswith(">"):
                    if name is not None or seq:
                        yield name, "".join(seq)
                    name, seq = line[1:].strip(), []
                elif line:
                    seq.append(line)
        if name is not None or seq:
            yield name, "".join(seq)

    def _column_of(self, ident: str) -> tuple[str, str | None]:
        """(row id, column) of a record id `<id>_<column>` (column None when the suffix names none)."""
        base, sep, suffix = ident.rpartition("_")
        if not sep:
            return ident, None
        suffix = suffix.lower()
        column = next((c for c in self.columns if c.lower() == suffix), None) or ALIASES.get(suffix)
        return (base, column) if column in self.columns else (ident, None)

    def _fasta_rows(self):
        single = len(self.columns) == 1
        number, pending, pending_id = 0, {}, None

        def flush():
            nonlocal number, pending, pending_id
            number += 1
            missing = [c for c in self.columns if c not in pending]
            row = Row(number, [pending_id or "", *(pending.get(c, "") for c in self.columns)], dict(pending),
                      f"record {pending_id!r}: no {' or '.join(missing)} record next to it (records of one row are "
                      f"consecutive, named <id>_{'/<id>_'.join(self.columns)})" if missing else None)
            pending, pending_id = {}, None
            return row

        for name, seq in self._records():
            ident = (name or "").split()[0] if name else ""
            if name is None:
                number += 1
                yield Row(number, ["", *([""] * len(self.columns))], {}, "sequence lines before the first '>' header")
                continue
            if single:
                number += 1
                yield Row(number, [ident, seq], {self.columns[0]: seq})
                continue
            base, column = self._column_of(ident)
            if column is None:
                if pending:
                    yield flush()
                number += 1
                yield Row(number, [ident, *([""] * len(self.columns))], {},
                          f"record {ident!r}: the id names no column (end it in "
                          f"{', '.join('_' + c for c in self.columns)} or _H/_L)")
                continue
            if pending and (base != pending_id or column in pending):
                yield flush()
            pending_id = base
            pending[column] = seq
            if len(pending) == len(self.columns):
                yield flush()
        if pending:
            yield flush()
