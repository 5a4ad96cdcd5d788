"""Benchmark helpers: run a command and record wall time and the peak RSS of its
whole process tree (the command plus every worker it starts), read from /proc."""
from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path


def _children(pid: int) -> list[int]:
    out = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        try:
            out += [int(c) for c in (task / "children").read_text().split()]
        except OSError:
            pass
    return out


def _tree_rss(pid: int) -> int:
    total, stack, seen = 0, [pid], set()
    while stack:
        p = stack.pop()
        if p in seen:
            continue
        seen.add(p)
        try:
            for line in Path(f"/proc/{p}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1]) * 1024
                    break
        except OSError:
            continue
        stack += _children(p)
    return total


def run(cmd: list[str], cwd=None, env=None, interval: float = 0.05) -> dict:
    """Run ``cmd``; return wall seconds, peak tree RSS (bytes), exit code and output."""
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=cwd, env={**os.environ, **(env or {})}, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    peak = 0
    while proc.poll() is None:
        peak = max(peak, _tree_rss(proc.pid))
        time.sleep(interval)
    out, err = proc.communicate()
    return {"cmd": " ".join(cmd), "seconds": time.perf_counter() - t0, "peak_rss": peak, "rc": proc.returncode,
            "stdout": out, "stderr": err}


def realistic_formulas(n: int, seed: int = 0, batch: int = 200_000):
    """Lists of realistic candidate formulas (:func:`irscreen.generate.sample_formulas`:
    2-5 of the common elements, integer or two-decimal amounts, nearly all distinct)."""
    from irscreen.generate import sample_formulas

    return sample_formulas(n, seed, batch=batch)
