"""Parquet input and output of `fedtune predict` (pyarrow), streamed: constant memory whatever the file's size.

Input (`.parquet`): read in record batches (`ParquetFile.iter_batches`, column chunks through a buffered
stream, so a file of one huge row group is not read whole). The columns are those of a CSV: the kind's
(`heavy`, `light`, or `text`), which must hold strings, and any others, kept in the output with their Arrow
types. Rows are numbered from 1 over the whole file; a null in one of the kind's columns is a bad row.

Output (`--out x.parquet`). A Parquet file is not readable until its footer is written, and it cannot be
appended to once it is, so an interrupted run cannot leave a partial `x.parquet` that grows in place.
Instead each checkpoint (one chunk of rows, as for CSV) is written as a complete Parquet file of its own,
`x.parquet.parts/part-000000.parquet`, `part-000001.parquet`, ... (same schema), and the checkpoint beside
the output (`x.parquet.fedtune-predict.json`, `score.outputs`) records how many parts there are and the
sha256 of their bytes in order. So after Ctrl-C or a crash the partial result is the folder
`x.parquet.parts`, readable as one dataset (`pyarrow.parquet.read_table` or `pandas.read_parquet` on the
folder), and `--resume` checks the parts against the checkpoint and continues. At the end the parts are
copied, row group by row group (`ParquetWriter`, groups of up to 65,536 rows), into
`x.parquet.parts/assembled.parquet`, which is then hard-linked to `x.parquet` (a link never replaces an
existing file) before the parts folder is removed. Rewriting the whole file at each checkpoint instead would
cost time quadratic in its length.

The parts folder is fedtune's: `create` makes it (refused when it exists) and only names it writes are ever
removed: the part after the last one recorded (a write a crash cut short), `assembled.parquet`, and at the
end the recorded parts.

Column types: the input's own columns keep their Arrow type (a dictionary column its values' type); those
of CSV, FASTA and text inputs are strings. Prediction columns are float64, or strings for labels (decided on
the first row written; float64 when no row was written).
"""

from __future__ import annotations

import base64
import hashlib
import os
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from .inputs import InputError, Row
from .outputs import OutputError, PartialOutput

BATCH_ROWS = 1024                 # rows per record batch read from an input file
ROW_GROUP_ROWS = 65_536           # rows per row group of the assembled output
READ_BUFFER = 1 << 20             # column chunks are read through a buffer of this size (bytes)


# ---- input -------------------------------------------------------------------------------------------
def _is_text(t: pa.DataType) -> bool:
    if pa.types.is_dictionary(t):
        t = t.value_type
    return pa.types.is_string(t) or pa.types.is_large_string(t) or pa.types.is_string_view(t)


def open_input(path: Path, columns: tuple[str, ...]) -> tuple[list[str], list[pa.DataType], int]:
    """(header, the header's Arrow types, number of rows) of a Parquet input; InputError when unusable."""
    try:
        meta = pq.ParquetFile(path)
        schema, rows = meta.schema_arrow, meta.metadata.num_rows
    except (pa.ArrowException, OSError) as exc:
        raise InputError(f"{path}: not a readable Parquet file: {exc}") from None
    header = list(schema.names)
    twice = sorted({h for h in header if header.count(h) > 1})
    if twice:
        raise InputError(f"{path}: the file names the column(s) {twice} more than once")
    missing = [c for c in columns if c not in header]
    if missing:
        raise InputError(f"{path}: missing column(s) {missing}; this model takes {list(columns)}, the file has "
                         f"{header}")
    not_text = [f"{c} ({schema.field(c).type})" for c in columns if not _is_text(schema.field(c).type)]
    if not_text:
        raise InputError(f"{path}: the column(s) {not_text} must hold strings")
    types = [f.type.value_type if pa.types.is_dictionary(f.type) else f.type for f in schema]
    return header, types, rows


def read_rows(path: Path, header: list[str], columns: tuple[str, ...]):
    """Row after row of a Parquet input (see the module docstring)."""
    index = [header.index(c) for c in columns]
    number = 0
    source = pq.ParquetFile(path, buffer_size=READ_BUFFER)
    try:
        for batch in source.iter_batches(batch_size=BATCH_ROWS, columns=header, use_threads=False):
            data = [col.to_pylist() for col in batch.columns]
            for cells in zip(*data):
                number += 1
                cells = list(cells)
                nulls = [c for c, i in zip(columns, index) if cells[i] is None]
                yield Row(number, cells, {c: cells[i] for c, i in zip(columns, index) if cells[i] is not None},
                          f"{', '.join(nulls)}: missing value (null)" if nulls else None)
    except (pa.ArrowException, OSError) as exc:
        raise InputError(f"{path}: unreadable after row {number}: {exc}") from None
    finally:
        source.close()


# ---- output ------------------------------------------------------------------------------------------
def _schema_text(schema: pa.Schema | None) -> str | None:
    return None if schema is None else base64.b64encode(schema.serialize().to_pybytes()).decode()


def _schema_of(text: str | None) -> pa.Schema | None:
    return None if text is None else pa.ipc.read_schema(pa.py_buffer(base64.b64decode(text)))


