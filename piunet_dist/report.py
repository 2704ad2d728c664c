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
from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402

from .baselines import bicubic_mean  # noqa: E402
from .config import load_config  # noqa: E402
from .data.pipeline import EvalScenes  # noqa: E402
from .data.shards import shard_paths  # noqa: E402
from .errors import UserError  # noqa: E402
from .files import disk_error, read_json_lines, replacing, write_text  # noqa: E402
from .metrics import shift_search  # noqa: E402
from .run_dir import RunDir  # noqa: E402
from .shifts import aligned, crop  # noqa: E402

MASKED = "#3b8eea"  # cloud-masked pixels: a colour magma, the error and scale map, never takes
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


def _band(run_dir: Path) -> str:
    try:
        return load_config(RunDir(run_dir).config).data.band
    except UserError:  # a run dir without a readable config.yaml still has its curves
        return "unknown band"


def curves_figure(runs: list[Path], out: Path) -> Path | None:
    """Training loss and validation cPSNR and NLL against steps, a row per band (their levels
    are not comparable), a line per run."""
    if not runs:
        return None
    bands: dict[str, list[Path]] = {}
    for run_dir in runs:
        bands.setdefault(_band(run_dir), []).append(run_dir)
    fig, grid = plt.subplots(len(bands), 3, figsize=(15, 3.8 * len(bands)), squeeze=False)
    for axes, (band, members) in zip(grid, sorted(bands.items())):
        for run_dir in members:
            log = _events(run_dir)
            train = [e for e in log if e["event"] == "train"]
            val = [e for e in log if e["event"] == "val"]
            axes[0].plot([e["step"] for e in train], [e["loss"] for e in train], label=run_dir.name)
            axes[1].plot([e["step"] for e in val], [e["val_cpsnr"] for e in val], marker="o", label=run_dir.name)
            axes[2].plot([e["step"] for e in val], [e["val_nll"] for e in val], marker="o", label=run_dir.name)
        for ax, title in zip(axes, ("training loss (L1 warm-up, then Laplace)", "validation cPSNR (dB)",
                                    "validation Laplace NLL (DN)")):
            ax.set_title(f"{band}: {title}")
            ax.set_xlabel("step")
            ax.grid(alpha=0.3)
            ax.legend(fontsize=8)
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


def scatter_figure(eval_dir: Path, band: str, method: str, out: Path) -> Path | None:
    rows = [r for r in _rows(eval_dir) if r["band"] == band and r.get("baseline_cpsnr")]
    if not rows:
        return None
    base = np.array([float(r["baseline_cpsnr"]) for r in rows])
    ens = np.array([float(r[f"{method}:cpsnr"]) for r in rows])
    fig, ax = plt.subplots(figsize=(5, 5))
    ax.scatter(base, ens, s=18, alpha=0.8)
    lo, hi = min(base.min(), ens.min()) - 0.5, max(base.max(), ens.max()) + 0.5
    ax.plot([lo, hi], [lo, hi], color="grey", lw=1, ls="--")
    ax.set_xlabel("challenge baseline cPSNR (dB)")
    ax.set_ylabel("ensemble cPSNR (dB)")
    ax.set_title(f"{band}: {np.mean(ens > base):.0%} of scenes above the baseline")
    ax.grid(alpha=0.3)
    return _save(fig, out / f"scenes_{band}.png")


