"""The report of runs and evaluations: PNG figures, a self-contained index.html, report.md.

    python -m piunet_dist report runs/eval runs/sweep/nir-seed0 runs/sweep/red-seed0 --out runs/report

Run directories (metrics.jsonl) give the training and validation curves; evaluation
directories (summary.json, scenes.csv) the per-band tables, per-scene cPSNR against the
baseline, the calibration curve and panels of a few scenes.
"""
from __future__ import annotations

import argparse
import base64
import csv
import html
import json
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402

from .baselines import bicubic_mean  # noqa: E402
from .data.pipeline import EvalScenes  # noqa: E402
from .data.shards import shard_paths  # noqa: E402
from .errors import UserError  # noqa: E402
from .files import disk_error, read_json_lines, replacing, write_text  # noqa: E402
from .metrics import shift_search  # noqa: E402
from .run_dir import RunDir  # noqa: E402
from .shifts import aligned, crop  # noqa: E402

STYLE = """
body{font-family:system-ui,-apple-system,'Segoe UI',sans-serif;max-width:1180px;margin:2em auto;padding:0 1em;color:#1d2330}
h1{font-size:1.7em;margin-bottom:.2em} h2{margin-top:1.8em;border-bottom:2px solid #dde3ee;padding-bottom:.2em}
.sub{color:#5b6475;margin-top:0} table{border-collapse:collapse;margin:.8em 0 1.2em;font-size:.95em}
th,td{padding:.35em .8em;border-bottom:1px solid #e3e7ef;text-align:right} th:first-child,td:first-child{text-align:left}
th{background:#f3f6fb} tr.best td{font-weight:600;background:#eef7ee} figure{margin:1em 0} img{max-width:100%}
figcaption{color:#5b6475;font-size:.9em} .grid{display:flex;flex-wrap:wrap;gap:1em}
"""


def _png_data(path: Path) -> str:
    return "data:image/png;base64," + base64.b64encode(path.read_bytes()).decode()


def _events(run_dir: Path) -> list[dict]:
    path = RunDir(run_dir).metrics
    records, bad = read_json_lines(path)
    if bad:  # a line torn by a kill, which the run's next start removes
        print(f"{path}: {bad} line(s) that are not whole records left out", file=sys.stderr)
    return [r for r in records if "event" in r and "step" in r]


def curves_figure(runs: list[Path], out: Path) -> Path | None:
    """Training loss and validation cPSNR and NLL against steps, one line per run."""
    if not runs:
        return None
    fig, axes = plt.subplots(1, 3, figsize=(15, 4))
    for run_dir in runs:
        log = _events(run_dir)
        train = [e for e in log if e["event"] == "train"]
        val = [e for e in log if e["event"] == "val"]
        axes[0].plot([e["step"] for e in train], [e["loss"] for e in train], label=run_dir.name)
        axes[1].plot([e["step"] for e in val], [e["val_cpsnr"] for e in val], marker="o", label=run_dir.name)
        axes[2].plot([e["step"] for e in val], [e["val_nll"] for e in val], marker="o", label=run_dir.name)
    for ax, title in zip(axes, ("training loss (L1 warm-up, then Laplace)", "validation cPSNR (dB)",
                                "validation Laplace NLL (DN)")):
        ax.set_title(title)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
    axes[1].legend(fontsize=8)
    return _save(fig, out / "curves.png")


def _save(fig, path: Path) -> Path:
    fig.tight_layout()
    try:
        with replacing(path) as partial:
            fig.savefig(partial, dpi=90, format="png")
    finally:
        plt.close(fig)
    return path


def _rows(eval_dir: Path) -> list[dict]:
    with open(eval_dir / "scenes.csv", newline="") as f:
        return list(csv.DictReader(f))


def scatter_figure(eval_dir: Path, band: str, out: Path) -> Path | None:
    rows = [r for r in _rows(eval_dir) if r["band"] == band and r.get("baseline_cpsnr")]
    if not rows:
        return None
    base = np.array([float(r["baseline_cpsnr"]) for r in rows])
    ens = np.array([float(r["ensemble:cpsnr"]) for r in rows])
    fig, ax = plt.subplots(figsize=(5, 5))
    ax.scatter(base, ens, s=18, alpha=0.8)
    lo, hi = min(base.min(), ens.min()) - 0.5, max(base.max(), ens.max()) + 0.5
    ax.plot([lo, hi], [lo, hi], color="grey", lw=1, ls="--")
    ax.set_xlabel("challenge baseline cPSNR (dB)")
    ax.set_ylabel("ensemble cPSNR (dB)")
    ax.set_title(f"{band}: {np.mean(ens > base):.0%} of scenes above the baseline")
    ax.grid(alpha=0.3)
    return _save(fig, out / f"scenes_{band}.png")


