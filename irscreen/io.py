"""Streaming table input and atomic table output (Parquet or CSV).

Input is read in record batches, so memory does not grow with file size. CSV is read
with every formula-like column as a string: ``NaN`` is sodium nitride, not a missing
value. A UTF-8 byte-order mark (as Excel writes) is not part of the first column's name,
and the formula column is found by name in any case (:meth:`Table.find_formula_column`).
Output goes to a temporary file beside the target and is renamed into place only when
complete, so a crash never leaves a half-written file under the final name.
"""
from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from irscreen.errors import IrscreenError

# Names a formula column goes by, in order of preference.
FORMULA_COLUMNS = ("formula", "composition", "reduced_formula", "pretty_formula")
_FORMULA_NAMES = frozenset(FORMULA_COLUMNS)


def _visible(name: str) -> str:
    """``name`` with invisible characters (zero-width space, BOM, control characters,
    non-breaking space, ...) written as escapes, so an error message shows why a column
    that looks like ``formula`` is not."""
    return "".join(ch if ch.isprintable() else ch.encode("unicode_escape").decode("ascii") for ch in name)


def _column_list(columns: list[str]) -> str:
    return ", ".join(_visible(c) for c in columns) or "none"


def _kind(path: Path) -> str:
    suffix = path.suffix.lower()
    if suffix in (".parquet", ".pq"):
        return "parquet"
    if suffix in (".csv", ".txt"):
        return "csv"
    raise IrscreenError(f"{path}: unsupported file type {suffix or '(none)'!r}; use .parquet or .csv")


@dataclass
class Table:
    """An input file opened for streaming."""

    path: Path
    kind: str
    columns: list[str]
    num_rows: int | None  # known up front for Parquet; None for CSV
    _pq: pq.ParquetFile | None = None

    def find_formula_column(self) -> str | None:
        """The formula column, or None: the first of FORMULA_COLUMNS present, an exact
        name before one in other case (``formula`` wins over ``Composition``, which
        wins over ``Reduced_Formula``); among other-case names, the first in the file."""
        for name in FORMULA_COLUMNS:
            if name in self.columns:
                return name
        folded = [c.casefold() for c in self.columns]
        for name in FORMULA_COLUMNS:
            if name in folded:
                return self.columns[folded.index(name)]
        return None

    def formula_column(self, requested: str | None = None) -> str:
        """``requested`` (exact name) if given, else :meth:`find_formula_column`; a clear
        IrscreenError when there is none."""
        if requested:
            if requested not in self.columns:
                raise IrscreenError(f"{self.path}: no column {requested!r} (columns: {_column_list(self.columns)})")
            return requested
        found = self.find_formula_column()
        if found is None:
            raise IrscreenError(
                f"{self.path}: no formula column (looked for {', '.join(FORMULA_COLUMNS)}, in any case; "
                f"columns: {_column_list(self.columns)}); name it with --formula-column"
            )
        return found

    def batches(self, batch_rows: int, string_columns: tuple[str, ...] = ()) -> Iterator[pa.RecordBatch]:
        """Record batches of at most ``batch_rows`` rows (CSV blocks are re-cut to size)."""
        try:
            if self.kind == "parquet":
                yield from self._pq.iter_batches(batch_size=batch_rows)
                return
            reader = _open_csv(self.path, self.columns, string_columns)
            pending: list[pa.RecordBatch] = []
            n = 0
            for rb in reader:
                pending.append(rb)
                n += rb.num_rows
                while n >= batch_rows:
                    tbl = pa.Table.from_batches(pending).combine_chunks()
                    yield tbl.slice(0, batch_rows).to_batches()[0]
                    rest = tbl.slice(batch_rows)
                    pending, n = ([rest.to_batches()[0]] if rest.num_rows else []), rest.num_rows
            if n:
                yield pa.Table.from_batches(pending).combine_chunks().to_batches()[0]
        except (pa.ArrowInvalid, pa.ArrowIOError, OSError) as e:
            raise IrscreenError(f"{self.path}: cannot read it ({_first_line(e)}); is it corrupt or truncated?") from None


def _first_line(e: Exception) -> str:
    text = str(e).strip().splitlines()
    return text[0] if text else type(e).__name__


