"""One table of every benchmark's latest results (bench/results/*.json): each figure of
this implementation beside the straightforward reference's, and their ratio.

    python bench/summary.py        (make bench runs it after the benchmarks)
"""

from __future__ import annotations

import json

from common import RESULTS, command


def _core(rows):
    for r in rows:
        yield r["case"], r["variant"], f"{r['this_ms']:.1f} ms", f"{r['reference_ms']:.1f} ms", r["speedup"]


def _loader(rows):
    png = next(r for r in rows if r["source"] == "PNG tree")
    for r in rows:
        if r is not png:
            yield (
                "training patches/s",
                f"shards, {r['workers']} worker(s)",
                f"{r['patches_per_s']:,.0f}/s",
                f"{png['patches_per_s']:,.0f}/s (PNG tree, {png['workers']} workers)",
                r["patches_per_s"] / png["patches_per_s"],
            )


def _step(rows):
    for r in rows:
        if r["mode"] != "reference" and "speedup" in r:
            ref = next(x for x in rows if x["config"] == r["config"] and x["mode"] == "reference")
            case = f"train step, {r['config']} config, batch {r['batch']}"
            yield (
                case,
                f"{r['precision']} {r['mode']}",
                f"{r['samples_per_s']:.3g} samples/s",
                f"{ref['samples_per_s']:.3g} samples/s",
                r["speedup"],
            )
            yield (
                case,
                f"{r['precision']} {r['mode']}: peak memory",
                f"{r['peak_mib']:.0f} MiB",
                f"{ref['peak_mib']:.0f} MiB",
                r["memory_ratio"],
            )


def _evaluate(rows):
    ref = next(r for r in rows if r["variant"].startswith("reference"))
    for r in rows:
        if r is not ref:
            yield r["case"], r["variant"], f"{r['seconds']:.1f} s", f"{ref['seconds']:.1f} s", r["speedup"]


BENCHES = {"core": _core, "loader": _loader, "step": _step, "evaluate": _evaluate}


def main():
    table = []
    for name, rows_of in BENCHES.items():
        path = RESULTS / f"{name}.json"
        if not path.is_file():
            print(f"{name}: no results yet (python bench/{name}.py)")
            continue
        result = json.loads(path.read_text())
        print(f"{name}: {result['machine']}, {result['date']}")
        table += [(name, *row) for row in rows_of(result["rows"])]
    header = ("bench", "case", "variant", "this", "reference", "ratio")
    cells = [header] + [(*row[:5], f"{row[5]:.2f}x") for row in table]
    widths = [max(len(str(c[i])) for c in cells) for i in range(len(header))]
    for row in cells:
        print("  ".join(str(c).ljust(w) for c, w in zip(row, widths)))


if __name__ == "__main__":
    command(main)