def calibration_figure(summary: dict, band: str, out: Path) -> Path | None:
    curve = summary["bands"][band].get("calibration_curve")
    if not curve:
        return None
    scale = [c["scale_dn"] for c in curve]
    err = [c["abs_error_dn"] for c in curve]
    fig, ax = plt.subplots(figsize=(5, 5))
    ax.loglog(scale, err, marker="o", label="ensemble")
    lo, hi = min(scale + err), max(scale + err)
    ax.loglog([lo, hi], [lo, hi], color="grey", lw=1, ls="--", label="calibrated (E|e| = b)")
    ax.set_xlabel("predicted Laplace scale b (DN)")
    ax.set_ylabel("mean observed |error| (DN)")
    ax.set_title(f"{band}: calibration")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3, which="both")
    return _save(fig, out / f"calibration_{band}.png")


def panels_figure(eval_dir: Path, summary: dict, band: str, n_scenes: int, out: Path) -> Path | None:
    """For a few scenes: an LR frame, bicubic, SR, HR, |error| and predicted scale."""
    shards = summary.get("shards", {}).get(band)
    split = summary.get("split", "val")
    names = sorted({r["scene"] for r in _rows(eval_dir) if r["band"] == band})[:n_scenes]
    if not shards or not names or split != "val":
        return None
    found = {}
    for scene in EvalScenes(shard_paths(Path(shards), band, split)):
        if scene["name"] in names:
            found[scene["name"]] = scene
        if len(found) == len(names):
            break
    titles = ("LR frame (x3)", "bicubic mean", "SR (ensemble)", "HR", "|error| (DN)", "predicted scale (DN)")
    fig, axes = plt.subplots(len(found), 6, figsize=(18, 3.1 * len(found)), squeeze=False)
    for row, name in zip(axes, sorted(found)):
        scene = found[name]
        sr = torch.from_numpy(np.asarray(Image.open(eval_dir / band / "ensemble" / f"{name}.png")).astype(np.float32))
        scale = np.load(eval_dir / band / "ensemble" / f"{name}_scale.npy")
        hr, sm = scene["hr"], scene["sm"]
        found_shift = shift_search(sr[None, None], hr[None, None], sm[None, None])
        shift = found_shift.best[0]
        err = (aligned(hr, shift, sr.shape) - crop(sr[None, None])[0, 0] - float(found_shift.bias[0])).abs().numpy()
        err[~aligned(sm, shift, sr.shape).numpy()] = np.nan
        lo, hi = np.percentile(hr.numpy()[sm.numpy()], [1, 99]) if sm.any() else (hr.min(), hr.max())
        images = (np.kron(scene["lr"][0].numpy(), np.ones((3, 3))), bicubic_mean(scene["lr"][None])[0, 0].numpy(),
                  sr.numpy(), hr.numpy())
        for ax, image in zip(row[:4], images):
            ax.imshow(image, cmap="gray", vmin=lo, vmax=hi)
        row[4].imshow(err, cmap="magma", vmin=0, vmax=np.nanpercentile(err, 99))
        row[5].imshow(scale, cmap="magma", vmin=0, vmax=np.percentile(scale, 99))
        row[0].set_ylabel(name)
        for ax, title in zip(row, titles):
            ax.set_xticks([])
            ax.set_yticks([])
            ax.set_title(title, fontsize=9)
    return _save(fig, out / f"panels_{band}.png")


def band_table(entry: dict) -> list[tuple[str, float, float | None]]:
    """(method, cPSNR, cSSIM) rows of one band; the baselines have no cSSIM."""
    rows = [("challenge baseline", entry["baseline_cpsnr"], None), ("bicubic of the mean frame", entry["bicubic_mean_cpsnr"], None)]
    rows += [(f"member {k}", v, entry["members_cssim"].get(k)) for k, v in entry["members"].items()]
    rows += [("ensemble (mean)", entry["ensemble_cpsnr"], entry["ensemble_cssim"]),
             ("ensemble (inverse-variance)", entry["weighted_ensemble_cpsnr"], entry["weighted_ensemble_cssim"])]
    return rows


def _fmt(v, digits=3) -> str:
    return "" if v is None else f"{v:.{digits}f}"


def text_table(title: str, table: list[tuple[str, float, float | None]]) -> str:
    """A band's table as aligned text for the terminal, with each row's gain over the baseline."""
    baseline = table[0][1]
    width = max(len(name) for name, _, _ in table)
    lines = [f"{title}", f"  {'method':<{width}}  cPSNR (dB)  vs baseline"]
    lines += [f"  {name:<{width}}  {v:10.3f}  {v - baseline:+11.3f}" for name, v, _ in table]
    return "\n".join(lines)