def _open_csv(path: Path, header: list[str], string_columns: tuple[str, ...]):
    types = {c: pa.string() for c in header if c in string_columns or c.casefold() in _FORMULA_NAMES}
    return pacsv.open_csv(
        path,
        read_options=pacsv.ReadOptions(block_size=8 << 20),
        convert_options=pacsv.ConvertOptions(column_types=types, strings_can_be_null=False),
    )


def _csv_header(path: Path) -> list[str]:
    # utf-8-sig drops a byte-order mark, as pyarrow's CSV reader does: both must see
    # the same first column name (column_types in _open_csv are keyed by it).
    with open(path, newline="", encoding="utf-8-sig", errors="replace") as f:
        first = f.readline()
    if not first.strip():
        raise IrscreenError(f"{path}: file is empty (no header line)")
    import csv

    return next(csv.reader([first]))


def open_table(path: str | os.PathLike) -> Table:
    """Open INPUT for streaming; every problem is one clear IrscreenError."""
    path = Path(path)
    if not path.exists():
        raise IrscreenError(f"{path}: no such file")
    if path.is_dir():
        raise IrscreenError(f"{path}: is a directory, not a file")
    kind = _kind(path)
    if not os.access(path, os.R_OK):
        raise IrscreenError(f"{path}: permission denied")
    if path.stat().st_size == 0:
        raise IrscreenError(f"{path}: file is empty")
    if kind == "parquet":
        try:
            pf = pq.ParquetFile(path)
        except (pa.ArrowInvalid, pa.ArrowIOError, OSError) as e:
            raise IrscreenError(f"{path}: not a readable Parquet file ({_first_line(e)})") from None
        return Table(path, kind, pf.schema_arrow.names, pf.metadata.num_rows, pf)
    header = _csv_header(path)
    return Table(path, kind, header, None)


# --------------------------------------------------------------------------- output


class AtomicWriter:
    """Write record batches to Parquet or CSV; the file appears under its final name
    only on :meth:`commit`. Use as a context manager: an exception discards the file."""

    def __init__(self, path: str | os.PathLike, schema: pa.Schema, compression: str = "lz4"):
        self.path = Path(path)
        self.kind = _kind(self.path)
        self.schema = schema
        parent = self.path.parent if str(self.path.parent) else Path(".")
        if not parent.exists():
            raise IrscreenError(f"{self.path}: output directory {parent} does not exist")
        fd, tmp = tempfile.mkstemp(dir=parent, prefix=f".{self.path.name}.", suffix=".partial")
        os.close(fd)
        self.tmp = Path(tmp)
        self.rows = 0
        if self.kind == "parquet":
            self._w = pq.ParquetWriter(self.tmp, schema, compression=compression)
        else:
            self._w = pacsv.CSVWriter(self.tmp, schema)

    def write(self, batch: pa.RecordBatch | pa.Table) -> None:
        if isinstance(batch, pa.RecordBatch):
            batch = pa.Table.from_batches([batch])
        self._w.write_table(batch.cast(self.schema) if batch.schema != self.schema else batch)
        self.rows += batch.num_rows

    def finish(self) -> tuple[Path, Path]:
        """Close and flush the temporary file; returns (temporary, final) for
        :func:`irscreen.atomic.commit_together`, which renames it into place."""
        from irscreen.atomic import fsync_file

        self._w.close()
        os.chmod(self.tmp, 0o644)
        fsync_file(self.tmp)
        return self.tmp, self.path

    def commit(self) -> Path:
        from irscreen.atomic import fsync_dir

        tmp, path = self.finish()
        os.replace(tmp, path)
        fsync_dir(path.parent)
        return path

    def abort(self) -> None:
        try:
            self._w.close()
        except Exception:  # noqa: BLE001 - already failing; the temp file is removed below
            pass
        self.tmp.unlink(missing_ok=True)

    def __enter__(self) -> "AtomicWriter":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.commit()
        else:
            self.abort()


def write_table(path: str | os.PathLike, table: pa.Table) -> Path:
    with AtomicWriter(path, table.schema) as w:
        w.write(table)
    return Path(path)


REJECTS_SCHEMA = pa.schema([("row", pa.int64()), ("formula", pa.string()), ("error", pa.string())])


def default_rejects_path(output: Path) -> Path:
    """OUTPUT.rejects.parquet beside the output (``x.parquet`` -> ``x.rejects.parquet``)."""
    output = Path(output)
    return output.with_name(output.stem + ".rejects.parquet")