def calibration_figure(entry: dict, band: str, out: Path) -> Path | None:
    """The ensemble's calibration: mean observed |error| against the predicted scale, and the
    observed coverage of the predicted central intervals against their nominal coverage;
    on the dashed lines a Laplace is calibrated."""
    curve, coverage = entry.get("calibration_curve"), entry.get("coverage")
    if not curve or not coverage:
        return None
    scale = [c["scale_dn"] for c in curve]
    err = [c["abs_error_dn"] for c in curve]
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4.6))
    left.loglog(scale, err, marker="o", label="ensemble")
    lo, hi = min(scale + err), max(scale + err)
    left.loglog([lo, hi], [lo, hi], color="grey", lw=1, ls="--", label="calibrated: E|error| = b")
    left.set_xlabel("predicted Laplace scale b (DN)")
    left.set_ylabel("mean observed |error| (DN)")
    left.set_title(f"{band}: |error| against predicted scale")
    left.grid(alpha=0.3, which="both")
    for axis in (left.xaxis, left.yaxis):  # 100, 200, 500, 1000: log's own minor labels collide
        axis.set_major_locator(LogLocator(subs=(1.0, 2.0, 5.0)))
        axis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
        axis.set_minor_formatter(NullFormatter())
    left.legend(fontsize=8)
    nominal = [c["nominal"] for c in coverage]
    observed = [c["observed"] for c in coverage]
    right.plot(nominal, observed, marker="o", label="ensemble")
    right.plot([0, 1], [0, 1], color="grey", lw=1, ls="--", label="calibrated: observed = nominal")
    marked = [nominal.index(level) for level in (0.5, 0.9)]
    right.plot([nominal[i] for i in marked], [observed[i] for i in marked], "o", color="crimson", ms=8,
               label="the 50% and 90% intervals")
    right.text(0.97, 0.04, "\n".join(f"{nominal[i]:.0%} interval: {observed[i]:.1%} inside" for i in marked),
               transform=right.transAxes, ha="right", va="bottom", fontsize=9,
               bbox={"facecolor": "white", "edgecolor": "#ccd3df"})
    right.set_xlim(0, 1)
    right.set_ylim(0, 1)
    right.set_xlabel("nominal coverage of the predicted central interval")
    right.set_ylabel("share of clear pixels inside it")
    right.set_title(f"{band}: coverage")
    right.grid(alpha=0.3)
    right.legend(fontsize=8, loc="upper left")
    return _save(fig, out / f"calibration_{band}.png")


MAGMA_MASKED = matplotlib.colormaps["magma"].with_extremes(bad=MASKED)


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
    titles = ("LR frame (x3)", "bicubic mean", "SR (ensemble)", "HR", "|error| (DN), masked in blue",
              "predicted scale (DN), masked in blue")
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
        scale = np.where(sm.numpy(), scale, np.nan)
        lo, hi = np.percentile(hr.numpy()[sm.numpy()], [1, 99]) if sm.any() else (hr.min(), hr.max())
        images = (np.kron(scene["lr"][0].numpy(), np.ones((3, 3))), bicubic_mean(scene["lr"][None])[0, 0].numpy(),
                  sr.numpy(), hr.numpy())
        for ax, image in zip(row[:4], images):
            ax.imshow(image, cmap="gray", vmin=lo, vmax=hi)
        for ax, values, floor in ((row[4], err, 0), (row[5], scale, 1)):  # the scale never nears 0: from its 1%
            bottom, top = np.nanpercentile(values, [floor, 99]) if np.isfinite(values).any() else (0.0, 1.0)
            shown = ax.imshow(values, cmap=MAGMA_MASKED, vmin=bottom, vmax=top)
            fig.colorbar(shown, ax=ax, fraction=0.046, pad=0.03).ax.tick_params(labelsize=7)
        row[0].set_ylabel(name)
        for ax, title in zip(row, titles):
            ax.set_xticks([])
            ax.set_yticks([])
            ax.set_title(title, fontsize=9)
    return _save(fig, out / f"panels_{band}.png")


ENSEMBLE_LABELS = {"mean": "mean", "median": "median", "val_weighted": "weighted by validation cPSNR",
                   "inverse_variance": "inverse-variance", "inverse_total_variance": "inverse total variance"}