def build(dirs: list[Path], out: Path, n_scenes: int) -> tuple[Path, list[str]]:
    """Write the report; returns index.html and the per-band tables as text."""
    runs = [d for d in dirs if RunDir(d).metrics.is_file()]
    evals = [d for d in dirs if (d / "summary.json").is_file()]
    for d in dirs:
        if d not in runs and d not in evals:
            raise UserError(f"{d}: neither a run directory (metrics.jsonl) nor an evaluation (summary.json)")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise disk_error(out, e) from None
    sections_html, sections_md, tables = [], [], []

    curves = curves_figure(runs, out)
    if curves:
        sections_html.append(f"<h2>Training</h2><figure><img src='{_png_data(curves)}' alt='training curves'>"
                             f"<figcaption>{len(runs)} run(s): {html.escape(', '.join(r.name for r in runs))}"
                             "</figcaption></figure>")
        sections_md.append(f"## Training\n\n![training curves]({curves.name})\n")

    for eval_dir in evals:
        summary = json.loads((eval_dir / "summary.json").read_text())
        for band, entry in summary["bands"].items():
            title = f"{band}, {summary.get('split', 'val')} split ({entry['scenes']} scenes, self-ensemble x{summary.get('self_ensemble')})"
            parts = [f"<h2>{html.escape(title)}</h2>"]
            md = [f"## {title}\n"]
            if "ensemble_cpsnr" in entry:
                table = band_table(entry)
                tables.append(text_table(title, table))
                best, baseline = max(v for _, v, _ in table), table[0][1]
                parts.append("<table><tr><th>method</th><th>cPSNR (dB)</th><th>vs baseline (dB)</th><th>cSSIM</th>"
                             "</tr>" + "".join(
                                 f"<tr class='{'best' if v == best else ''}'><td>{html.escape(name)}</td>"
                                 f"<td>{_fmt(v)}</td><td>{v - baseline:+.3f}</td><td>{_fmt(c, 4)}</td></tr>"
                                 for name, v, c in table) + "</table>")
                md += ["| method | cPSNR (dB) | vs baseline (dB) | cSSIM |", "|---|---|---|---|"]
                md += [f"| {name} | {_fmt(v)} | {v - baseline:+.3f} | {_fmt(c, 4)} |" for name, v, c in table]
                cal = entry["calibration"]
                facts = (f"challenge score {_fmt(entry['score'], 4)} (1 is the baseline, lower is better); "
                         f"Laplace NLL {_fmt(cal['nll'])}; share of clear pixels inside the predicted 50% interval "
                         f"{_fmt(cal['coverage50'])}, inside the 90% interval {_fmt(cal['coverage90'])}; "
                         f"correlation of |error| and predicted scale {_fmt(cal['scale_error_corr'])}; "
                         f"uncertainty: aleatoric {_fmt(entry['aleatoric_dn'], 1)} DN, epistemic "
                         f"{_fmt(entry['epistemic_dn'], 1)} DN, total {_fmt(entry['total_dn'], 1)} DN.")
                parts.append(f"<p>{html.escape(facts)}</p>")
                md += ["", facts, ""]
            figures = [scatter_figure(eval_dir, band, out), calibration_figure(summary, band, out)]
            figures = [f for f in figures if f]
            if figures:
                parts.append("<div class='grid'>" + "".join(
                    f"<figure><img src='{_png_data(f)}' alt='{f.stem}' width='430'></figure>" for f in figures) + "</div>")
                md += [f"![{f.stem}]({f.name})" for f in figures]
            panels = panels_figure(eval_dir, summary, band, n_scenes, out)
            if panels:
                parts.append(f"<figure><img src='{_png_data(panels)}' alt='scene panels'><figcaption>"
                             "Per scene: an LR frame, the bicubic upsampling of the mean frame, the ensemble's SR, "
                             "the HR target, the registered |error| on clear pixels and the predicted Laplace scale."
                             "</figcaption></figure>")
                md.append(f"\n![scene panels]({panels.name})")
            sections_html.append("".join(parts))
            sections_md.append("\n".join(md) + "\n")

    page = (f"<!doctype html><html lang='en'><head><meta charset='utf-8'><title>PIUnet report</title>"
            f"<style>{STYLE}</style></head><body><h1>PIUnet report</h1>"
            f"<p class='sub'>{html.escape(', '.join(str(d) for d in dirs))}</p>{''.join(sections_html)}"
            "<script>window.addEventListener('load',()=>{const ok=[...document.images].every("
            "i=>i.complete&&i.naturalWidth>0);document.body.dataset.loaded=ok?'yes':'broken';});</script>"
            "</body></html>")
    for name, text in (("index.html", page), ("report.md", "# PIUnet report\n\n" + "\n".join(sections_md))):
        write_text(out / name, text)
    return out / "index.html", tables


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("dirs", type=Path, nargs="+", help="run directories and/or evaluation directories")
    parser.add_argument("--out", type=Path, help="where the report goes (default: <first evaluation>/report)")
    parser.add_argument("--scenes", type=int, default=3, help="scenes shown in panels per band (default 3)")


def run(args: argparse.Namespace) -> int:
    out = args.out or next((d / "report" for d in args.dirs if (d / "summary.json").is_file()), Path("runs/report"))
    page, tables = build(args.dirs, out, args.scenes)
    for table in tables:
        print(table + "\n")
    print(page)
    return 0
