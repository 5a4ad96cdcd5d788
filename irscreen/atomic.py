"""Durable, atomic commits of finished files.

A file is written under a temporary name beside its destination, flushed to disk, then
renamed into place, and the directory entry is flushed too; a crash leaves either the old
state or the new one, never a torn file. Outputs that belong together (a table and its
rejects file) are committed through a journal: the pending renames are recorded first, so
a kill between two renames is completed by :func:`recover`, which every command runs on
its output paths before it starts. Readers therefore see both files of a run or neither.
"""
from __future__ import annotations

import json
import os
from pathlib import Path


def fsync_file(path: os.PathLike) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_dir(path: os.PathLike) -> None:
    """Flush a directory entry (a rename) to disk; a no-op where the OS cannot."""
    try:
        fd = os.open(path or ".", os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def journal_path(primary: Path) -> Path:
    primary = Path(primary)
    return primary.with_name(f".{primary.name}.commit.json")


def commit_together(pairs: list[tuple[Path, Path]], *, _after_rename=None) -> None:
    """Rename every finished ``(temporary, final)`` pair into place as one commit.

    The journal (named after the first final path) lists the pairs; once it is on disk
    the commit has happened, and :func:`recover` finishes whatever renames a kill
    interrupted. ``_after_rename(i)`` is a test hook (a simulated kill after rename i)."""
    pairs = [(Path(t), Path(f)) for t, f in pairs]
    for tmp, _ in pairs:
        fsync_file(tmp)
    journal = journal_path(pairs[0][1])
    staging = journal.with_name(journal.name + ".tmp")
    staging.write_text(json.dumps([[str(t), str(f)] for t, f in pairs]))
    fsync_file(staging)
    os.replace(staging, journal)  # the commit point
    fsync_dir(journal.parent)
    try:
        for i, (tmp, final) in enumerate(pairs):
            os.replace(tmp, final)
            if _after_rename:
                _after_rename(i)
    finally:  # an interrupt (Ctrl-C) after the commit point still completes the commit
        recover(pairs[0][1])


def recover(primary: Path) -> bool:
    """Finish a commit that a kill interrupted (True if there was one to finish)."""
    journal = journal_path(primary)
    journal.with_name(journal.name + ".tmp").unlink(missing_ok=True)  # never committed
    if not journal.exists():
        return False
    pairs = json.loads(journal.read_text())
    for tmp, final in pairs:
        if Path(tmp).exists():
            os.replace(tmp, final)
    for d in {Path(final).parent for _, final in pairs}:
        fsync_dir(d)
    journal.unlink()
    fsync_dir(journal.parent)
    return True
