"""Which calibration holds on scenes its fit never saw? Each band's members evaluated on the
val split once per eval.calibrate method; the coverage of the central intervals at 10...90%
and the NLL on the held-out half, before and after, for every member and the ensemble.

    python bench/calibration.py --runs runs/demo/nir-seed0 runs/demo/nir-seed1 ... [--out runs/calibration]
    python bench/calibration.py --runs ../shared/reference/weights/nir.safetensors:NIR --shards shards/demo

Members are anything `evaluate --runs` takes.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

from common import ROOT, command, report

from piunet_dist.core.eval_dir import EvalDir
from piunet_dist.core.files import read_json

METHODS = ("scale", "quantile")


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", nargs="+", required=True)
    parser.add_argument("--shards", help="for weights files: where their val scenes are")
    parser.add_argument("--out", type=Path, default=ROOT / "runs" / "calibration")
    args = parser.parse_args()
    rows = []
    out = args.out  # one folder: the members' predictions are made once, then reused
    for method in METHODS:
        command = [sys.executable, "-m", "piunet_dist", "evaluate", "--runs", *args.runs, "--split", "val"]
        command += ["--calibrate", method, "--out", str(out)] + (["--shards", args.shards] if args.shards else [])
        subprocess.run(command, cwd=ROOT, check=True, stdout=subprocess.DEVNULL)
        for band, entry in read_json(EvalDir(out).summary)["bands"].items():
            found = entry["calibration_fit"]
            checked = (
                {"ensemble": found["ensemble"], **found["members"]} if len(found["members"]) > 1 else found["members"]
            )
            for who, c in checked.items():
                row = {
                    "band": band,
                    "of": who,
                    "method": method,
                    "fit/check scenes": f"{found['fit_scenes']}/{len(found['check_scenes'])}",
                }
                for when in ("before", "after"):
                    row[f"{when}: coverage at 10..90% (%)"] = " ".join(f"{100 * v:.1f}" for v in c[when]["coverage"])
                    row[f"{when}: worst miss (points)"] = (
                        max(abs(v - p) for v, p in zip(c[when]["coverage"], c["nominal"])) * 100
                    )
                    row[f"{when}: NLL"] = c[when]["nll"]
                rows.append(row)
    report("calibration", rows, list(rows[0]))
    shards = Path(args.shards) if args.shards else None
    mixture = [nll_of_ensembles(out, band, entry, shards) for band, entry in bands(out) if len(entry["members"]) > 1]
    if mixture:
        report("calibration_mixture", mixture, list(mixture[0]))


def bands(out: Path):
    summary = read_json(EvalDir(out).summary)
    for band, entry in summary["bands"].items():
        yield band, entry | {"shards": summary["shards"][band], "ensemble_method": summary["ensemble"]}


def nll_of_ensembles(out: Path, band: str, entry: dict, shards: Path | None) -> dict:
    """On the scenes kept back from the fit: the NLL of the ensemble's Laplace of the total
    variance (what evaluate writes) against that of the mixture of the members' Laplaces,
    both at the ensemble's best shift and brightness bias."""
    import torch

    from piunet_dist.core.config import DataConfig
    from piunet_dist.data.pipeline import EvalScenes
    from piunet_dist.data.shards import shard_paths
    from piunet_dist.evaluation.ensembles import combine, uncertainty
    from piunet_dist.evaluation.outputs import read_outputs
    from piunet_dist.network.metrics import shift_search
    from piunet_dist.network.shifts import aligned, crop

    check = set(entry["calibration_fit"]["check_scenes"])
    members = list(entry["members"])
    val = torch.tensor([float("nan")] * len(members))
    total, mixture, pixels = 0.0, 0.0, 0
    for scene in EvalScenes(shard_paths(shards or Path(entry["shards"]), band, "val"), DataConfig(band=band)):
        if scene["name"] not in check:
            continue
        predictions = [read_outputs(EvalDir(out).member(band, m), scene["name"]) for m in members]
        srs, scales = torch.stack([p[0] for p in predictions]), torch.stack([p[1] for p in predictions])
        sr, u = combine(srs, scales, val)[entry["ensemble_method"]], uncertainty(srs, scales)
        hr, sm = scene["hr"][None, None], scene["sm"][None, None]
        search = shift_search(sr[None], hr, sm)
        y, m = (aligned(t[0, 0], search.best[0], sr.shape[-2:]).double() for t in (hr, sm))
        m = m.bool()
        bias = search.bias[0]
        b = crop(u.total[None])[0, 0].double()
        p = crop(sr[None])[0, 0].double() + bias
        total += float((torch.log(2 * b) + (y - p).abs() / b)[m].sum())
        mu = crop(srs)[:, 0].double() + bias  # (M, h, w)
        bm = crop(scales)[:, 0].double()
        log_each = -torch.log(2 * bm) - (y - mu).abs() / bm
        mixture += float(-(torch.logsumexp(log_each, dim=0) - torch.log(torch.tensor(float(len(members)))))[m].sum())
        pixels += int(m.sum())
    return {
        "band": band,
        "members": len(members),
        "held-out pixels": pixels,
        "NLL, Laplace of the total variance": total / pixels,
        "NLL, mixture of the members": mixture / pixels,
    }


if __name__ == "__main__":
    command(main)
