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
    """Yield lists of realistic candidate formulas: 2-5 elements drawn from the 80
    most common elements of inorganic databases, integer (1-8) or fractional (0.05-4,
    two decimals) amounts. Nearly all distinct, as in a real candidate pool."""
    import numpy as np

    from irscreen.composition import SYMBOLS

    rng = np.random.default_rng(seed)
    pool = np.array([z for z in range(1, 84) if SYMBOLS[z] not in ("He", "Ne", "Ar", "Kr", "Xe", "Tc", "Pm")])
    done = 0
    while done < n:
        m = min(batch, n - done)
        k = rng.integers(2, 6, size=m)
        out = []
        ints = rng.integers(1, 9, size=(m, 5))
        fracs = np.round(rng.uniform(0.05, 4, size=(m, 5)), 2)
        use_frac = rng.random((m, 5)) < 0.25
        for i in range(m):
            els = rng.choice(pool, size=k[i], replace=False)
            parts = []
            for j, z in enumerate(els):
                amt = fracs[i, j] if use_frac[i, j] else ints[i, j]
                parts.append(SYMBOLS[z] + ("" if amt == 1 else (f"{amt:g}")))
            out.append("".join(parts))
        done += m
        yield out
