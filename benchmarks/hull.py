"""Hull benchmark: ``screen --hull`` against the plain screen on N generated candidates,
end to end through the CLI in the same run; ``predict --hull`` against ``predict`` on a
subset; the hull energies alone over the whole pool; and the obvious way, a pymatgen
PhaseDiagram per row, on a sample (with the largest difference from irscreen's energies).

    python benchmarks/hull.py --rows 1000000 --predict-rows 100000 --pymatgen-rows 500 --workdir /work/cache/hbench

Candidates as in benchmarks/screen.py (``irscreen generate``, 38 elements, up to 4 per
composition, seed 0); known phases: the shipped bundle's (97,423 OQMD compounds).

The machine is shared: other processes come and go, and a command's wall time can change
10x between two runs. So the plain and the --hull command alternate (ABBA order over
``--repeats`` rounds), each run records the load average around it, and the ratio is
taken of the fastest run of each (the one least disturbed) and of the medians.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import numpy as np  # noqa: E402
import pyarrow.parquet as pq  # noqa: E402
from _measure import realistic_formulas, run  # noqa: E402
from screen import generate  # noqa: E402


def cli(*args) -> dict:
    """One irscreen command: wall time, CPU time of every process it waited for (its
    featurization workers included), peak RSS, the load average before and after."""
    load = os.getloadavg()[0]
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    r = run([sys.executable, "-m", "irscreen", *map(str, args)])
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if r["rc"] != 0:
        raise SystemExit(r["stderr"][-3000:])
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return {"seconds": r["seconds"], "cpu_s": cpu, "peak_rss_mb": r["peak_rss"] / 2**20, "load_before": load,
            "load_after": os.getloadavg()[0],
            "summary": [line for line in r["stderr"].strip().splitlines()[-6:] if "rows" in line]}


def alternate(plain: list, hull: list, repeats: int) -> dict:
    """Run the two commands in ABBA order; fastest and median wall time of each, and their ratios."""
    runs: dict = {"plain": [], "hull": []}
    for i in range(repeats):
        for name in (("plain", "hull") if i % 2 == 0 else ("hull", "plain")):
            runs[name].append(cli(*(plain if name == "plain" else hull)))
    out = {name: {"runs": r, "min_s": min(x["seconds"] for x in r),
                  "median_s": float(np.median([x["seconds"] for x in r])),
                  "min_cpu_s": min(x["cpu_s"] for x in r),
                  "peak_rss_mb": max(x["peak_rss_mb"] for x in r)} for name, r in runs.items()}
    out["ratio_min"] = out["hull"]["min_s"] / out["plain"]["min_s"]
    out["ratio_median"] = out["hull"]["median_s"] / out["plain"]["median_s"]
    out["ratio_cpu"] = out["hull"]["min_cpu_s"] / out["plain"]["min_cpu_s"]
    return out


def hull_alone(phases, formulas, chunk: int = 32_768) -> dict:
    """Hull energies (each row's own phase excluded) for every row, in screen-sized batches."""
    from irscreen.composition import parse_batch
    from irscreen.screening import hull
    from irscreen.screening.hull import hull_energy

    fallback = {"rows": 0}
    real_highs = hull._highs

    def counting_highs(x, C, E):  # how many rows the batched simplex left to HiGHS
        fallback["rows"] += len(x)
        return real_highs(x, C, E)

    hull._highs = counting_highs
    t_parse = t_hull = 0.0
    energies = []
    for i in range(0, len(formulas), chunk):
        t = time.perf_counter()
        b = parse_batch(formulas.slice(i, chunk))
        els, fr = b.elements, b.fractions()
        t_parse += time.perf_counter() - t
        t = time.perf_counter()
        energies.append(hull_energy(phases, els, fr, exclude=phases.lookup(els, fr)))
        t_hull += time.perf_counter() - t
    hull._highs = real_highs
    e = np.concatenate(energies)
    return {"rows": len(e), "hull_s": t_hull, "rows_per_s": len(e) / t_hull, "parse_s": t_parse,
            "below_zero": float((e < 0).mean()), "highs_fallback_rows": fallback["rows"], "energies": e}


def pymatgen_loop(phases, formulas: list[str]) -> dict:
    """The obvious way: per row, a PhaseDiagram of the elements and of the phases whose
    elements the row holds (found through a dict by chemical system, so pymatgen's own work
    is what is timed), then get_hull_energy_per_atom."""
    from itertools import combinations

    from pymatgen.analysis.phase_diagram import PDEntry, PhaseDiagram
    from pymatgen.core import Composition

    from irscreen.composition import SYMBOLS

    t0 = time.perf_counter()  # not part of the per-row cost: the phases by chemical system, as pymatgen objects
    by_system: dict = {}
    for i in range(len(phases)):
        c = Composition(phases.name(i))
        by_system.setdefault(tuple(SYMBOLS[z] for z in phases.elements[i] if z), []).append(
            (c, c.reduced_formula, phases.energies[i]))
    t_index = time.perf_counter() - t0
    t0 = time.perf_counter()
    out = []
    for f in formulas:
        comp = Composition(f)
        own = comp.reduced_formula
        els = sorted(e.symbol for e in comp.elements)
        entries = [PDEntry(Composition(e), 0.0) for e in els]
        for k in range(2, len(els) + 1):
            for system in combinations(sorted(els, key=lambda s: SYMBOLS.index(s)), k):
                for c, name, e in by_system.get(system, []):
                    if name != own:  # a known row is measured against the other phases
                        entries.append(PDEntry(c, e * c.num_atoms))
        out.append(PhaseDiagram(entries).get_hull_energy_per_atom(comp))
    dt = time.perf_counter() - t0
    return {"rows": len(formulas), "seconds": dt, "ms_per_row": 1e3 * dt / len(formulas), "index_s": t_index,
            "energies": np.array(out)}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--predict-rows", type=int, default=100_000)
    ap.add_argument("--pymatgen-rows", type=int, default=500)
    ap.add_argument("--top", type=int, default=1000)
    ap.add_argument("--jobs", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=2, help="rounds of (plain, --hull), alternating order")
    ap.add_argument("--workdir", default=None)
    ap.add_argument("--realistic-rows", type=int, default=200_000,
                    help="also the hull alone on this many 2-5 element, partly fractional formulas (_measure.py)")
    ap.add_argument("--skip-screens", action="store_true", help="only the in-process measurements")
    a = ap.parse_args()
    import pyarrow as pa

    from irscreen import load_model

    work = Path(a.workdir or tempfile.mkdtemp(prefix="irscreen-hull-"))
    work.mkdir(parents=True, exist_ok=True)
    src = work / f"candidates-{a.rows}.parquet"
    if not src.exists():
        generate(src, a.rows)
    report: dict = {"rows": a.rows, "top": a.top}
    common = ["--top", a.top, "--jobs", a.jobs, "--device", "cpu"]
    if not a.skip_screens:
        report["screen"] = alternate(["screen", src, *common, "-o", work / "plain.parquet"],
                                     ["screen", src, *common, "--hull", "-o", work / "hull.parquet"], a.repeats)
        sub = work / f"candidates-{a.predict_rows}.parquet"
        pq.write_table(pq.read_table(src).slice(0, a.predict_rows), sub)
        pj = ["--jobs", a.jobs, "--device", "cpu"]
        report["predict"] = alternate(["predict", sub, *pj, "-o", work / "pred.parquet"],
                                      ["predict", sub, *pj, "--hull", "-o", work / "pred-hull.parquet"], a.repeats)

    model = load_model("formation-enthalpy")
    t = time.perf_counter()
    phases = model.phases
    report["phases_load_s"] = time.perf_counter() - t
    formulas = pq.read_table(src, columns=["formula"]).column("formula").combine_chunks()
    alone = hull_alone(phases, pa.chunked_array([formulas]))
    ref = pymatgen_loop(phases, formulas.slice(0, a.pymatgen_rows).to_pylist())
    diff = np.abs(alone["energies"][: a.pymatgen_rows] - ref["energies"])
    report["hull_alone"] = {k: v for k, v in alone.items() if k != "energies"}
    report["pymatgen"] = {k: v for k, v in ref.items() if k != "energies"}
    report["pymatgen"]["max_abs_diff"] = float(diff.max())
    report["pymatgen"]["speedup"] = (ref["ms_per_row"] / 1e3) * alone["rows_per_s"]
    if a.realistic_rows:
        real = pa.array([f for chunk in realistic_formulas(a.realistic_rows, seed=1) for f in chunk], pa.string())
        ra = hull_alone(phases, pa.chunked_array([real]))
        rr = pymatgen_loop(phases, real.slice(0, a.pymatgen_rows).to_pylist())
        report["realistic"] = {**{k: v for k, v in ra.items() if k != "energies"},
                               "pymatgen_ms_per_row": rr["ms_per_row"],
                               "max_abs_diff": float(np.abs(ra["energies"][: a.pymatgen_rows] - rr["energies"]).max())}
    print(json.dumps(report, indent=1))

    print()
    if "screen" in report:
        print("| command | rows | wall, each run in order (s) | fastest (s) | rows/s (fastest) | median (s) | "
              "CPU, each run (s) | load average around the runs | peak RSS (MB) |")
        print("|---|---|---|---|---|---|---|---|---|")
        for cmd, n in (("screen", a.rows), ("predict", a.predict_rows)):
            for name in ("plain", "hull"):
                r = report[cmd][name]
                walls = ", ".join(f"{x['seconds']:.1f}" for x in r["runs"])
                cpus = ", ".join(f"{x['cpu_s']:.1f}" for x in r["runs"])
                loads = ", ".join(f"{x['load_before']:.1f}-{x['load_after']:.1f}" for x in r["runs"])
                label = cmd + (" --hull" if name == "hull" else "")
                print(f"| {label} | {n:,} | {walls} | {r['min_s']:.1f} | {n / r['min_s']:,.0f} | {r['median_s']:.1f} | "
                      f"{cpus} | {loads} | {r['peak_rss_mb']:,.0f} |")
            c = report[cmd]
            print(f"\n{cmd} --hull / {cmd}: wall fastest {c['ratio_min']:.3f}, median {c['ratio_median']:.3f}; "
                  f"CPU (least) {c['ratio_cpu']:.3f}")
        for x in report["screen"]["hull"]["runs"]:
            print("  " + next((line for line in x["summary"] if line.startswith("--hull")), ""))
    h, p = report["hull_alone"], report["pymatgen"]
    print(f"hull energies alone: {h['rows']:,} rows in {h['hull_s']:.1f} s = {h['rows_per_s']:,.0f} rows/s "
          f"({100 * h['below_zero']:.1f}% of rows below 0; {h['highs_fallback_rows']:,} left to HiGHS); "
          f"phases loaded in {report['phases_load_s']:.2f} s")
    print(f"pymatgen PhaseDiagram per row: {p['ms_per_row']:.2f} ms/row on {p['rows']:,} rows "
          f"({p['speedup']:,.0f}x slower); max |diff| {p['max_abs_diff']:.1e} eV/atom")
    if "realistic" in report:
        r = report["realistic"]
        print(f"realistic 2-5 element formulas: {r['rows']:,} rows at {r['rows_per_s']:,.0f} rows/s "
              f"({r['highs_fallback_rows']:,} left to HiGHS); pymatgen {r['pymatgen_ms_per_row']:.2f} ms/row; "
              f"max |diff| {r['max_abs_diff']:.1e} eV/atom")


if __name__ == "__main__":
    main()
