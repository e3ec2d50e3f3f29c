"""The output file of `fedtune predict` and its checkpoint, so that an interrupted run leaves whole rows and
`--resume` continues it. `open_output` picks the format by suffix: CSV/TSV here, Parquet in `score.parquet`
(written as one part file per checkpoint, assembled at the end: see there).

Beside `<out>` lives `<out>.fedtune-predict.json`, written (atomically) after every chunk: which bundle, input
file (sha256) and options the run uses, how many input rows it has consumed and written, and the length and
sha256 of the output's bytes at that point. Interrupted, the output is cut back to that length (whole rows
only). `--resume` continues only when the checkpoint is fedtune's, the bundle, input and options are the
same, and the output's first bytes still hash to the recorded digest: a file fedtune did not write (or that
was changed since) is never touched. Without `--resume` an existing output or checkpoint is refused.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import os
import tempfile
from pathlib import Path

STATE_FORMAT = "fedtune-predict"
STATE_VERSION = 1
OUTPUT_DELIMITERS = {".csv": ",", ".tsv": "\t", ".tab": "\t"}
ENCODING = ("utf-8", "surrogateescape")       # input bytes that were not UTF-8 go back out unchanged


class OutputError(ValueError):
    """An output that cannot be written or resumed; the message says why (nothing was changed)."""


def state_path(out: Path) -> Path:
    return out.with_name(out.name + ".fedtune-predict.json")


def partial_path(out: Path) -> Path:
    """Where the rows of an unfinished run are: the output itself, or for Parquet its parts folder."""
    return out.with_name(out.name + ".parts") if out.suffix.lower() == ".parquet" else out


def _format(value) -> str:
    """A prediction's text."""
    if isinstance(value, float):
        return f"{value:.7g}"            # float32 precision
    return str(value)


def _cell(value) -> str:
    """An input cell's text (a Parquet input's values are typed: a null is an empty cell, a float in full)."""
    return "" if value is None else str(value)


def read_state(out: Path) -> dict | None:
    """The checkpoint of `out` when there is one fedtune wrote; OutputError for a file of another origin."""
    path = state_path(out)
    if not path.exists():
        return None
    try:
        state = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise OutputError(f"{path}: not a fedtune checkpoint ({exc}); left untouched") from None
    if not isinstance(state, dict) or state.get("format") != STATE_FORMAT or state.get("version") != STATE_VERSION:
        raise OutputError(f"{path}: not a fedtune predict checkpoint; left untouched")
    return state


class PartialOutput:
    """An output written chunk after chunk with a checkpoint after each (`commit`): `create` (refuses what
    exists), `resume` (checks the checkpoint and what was written), `write`, `commit`, `rollback`, `close`.
    `partial` is where the rows written so far are while the run is unfinished."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.state: dict = {}
        self._hash = hashlib.sha256()

    @property
    def partial(self) -> Path:
        return partial_path(self.path)

    # ---- opening -------------------------------------------------------------------------------------
    def _refuse_existing(self) -> None:
        for p in dict.fromkeys((self.path, state_path(self.path), self.partial)):
            if p.exists() or p.is_symlink():
                raise OutputError(f"{p} exists; fedtune never overwrites it: give another --out, or --resume "
                                  f"to continue a run fedtune interrupted")

    def create(self, identity: dict, header: list[str]) -> None:
        """A new output (refused when `path` or its checkpoint exists: nothing is ever overwritten)."""
        self._refuse_existing()
        self.state = {"format": STATE_FORMAT, "version": STATE_VERSION, **identity, "header": header,
                      "rows_read": 0, "written": 0, "skipped": 0, "sha256": self._hash.hexdigest(),
                      "complete": False}
        self._start()
        self.commit(0, 0, 0)

    def resume(self, identity: dict) -> dict:
        """Reopen an output this command wrote for the same bundle, input and options, at its last
        checkpoint. Returns the checkpoint (rows read, written, skipped so far)."""
        state = read_state(self.path)
        if state is None:
            raise OutputError(f"--resume: {self.path} has no fedtune checkpoint ({state_path(self.path).name}); "
                              f"fedtune did not write it, or it was finished and moved. Left untouched")
        for key, value in identity.items():
            if state.get(key) != value:
                raise OutputError(f"--resume: {self.path} was written with another {key} "
                                  f"({state.get(key)!r}, now {value!r}); left untouched")
        if state.get("complete"):
            raise OutputError(f"--resume: {self.path} is already complete ({state['written']} rows); nothing to do")
        self._hash = self._reopen(state)
        self.state = state
        return state

    def _start(self) -> None:
        """Create the output's files (`create`, after the checks)."""
        raise NotImplementedError

    def _reopen(self, state: dict):
        """Check what was written against `state` and reopen it there; the sha256 object of what is kept."""
        raise NotImplementedError

    # ---- writing -------------------------------------------------------------------------------------
    def write(self, rows: list[list]) -> None:
        raise NotImplementedError

    def commit(self, rows_read: int, written: int, skipped: int, complete: bool = False) -> None:
        """Make the rows written so far durable and record the checkpoint."""
        raise NotImplementedError

    def save_state(self) -> None:
        """Write the checkpoint atomically (a temporary file, fsync, rename)."""
        path = state_path(self.path)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        try:
            with os.fdopen(fd, "w") as f:
                json.dump(self.state, f, indent=1)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise

    def rollback(self) -> None:
        """Drop what was written after the last checkpoint (an interrupted chunk leaves no partial row)."""

    def close(self) -> None:
        """Release the output's files."""