def band_table(entry: dict) -> list[tuple[str, float, float | None]]:
    """(method, cPSNR, cSSIM) rows of one band: the baselines (no cSSIM), the members, and
    every ensemble method, the one written and submitted marked."""
    rows = [("challenge baseline", entry["baseline_cpsnr"], None), ("bicubic of the mean frame", entry["bicubic_mean_cpsnr"], None)]
    rows += [(f"member {k}", v, entry["members_cssim"].get(k)) for k, v in entry["members"].items()]
    rows += [(f"ensemble ({ENSEMBLE_LABELS.get(method, method)})" + (" *" if method == entry["ensemble_method"] else ""),
              e["cpsnr"], e["cssim"]) for method, e in entry["ensembles"].items()]
    return rows


def _fmt(v, digits=3) -> str:
    return "" if v is None else f"{v:.{digits}f}"


def text_table(title: str, table: list[tuple[str, float, float | None]], best_member: float) -> str:
    """A band's table as aligned text for the terminal, with each row's gain over the baseline
    and over the best member."""
    baseline = table[0][1]
    width = max(len(name) for name, _, _ in table)
    lines = [f"{title}", f"  {'method':<{width}}  cPSNR (dB)  vs baseline  vs best member"]
    lines += [f"  {name:<{width}}  {v:10.3f}  {v - baseline:+11.3f}  {v - best_member:+14.3f}" for name, v, _ in table]
    return "\n".join(lines)


def members_table(summary: dict, band: str) -> tuple[list[str], list[list[str]]]:
    """What each member of a band is: its weights, how far it trained, its settings, when and by what."""
    head = ["member", "weights (step)", "trained / planned steps", "val cPSNR (dB)", "config hash", "date", "version"]
    rows = []
    for name, m in summary.get("members", {}).items():
        if m.get("band") == band:
            rows.append([name, f"{m['weights']} ({m['weights_step']})", f"{m['trained_steps']} / {m['max_steps']}",
                         _fmt(m["val_cpsnr"]), m["config_hash"], m["date"], m["version"]])
    return head, rows


def _html_table(head: list[str], rows: list[list[str]], marked: set[int] = frozenset()) -> str:
    cells = "".join(f"<tr class='{'best' if i in marked else ''}'>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in r)
                    + "</tr>" for i, r in enumerate(rows))
    return "<table><tr>" + "".join(f"<th>{html.escape(h)}</th>" for h in head) + f"</tr>{cells}</table>"


def _md_table(head: list[str], rows: list[list[str]]) -> list[str]:
    return ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)] + ["| " + " | ".join(map(str, r)) + " |" for r in rows]


