"""Cluster benchmark: `irscreen screen --workers 2` (a 2-worker local Dask cluster)
against the single process (`--jobs 2`) on the same generated candidates, end to end
through the CLI, in the same run; and `irscreen featurize` both ways.

    python benchmarks/cluster.py --rows 200000 1000000 --repeat 2 --workdir /work/cache/cbench

On a 2-core machine a 2-worker cluster cannot beat one process that already uses both
cores: the ratio is the price of the scale-out machinery (scheduler and worker start,
the model loaded by each worker, one task per row range, the merge). Every cluster output
is checked to be identical to the single-process one (rows, order, numbers, rejects).

A shared machine is noisy: each configuration runs ``--repeat`` times, single and cluster
alternating, and the fastest run of each counts. Every run also records how much CPU
other processes at normal priority took while it ran (from /proc/stat, minus this run's
own process tree), so a slow run can be told from a slow configuration.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import pyarrow.parquet as pq  # noqa: E402
from _measure import _children, _tree_rss  # noqa: E402
from screen import generate  # noqa: E402 - the screen benchmark's candidates, same generator and seed

HZ = os.sysconf("SC_CLK_TCK")


def normal_priority_cpu() -> float:
    """CPU seconds every process at nice 0 has used since boot (user + system)."""
    user, _nice, system = (int(x) for x in Path("/proc/stat").read_text().split()[1:4])
    return (user + system) / HZ


def tree_cpu(pid: int, seen: dict) -> None:
    """Update ``seen`` (pid -> CPU seconds so far) over ``pid``'s process tree."""
    stack = [pid]
    while stack:
        p = stack.pop()
        try:
            fields = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()
            seen[p] = max(seen.get(p, 0.0), (int(fields[11]) + int(fields[12])) / HZ)  # utime + stime
        except (OSError, IndexError):
            continue
        stack += _children(p)


def irscreen(*args) -> dict:
    """Run the CLI; wall time, peak RSS and CPU of its process tree, and other processes' CPU meanwhile."""
    cmd = [sys.executable, "-m", "irscreen", *map(str, args)]
    busy0, t0 = normal_priority_cpu(), time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    peak, cpu = 0, {}
    while proc.poll() is None:
        peak = max(peak, _tree_rss(proc.pid))
        tree_cpu(proc.pid, cpu)
        time.sleep(0.1)
    out, err = proc.communicate()
    seconds, busy = time.perf_counter() - t0, normal_priority_cpu() - busy0
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)}\n{err[-3000:]}")
    ours = sum(cpu.values())
    return {"cmd": " ".join(cmd), "seconds": seconds, "peak_rss_mb": peak / 2**20, "cpu_s": ours,
            "others_cpu_s": max(0.0, busy - ours), "stderr": err}


def identical(a: Path, b: Path) -> bool:
    """Same rows, order and numbers; and the same rejects."""
    ra, rb = (p.with_name(p.stem + ".rejects.parquet") for p in (a, b))
    return pq.read_table(a).equals(pq.read_table(b)) and pq.read_table(ra).equals(pq.read_table(rb))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, nargs="+", default=[200_000, 1_000_000])
    ap.add_argument("--workers", type=int, default=2, help="local cluster size")
    ap.add_argument("--jobs", type=int, default=2, help="the single process's featurization workers")
    ap.add_argument("--top", type=int, default=1000)
    ap.add_argument("--repeat", type=int, default=2)
    ap.add_argument("--workdir", type=Path, default=Path(tempfile.gettempdir()) / "irscreen-cbench")
    a = ap.parse_args()
    a.workdir.mkdir(parents=True, exist_ok=True)
    cores = os.cpu_count()

    results = []
    for n in a.rows:
        src = a.workdir / f"candidates-{n}.parquet"
        src.exists() or generate(src, n)
        for command in ("screen", "featurize"):
            one, many = (a.workdir / f"{command}-{n}-{how}.parquet" for how in ("single", "cluster"))
            args = ["--top", a.top, "--device", "cpu"] if command == "screen" else []
            runs = {"single": [], "cluster": []}
            for _ in range(a.repeat):
                runs["single"].append(irscreen(command, src, *args, "-o", one, "--jobs", a.jobs))
                runs["cluster"].append(irscreen(command, src, *args, "-o", many, "--workers", a.workers))
            best = {k: min(v, key=lambda r: r["seconds"]) for k, v in runs.items()}
            row = {"rows": n, "command": command, "identical": identical(one, many),
                   "ratio": best["cluster"]["seconds"] / best["single"]["seconds"],
                   **{f"{k}_{f}": [r[f] for r in v] for k, v in runs.items() for f in ("seconds", "others_cpu_s")},
                   **{f"{k}_best": {f: best[k][f] for f in ("seconds", "peak_rss_mb", "cpu_s", "others_cpu_s")}
                      for k in runs},
                   "cmd_single": best["single"]["cmd"], "cmd_cluster": best["cluster"]["cmd"],
                   "summary_cluster": best["cluster"]["stderr"].strip().splitlines()[-3:]}
            results.append(row)
            print(json.dumps(row), flush=True)

    print()
    print(f"| rows | command | single process, --jobs {a.jobs} (s) | {a.workers}-worker local cluster (s) | ratio | "
          "CPU of the run, single / cluster (core-s) | others' CPU meanwhile, single / cluster (core-s) | "
          "peak RSS single / cluster (MB) | identical output |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in results:
        s, c = r["single_best"], r["cluster_best"]
        print(f"| {r['rows']:,} | {r['command']} | {s['seconds']:.1f} | {c['seconds']:.1f} | {r['ratio']:.2f}x | "
              f"{s['cpu_s']:.0f} / {c['cpu_s']:.0f} | {s['others_cpu_s']:.0f} / {c['others_cpu_s']:.0f} | "
              f"{s['peak_rss_mb']:,.0f} / {c['peak_rss_mb']:,.0f} | {'yes' if r['identical'] else 'NO'} |")
    print()
    for r in results:
        if r["rows"] == max(a.rows):
            c = r["cluster_best"]
            print(f"{r['command']} at {r['rows']:,} rows on the cluster: {r['rows'] / c['seconds'] / cores:,.0f} rows/s "
                  f"per core of wall time ({cores} cores, start-up included); {r['rows'] / c['cpu_s']:,.0f} rows "
                  "per CPU-second of the run's processes")


if __name__ == "__main__":
    main()
