"""What an evaluation's summary.json says, as the lines `evaluate` prints and the launcher
shows once its scoring job has ended."""

from __future__ import annotations

from pathlib import Path

from ..core.eval_dir import EvalDir
from .calibration import FILE


def summary_text(summary: dict, out: EvalDir) -> str:
    """Per band the baseline, each member and the ensemble, each view, the calibration and the
    sweep's grid; what was chosen; the submission; the summary's path."""
    lines = []
    for band, entry in summary["bands"].items():
        if "ensemble_cpsnr" not in entry:
            lines.append(f"{band}: {entry['scenes']} scenes predicted")
            continue
        gains = ", ".join(f"{k} {v['gain_over_best_member_db']:+.3f}" for k, v in entry["ensembles"].items())
        lines.append(
            f"{band}: baseline {entry['baseline_cpsnr']:.2f} dB, bicubic mean {entry['bicubic_mean_cpsnr']:.2f}, "
            + ", ".join(f"{k} {v:.2f}" for k, v in entry["members"].items())
            + f", ensemble ({entry['ensemble_method']}) {entry['ensemble_cpsnr']:.2f}"
            + (f", score {entry['score']:.4f}" if entry["score"] is not None else ", score n/a (no norm.csv)")
            + f"\n  each ensemble method against the best member ({entry['best_member']}), dB: {gains}"
        )
        for member, views in entry["views"].items():
            lines.append(
                f"  {member}, each view alone (cPSNR, dB): "
                + ", ".join(f"{k} {v:.2f}" for k, v in views.items())
                + f"; their average {entry['members'][member]:.2f}"
            )
        if entry.get("calibration_fit"):
            lines.append(calibration_text(entry["calibration_fit"], out.ensemble(band) / FILE))
        if "grid" in entry:
            lines.append(grid_text(entry["grid"]))
        if entry["left_out"]:
            lines.append(f"  left out (no clear frame): {', '.join(entry['left_out'])}")
    if summary["chosen"]:
        lines.append("chosen for you (summary.json's chosen):\n  " + "\n  ".join(summary["chosen"]))
    submission = summary.get("submission")
    if submission:
        gaps = ", ".join(f"{n} {b}" for b, n in submission["lacking"].items() if n)
        lines.append(
            f"{submission['path']}: {submission['scenes']} test scenes"
            + (f"; lacks {gaps} of the challenge's 290 (--partial)" if gaps else ", the challenge's 290")
        )
    lines.append(str(out.summary))
    return "\n".join(lines)


def grid_text(found: dict) -> str:
    """The sweep's grid points of a band, a line each, and the best on validation."""
    out = ["  grid points (mean and spread over seeds, cPSNR dB):"]
    for point in found["points"]:
        settings = ", ".join(f"{k}={v}" for k, v in point["settings"].items())
        here = "-" if point["cpsnr_mean"] is None else f"{point['cpsnr_mean']:.3f} +- {point['cpsnr_spread']:.3f}"
        out.append(f"    {settings}: {here} ({len(point['members'])} member(s))")
    if found["best"] is not None:
        which = "this split" if found["best_by"] == "cpsnr_mean" else "training's validation"
        out.append(f"  best on validation ({which}): " + ", ".join(f"{k}={v}" for k, v in found["best"].items()))
    return "\n".join(out)


def calibration_text(found: dict, path: Path) -> str:
    """The ensemble's calibration, as checked on the scenes its fit did not see."""
    checked = found.get("ensemble")
    if not checked:
        return f"  calibration ({found['method']}): fitted on {found['fit_scenes']} scene(s), none kept back to check"
    at = {p: i for i, p in enumerate(checked["nominal"])}

    def held(level):
        return f"{checked['before']['coverage'][at[level]]:.1%} -> {checked['after']['coverage'][at[level]]:.1%}"

    return (
        f"  calibration ({found['method']}, fitted on {found['fit_scenes']} scenes, checked on "
        f"{len(found['check_scenes'])} others): the 50% interval holds {held(0.5)}, the 90% {held(0.9)}; "
        f"NLL {checked['before']['nll']:.3f} -> {checked['after']['nll']:.3f}; {path}"
    )