class ParquetOutput(PartialOutput):
    """Rows written as one part file per checkpoint, assembled into `path` at the end (module docstring)."""

    def __init__(self, path: Path, input_types: list[pa.DataType]):
        super().__init__(path)
        self.parts = self.partial
        self.input_types = list(input_types)
        self.schema: pa.Schema | None = None
        self._rows: list[list] = []
        self._writing: Path | None = None         # a file being written (removed when interrupted)

    def part(self, i: int) -> Path:
        return self.parts / f"part-{i:06d}.parquet"

    def _start(self) -> None:
        try:
            self.parts.mkdir()                     # fails when it exists: the folder is fedtune's
        except OSError as exc:
            raise OutputError(f"{self.parts}: cannot create: {exc}") from None
        self.state.update(parts=0, schema=None)

    def _reopen(self, state: dict) -> hashlib._Hash:
        if self.path.exists() or self.path.is_symlink():
            raise OutputError(f"--resume: {self.path} exists but its checkpoint says the run is unfinished (fedtune "
                              f"stopped while finishing it: then {self.parts / 'assembled.parquet'} is the same "
                              f"file), or another program wrote it; left untouched")
        if not self.parts.is_dir() or self.parts.is_symlink():
            raise OutputError(f"--resume: {self.parts} (the rows written so far) is missing or not a folder")
        h = hashlib.sha256()
        for i in range(state["parts"]):
            try:
                with self.part(i).open("rb") as f:
                    for block in iter(lambda: f.read(1 << 20), b""):
                        h.update(block)
            except OSError as exc:
                raise OutputError(f"--resume: {self.part(i)}: {exc}; left untouched") from None
        if h.hexdigest() != state["sha256"]:
            raise OutputError(f"--resume: the parts in {self.parts} are not those fedtune wrote (changed since); "
                              f"left untouched")
        for leftover in (self.part(state["parts"]), self.parts / "assembled.parquet"):
            leftover.unlink(missing_ok=True)       # a write of fedtune's that an interruption cut short
        self.schema = _schema_of(state.get("schema"))
        return h

    def write(self, rows: list[list]) -> None:
        self._rows.extend(rows)

    def _table(self, rows: list[list]) -> pa.Table:
        columns = list(zip(*rows))
        if self.schema is None:
            n = len(self.input_types)
            types = self.input_types + [pa.string() if isinstance(col[0], str) else pa.float64()
                                        for col in columns[n:]]
            self.schema = pa.schema(list(zip(self.state["header"], types)))
            self.state["schema"] = _schema_text(self.schema)
        try:
            return pa.Table.from_arrays([pa.array(col, type=f.type) for col, f in zip(columns, self.schema)],
                                        schema=self.schema)
        except (pa.ArrowException, TypeError, ValueError) as exc:
            raise OutputError(f"{self.path}: a value does not fit its column's type: {exc}") from None

    def _write_file(self, path: Path, write) -> bytes | None:
        """Create `path` (never over a file), fill it with `write(file)`, fsync; the bytes when `write` returns
        them."""
        with path.open("xb") as f:
            self._writing = path                   # set once created: a file that was there is never removed
            data = write(f)
            if not f.closed:
                f.flush()
        with path.open("rb") as f:
            os.fsync(f.fileno())
        self._writing = None
        return data

    def _flush(self) -> None:
        if not self._rows:
            return
        sink = pa.BufferOutputStream()
        pq.write_table(self._table(self._rows), sink)
        data = sink.getvalue().to_pybytes()
        self._write_file(self.part(self.state["parts"]), lambda f: f.write(data))
        self._hash.update(data)
        self.state["parts"] += 1
        self._rows = []

    def commit(self, rows_read: int, written: int, skipped: int, complete: bool = False) -> None:
        self._flush()
        if complete:
            self._assemble()
            self.state.update(bytes=self.path.stat().st_size)
        self.state.update(rows_read=rows_read, written=written, skipped=skipped, sha256=self._hash.hexdigest(),
                          complete=complete)
        self.save_state()
        if complete:
            self._clean()

    def _assemble(self) -> None:
        if self.schema is None:                    # no row written: the columns, with float64 predictions
            n = len(self.input_types)
            self.schema = pa.schema(list(zip(self.state["header"], self.input_types
                                             + [pa.float64()] * (len(self.state["header"]) - n))))
        target = self.parts / "assembled.parquet"

        def copy(f):
            with pq.ParquetWriter(f, self.schema) as writer:
                group, size = [], 0
                for i in range(self.state["parts"]):
                    part = pq.ParquetFile(self.part(i))
                    table = part.read()
                    part.close()
                    group.append(table)
                    size += table.num_rows
                    if size >= ROW_GROUP_ROWS:
                        writer.write_table(pa.concat_tables(group), row_group_size=ROW_GROUP_ROWS)
                        group, size = [], 0
                if group or self.state["parts"] == 0:
                    writer.write_table(pa.concat_tables(group) if group else self.schema.empty_table(),
                                       row_group_size=ROW_GROUP_ROWS)

        self._write_file(target, copy)
        try:
            os.link(target, self.path)             # never replaces a file that appeared meanwhile
        except FileExistsError:
            raise OutputError(f"{self.path} appeared while fedtune was finishing; left untouched, the complete "
                              f"result is {target}") from None
        except OSError:                            # no hard links here (some network file systems)
            with target.open("rb") as src:
                self._write_file(self.path, lambda f: [f.write(b) for b in iter(lambda: src.read(1 << 20), b"")])

    def _clean(self) -> None:
        """Remove the parts folder: only the files fedtune wrote there, then the folder when it is empty."""
        for i in range(self.state["parts"]):
            self.part(i).unlink(missing_ok=True)
        (self.parts / "assembled.parquet").unlink(missing_ok=True)
        try:
            self.parts.rmdir()
        except OSError:
            pass                                   # something else is in it: left there

    def rollback(self) -> None:
        """Drop the rows not checkpointed and a file whose write was cut short; the recorded parts stay."""
        self._rows = []
        if self._writing is not None:
            self._writing.unlink(missing_ok=True)
            self._writing = None