def band_section(eval_dir: Path, summary: dict, band: str, n_scenes: int, out: Path) -> tuple[str, str, str | None]:
    """One band of an evaluation: HTML, Markdown and the terminal's table (None without targets)."""
    entry = summary["bands"][band]
    title = f"{band}, {summary.get('split', 'val')} split ({entry['scenes']} scenes, self-ensemble x{summary.get('self_ensemble')})"
    parts, md, text = [f"<h2>{html.escape(title)}</h2>"], [f"## {title}\n"], None

    def say(*paragraphs: str) -> None:
        parts.extend(f"<p>{html.escape(p)}</p>" for p in paragraphs)
        md.extend(["", *paragraphs, ""])

    def show(head, rows, marked=frozenset()):
        parts.append(_html_table(head, rows, marked))
        md.extend(_md_table(head, rows))

    if "ensemble_cpsnr" in entry:
        table = band_table(entry)
        best_member = max(entry["members"].values())
        text = text_table(title, table, best_member)
        baseline, best = table[0][1], max(v for _, v, _ in table)
        show(["method", "cPSNR (dB)", "vs baseline (dB)", "vs best member (dB)", "cSSIM"],
             [[name, _fmt(v), f"{v - baseline:+.3f}", f"{v - best_member:+.3f}", _fmt(c, 4)] for name, v, c in table],
             {i for i, (_, v, _) in enumerate(table) if v == best})
        chosen = entry["ensemble_method"]
        score = "n/a (no norm.csv)" if entry["score"] is None else f"{entry['score']:.4f} (1 is the baseline, lower is better)"
        say(f"* the ensemble written to {band}/ensemble/ and submitted: {ENSEMBLE_LABELS.get(chosen, chosen)} "
            f"(eval.ensemble). Best member: {entry['best_member']}. Challenge score: {score}.")
        behind = best_member - entry["ensemble_cpsnr"]
        if behind > 0:
            say(f"The ensemble scores {behind:.3f} dB below its best member: the members' errors are much alike "
                f"(the epistemic share of the variance is {_pct(entry.get('epistemic_share'))}), so averaging in "
                "a weaker member costs more than their disagreement gains; the table gives every method's result "
                "against the best member.")
    head, rows = members_table(summary, band)
    if rows:
        parts.append("<h3>Members</h3>")
        md.append("\n### Members\n")
        show(head, rows)
    if entry.get("left_out"):
        say(f"Left out of this split's scores ({len(entry['left_out'])}): no frame is clear enough "
            f"(data.min_clearance): {', '.join(entry['left_out'])}.")
    if "calibration" in entry:
        cal = entry["calibration"]
        parts.append("<h3>Uncertainty</h3>")
        md.append("\n### Uncertainty\n")
        share = entry.get("epistemic_share")
        pooled = {c["nominal"]: c["observed"] for c in entry.get("coverage", [])}  # over all clear pixels, as drawn
        say(f"Coverage of the ensemble's predicted intervals on clear pixels: 50% interval "
            f"{_pct(pooled.get(0.5, cal['coverage50']))} (nominal 50%), 90% interval "
            f"{_pct(pooled.get(0.9, cal['coverage90']))} (nominal 90%); above nominal the scale is too "
            "cautious, below it too confident.",
            f"Mean predicted scale: aleatoric {_fmt(entry['aleatoric_dn'], 1)} DN, epistemic (the members' spread) "
            f"{_fmt(entry['epistemic_dn'], 1)} DN, total {_fmt(entry['total_dn'], 1)} DN; the epistemic share of the "
            f"total variance is {_pct(share)}. Laplace NLL {_fmt(cal['nll'])} DN; correlation of |error| and "
            f"predicted scale {_fmt(cal['scale_error_corr'])}.")
    figures = [f for f in (calibration_figure(entry, band, out), scatter_figure(eval_dir, band, summary.get(
        "ensemble", "mean"), out)) if f]
    if figures:
        parts.append("<div class='grid'>" + "".join(
            f"<figure><img src='{_png_data(f)}' alt='{f.stem}' width='{900 if f.stem.startswith('calib') else 430}'>"
            "</figure>" for f in figures) + "</div>")
        md += [f"![{f.stem}]({f.name})" for f in figures]
    panels = panels_figure(eval_dir, summary, band, n_scenes, out)
    if panels:
        parts.append(f"<figure><img src='{_png_data(panels)}' alt='scene panels'><figcaption>"
                     "Per scene: an LR frame, the bicubic upsampling of the mean frame, the ensemble's SR, "
                     "the HR target, the registered |error| and the predicted Laplace scale; pixels the target "
                     "masks as cloudy are blue.</figcaption></figure>")
        md.append(f"\n![scene panels]({panels.name})")
    return "".join(parts), "\n".join(md) + "\n", text


def _pct(v: float | None) -> str:
    return "n/a" if v is None else f"{v:.1%}"


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
        if any("ensemble_cpsnr" in e and "ensembles" not in e for e in summary["bands"].values()):
            raise UserError(f"{eval_dir / 'summary.json'}: written by an earlier version of evaluate; run the "
                            "evaluation again (the members' predictions are kept, only the scoring runs)")
        for band in summary["bands"]:
            section_html, section_md, table = band_section(eval_dir, summary, band, n_scenes, out)
            sections_html.append(section_html)
            sections_md.append(section_md)
            if table:
                tables.append(table)

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