class CsvOutput(PartialOutput):
    """Rows appended to a CSV/TSV file; a checkpoint records its length and digest."""

    def __init__(self, path: str | Path, inputs: int = 0):
        super().__init__(path)
        self.delimiter = OUTPUT_DELIMITERS[self.path.suffix.lower()]
        self.inputs = inputs                       # the leading cells of a row are the input's
        self._file = None

    def _start(self) -> None:
        try:
            self._file = open(self.path, "xb")     # O_EXCL: a file created meanwhile is not truncated either
        except OSError as exc:
            raise OutputError(f"{self.path}: cannot create: {exc}") from None
        self.state["bytes"] = 0
        self._write_text([self.state["header"]])

    def _reopen(self, state: dict):
        if not self.path.is_file() or self.path.is_symlink():
            raise OutputError(f"--resume: {self.path} is missing or not a plain file")
        size, h = state["bytes"], hashlib.sha256()
        with open(self.path, "rb") as f:
            left = size
            while left > 0:
                block = f.read(min(left, 1 << 20))
                if not block:
                    break
                h.update(block)
                left -= len(block)
        if left > 0 or h.hexdigest() != state["sha256"]:
            raise OutputError(f"--resume: {self.path} is not the file fedtune wrote (its first {size} bytes changed); "
                              f"left untouched")
        self._file = open(self.path, "r+b")
        self._file.truncate(size)                  # rows written after the last checkpoint are written again
        self._file.seek(size)
        return h

    def write(self, rows: list[list]) -> None:
        n = self.inputs
        self._write_text([[_cell(v) for v in row[:n]] + [_format(v) for v in row[n:]] for row in rows])

    def _write_text(self, rows: list[list[str]]) -> None:
        buf = io.StringIO()
        writer = csv.writer(buf, delimiter=self.delimiter, lineterminator="\n")
        writer.writerows(rows)
        data = buf.getvalue().encode(*ENCODING)
        self._file.write(data)
        self._hash.update(data)

    def commit(self, rows_read: int, written: int, skipped: int, complete: bool = False) -> None:
        self._file.flush()
        os.fsync(self._file.fileno())
        self.state.update(rows_read=rows_read, written=written, skipped=skipped, bytes=self._file.tell(),
                          sha256=self._hash.hexdigest(), complete=complete)
        self.save_state()

    def rollback(self) -> None:
        if self._file is not None and not self._file.closed:
            self._file.flush()
            self._file.truncate(self.state["bytes"])
            self._file.close()

    def close(self) -> None:
        if self._file is not None and not self._file.closed:
            self._file.close()


def open_output(path: str | Path, input_types: list | None, inputs: int) -> PartialOutput:
    """The output for `path`'s suffix: `inputs` leading input columns, of the Arrow `input_types` when the
    input is Parquet (strings otherwise)."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix == ".parquet":
        import pyarrow as pa

        from .parquet import ParquetOutput
        return ParquetOutput(path, input_types if input_types is not None else [pa.string()] * inputs)
    if suffix not in OUTPUT_DELIMITERS:
        raise OutputError(f"{path}: unknown output format {suffix or '(no extension)'!r}; use .csv, .tsv or .parquet")
    return CsvOutput(path, inputs)
