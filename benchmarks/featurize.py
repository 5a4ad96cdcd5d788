"""Featurize benchmark: N realistic formulas, Parquet -> Parquet through the CLI,
against matminer (+joblib, 2 processes) on a subset in the same run.

    python benchmarks/featurize.py --rows 1000000 --matminer-rows 5000 [--also 5000000]

Prints a Markdown table for docs/benchmarks.md.
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import pyarrow as pa  # noqa: E402
import pyarrow.parquet as pq  # noqa: E402
from _measure import realistic_formulas, run  # noqa: E402


def make_input(path: Path, n: int) -> None:
    w = pq.ParquetWriter(path, pa.schema([("formula", pa.string())]), compression="zstd")
    for chunk in realistic_formulas(n):
        w.write_table(pa.table({"formula": chunk}))
    w.close()


def matminer_rate(formulas: list[str], jobs: int) -> float:
    from irscreen.features.reference import featurize_matminer

    t = time.perf_counter()
    featurize_matminer(formulas, n_jobs=jobs)
    return len(formulas) / (time.perf_counter() - t)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--also", type=int, nargs="*", default=[], help="extra sizes for the memory-flatness check")
    ap.add_argument("--matminer-rows", type=int, default=5000)
    ap.add_argument("--jobs", type=int, default=2)
    ap.add_argument("--workdir", default=None)
    a = ap.parse_args()
    work = Path(a.workdir or tempfile.mkdtemp(prefix="irscreen-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    results = []
    for n in [a.rows] + a.also:
        src = work / f"formulas-{n}.parquet"
        if not src.exists():
            make_input(src, n)
        dst = work / f"features-{n}.parquet"
        r = run([sys.executable, "-m", "irscreen", "featurize", str(src), "-o", str(dst), "--jobs", str(a.jobs)])
        if r["rc"] != 0:
            raise SystemExit(r["stderr"][-2000:])
        rows = pq.ParquetFile(dst).metadata.num_rows
        results.append({"rows": n, "featurized": rows, "seconds": r["seconds"], "rate": n / r["seconds"],
                        "peak_rss_mb": r["peak_rss"] / 2**20})
        dst.unlink()
    sub = pq.read_table(work / f"formulas-{a.rows}.parquet").column("formula").to_pylist()[: a.matminer_rows]
    mm = matminer_rate(sub, a.jobs)
    print(json.dumps({"irscreen": results, "matminer_rate": mm}, indent=1))
    print()
    print("| rows | irscreen wall (s) | irscreen rows/s | peak RSS, process tree (MB) | matminer rows/s (2 procs) | speed-up |")
    print("|---|---|---|---|---|---|")
    for r in results:
        print(f"| {r['rows']:,} | {r['seconds']:.1f} | {r['rate']:,.0f} | {r['peak_rss_mb']:,.0f} | {mm:,.0f} | "
              f"{r['rate'] / mm:,.0f}x |")


if __name__ == "__main__":
    main()
