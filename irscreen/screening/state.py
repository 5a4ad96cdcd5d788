"""Resume state of a running screen: ``<output>.screen-state/``, removed on success.

After every batch the screen commits exactly once: the batch's rejects and the new top-K
are written to files named by the batch number (and flushed), then ``state.json``, naming
that batch, replaces the previous one. The rename of ``state.json`` is the commit point:
a kill before it leaves the previous checkpoint intact (its files are kept until a later
commit supersedes them), a kill after it leaves this one. On resume, files of batches
after the committed one are deleted, and the top-K refuses row numbers it already holds.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from irscreen.atomic import fsync_dir, fsync_file
from irscreen.errors import IrscreenError


def fingerprint(path: Path) -> dict:
    """Identity of an input file: size, mtime, and a hash of its first and last MiB."""
    st = path.stat()
    h = hashlib.sha256()
    with open(path, "rb") as f:
        h.update(f.read(1 << 20))
        if st.st_size > (1 << 20):
            f.seek(max(0, st.st_size - (1 << 20)))
            h.update(f.read(1 << 20))
    return {"size": st.st_size, "mtime_ns": st.st_mtime_ns, "head_tail_sha256": h.hexdigest()}


def _write_parquet(table: pa.Table, path: Path) -> None:
    tmp = path.with_name(path.name + ".tmp")
    pq.write_table(table, tmp)
    fsync_file(tmp)
    os.replace(tmp, path)


class ScreenState:
    def __init__(self, output: Path, identity: dict):
        self.dir = Path(output).with_name(Path(output).name + ".screen-state")
        self.identity = identity

    def load(self) -> dict | None:
        """The last committed checkpoint (counters and ``top``), or None to start afresh."""
        meta = self.dir / "state.json"
        if not meta.exists():
            return None
        state = json.loads(meta.read_text())
        if state.get("identity") != self.identity:
            raise IrscreenError(
                f"{self.dir} belongs to a screen with other input, model or options; rerun without --resume "
                "(or delete it) to start over"
            )
        batch = state["batches"]
        self._discard(after=batch, keep_top=state.get("top_file"))
        top = state.get("top_file")
        state["top"] = pq.read_table(self.dir / top) if top else None
        return state

    def save(self, counters: dict, top: pa.Table | None, rejects: pa.Table, _kill=None) -> None:
        """Commit the checkpoint after batch ``counters['batches']``. ``_kill(point)`` is a
        test hook that may raise at each step, to simulate a kill there."""
        self.dir.mkdir(parents=True, exist_ok=True)
        batch = counters["batches"]
        if rejects.num_rows:
            _write_parquet(rejects, self.dir / f"rejects-{batch:08d}.parquet")
        _kill and _kill("rejects")
        top_file = None
        if top is not None:
            top_file = f"top-{batch:08d}.parquet"
            _write_parquet(top, self.dir / top_file)
        _kill and _kill("top")
        tmp = self.dir / ".state.json.tmp"
        tmp.write_text(json.dumps({"identity": self.identity, **counters, "top_file": top_file}))
        fsync_file(tmp)
        os.replace(tmp, self.dir / "state.json")  # the commit point
        fsync_dir(self.dir)
        _kill and _kill("commit")
        for old in self.dir.glob("top-*.parquet"):  # superseded checkpoints
            if old.name != top_file:
                old.unlink()
        _kill and _kill("cleanup")

    def rejects_parts(self) -> list[Path]:
        return sorted(self.dir.glob("rejects-*.parquet"))

    def _discard(self, after: int, keep_top: str | None) -> None:
        """Delete files written by batches after the committed one (they never committed)."""
        for p in self.dir.glob("rejects-*.parquet"):
            if int(p.stem.split("-")[1]) > after:
                p.unlink()
        for p in self.dir.glob("top-*.parquet"):
            if p.name != keep_top:
                p.unlink()

    def clear(self) -> None:
        shutil.rmtree(self.dir, ignore_errors=True)
