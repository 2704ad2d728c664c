"""The report of runs and evaluations: a self-contained index.html and report.md, with the
figures of figures.py.

    python -m piunet_dist report runs/eval runs/piunet/nir-seed0 runs/piunet/red-seed0 --out runs/report

Run directories (metrics.jsonl) give the training and validation curves; evaluation
directories (summary.json, scenes.csv) the per-band tables, per-scene cPSNR against the
baseline, the calibration curve and panels of a few scenes.
"""

from __future__ import annotations

import argparse
import base64
import html
from pathlib import Path

from ..core.errors import UserError
from ..core.eval_dir import EvalDir
from ..core.files import disk_error, read_json, write_text
from ..core.run_dir import RunDir
from .figures import calibration_figure, curves_figure, panels_figure, scatter_figure

STYLE = """
body{font-family:system-ui,-apple-system,'Segoe UI',sans-serif;max-width:1180px;margin:2em auto;padding:0 1em;
color:#1d2330}
h1{font-size:1.7em;margin-bottom:.2em} h2{margin-top:1.8em;border-bottom:2px solid #dde3ee;padding-bottom:.2em}
.sub{color:#5b6475;margin-top:0} table{border-collapse:collapse;margin:.8em 0 1.2em;font-size:.95em}
th,td{padding:.35em .8em;border-bottom:1px solid #e3e7ef;text-align:right}
th:first-child,td:first-child{text-align:left}
th{background:#f3f6fb} tr.best td{font-weight:600;background:#eef7ee} figure{margin:1em 0} img{max-width:100%}
figcaption{color:#5b6475;font-size:.9em} .grid{display:flex;flex-wrap:wrap;gap:1em}
"""


def _png_data(path: Path) -> str:
    return "data:image/png;base64," + base64.b64encode(path.read_bytes()).decode()


ENSEMBLE_LABELS = {
    "mean": "mean",
    "median": "median",
    "val_weighted": "weighted by validation cPSNR",
    "inverse_variance": "inverse-variance",
    "inverse_total_variance": "inverse total variance",
}


def band_table(entry: dict) -> list[tuple[str, float, float | None]]:
    """(method, cPSNR, cSSIM) rows of one band: the baselines (no cSSIM), the members, and
    every ensemble method, the one written and submitted marked."""
    rows = [
        ("challenge baseline", entry["baseline_cpsnr"], None),
        ("bicubic of the mean frame", entry["bicubic_mean_cpsnr"], None),
    ]
    rows += [(f"member {k}", v, entry["members_cssim"].get(k)) for k, v in entry["members"].items()]
    rows += [
        (
            f"ensemble ({ENSEMBLE_LABELS.get(method, method)})" + (" *" if method == entry["ensemble_method"] else ""),
            e["cpsnr"],
            e["cssim"],
        )
        for method, e in entry["ensembles"].items()
    ]
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
    """What each member of a band is: a run (its weights, how far it trained, its settings) or a
    weights file (its path and sha256); the views it was predicted with; when and by what."""
    head = [
        "member",
        "what",
        "weights (step)",
        "trained / planned steps",
        "val cPSNR (dB)",
        "views",
        "config hash",
        "date",
        "version",
    ]
    rows = []
    for name, m in summary.get("members", {}).items():
        if m.get("band") != band:
            continue
        if m.get("kind") == "weights file":
            rows.append(
                [
                    name,
                    f"weights file {m['path']} (sha256 {m['sha256'][:12]})",
                    m["weights"],
                    "-",
                    "-",
                    m["self_ensemble"],
                    "-",
                    m["date"],
                    m["version"],
                ]
            )
        else:
            rows.append(
                [
                    name,
                    f"run {m['run']}",
                    f"{m['weights']} ({m['weights_step']})",
                    f"{m['trained_steps']} / {m['max_steps']}",
                    _fmt(m["val_cpsnr"]),
                    m["self_ensemble"],
                    m["config_hash"],
                    m["date"],
                    m["version"],
                ]
            )
    return head, rows


def grid_table(found: dict) -> tuple[list[str], list[list[str]], set[int]]:
    """A sweep's grid points: their settings, members, mean and spread over seeds; the best marked."""
    keys = list(dict.fromkeys(k for p in found["points"] for k in p["settings"]))
    head = [*keys, "members", "cPSNR mean (dB)", "spread over seeds", "training's val cPSNR (dB)"]
    rows = [
        [
            *(str(p["settings"].get(k)) for k in keys),
            str(len(p["members"])),
            _fmt(p["cpsnr_mean"]),
            _fmt(p["cpsnr_spread"]),
            _fmt(p["val_cpsnr_mean"]),
        ]
        for p in found["points"]
    ]
    best = {i for i, p in enumerate(found["points"]) if p["settings"] == found["best"]}
    return head, rows, best


def views_table(entry: dict) -> tuple[list[str], list[list[str]]]:
    """Each view's cPSNR of the members that averaged several, beside their average."""
    views = entry.get("views", {})
    if not views:
        return [], []
    names = list(next(iter(views.values())))
    rows = [
        [member, *(_fmt(scores.get(v)) for v in names), _fmt(entry["members"].get(member))]
        for member, scores in views.items()
        if list(scores) == names
    ]
    return ["member", *names, "average of the views"], rows


def coverage_table(entry: dict) -> tuple[list[str], list[list[str]]]:
    """Per nominal level, the held-out scenes' coverage as predicted and as calibrated, and
    their NLL, for the ensemble and each member."""
    fit = entry.get("calibration_fit") or {}
    checked = {"ensemble": fit.get("ensemble"), **fit.get("members", {})}
    checked = {who: c for who, c in checked.items() if c}
    if not checked:
        return [], []
    nominal = next(iter(checked.values()))["nominal"]
    rows = [
        [who, label, *(_pct(v) for v in c[when]["coverage"]), _fmt(c[when]["nll"])]
        for who, c in checked.items()
        for when, label in (("before", "as predicted"), ("after", "calibrated"))
    ]
    return ["of", "intervals", *(f"{p:.0%}" for p in nominal), "NLL (DN)"], rows


def _html_table(head: list[str], rows: list[list[str]], marked: set[int] = frozenset()) -> str:
    cells = "".join(
        f"<tr class='{'best' if i in marked else ''}'>"
        + "".join(f"<td>{html.escape(str(c))}</td>" for c in r)
        + "</tr>"
        for i, r in enumerate(rows)
    )
    return "<table><tr>" + "".join(f"<th>{html.escape(h)}</th>" for h in head) + f"</tr>{cells}</table>"


def _md_table(head: list[str], rows: list[list[str]]) -> list[str]:
    return ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)] + [
        "| " + " | ".join(map(str, r)) + " |" for r in rows
    ]


def band_section(eval_dir: Path, summary: dict, band: str, n_scenes: int, out: Path) -> tuple[str, str, str | None]:
    """One band of an evaluation: HTML, Markdown and the terminal's table (None without targets)."""
    entry = summary["bands"][band]
    title = (
        f"{band}, {summary.get('split', 'val')} split ({entry['scenes']} scenes, self-ensemble "
        f"{summary.get('self_ensemble')})"
    )
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
        show(
            ["method", "cPSNR (dB)", "vs baseline (dB)", "vs best member (dB)", "cSSIM"],
            [[name, _fmt(v), f"{v - baseline:+.3f}", f"{v - best_member:+.3f}", _fmt(c, 4)] for name, v, c in table],
            {i for i, (_, v, _) in enumerate(table) if v == best},
        )
        chosen = entry["ensemble_method"]
        score = (
            "n/a (no norm.csv)"
            if entry["score"] is None
            else f"{entry['score']:.4f} (1 is the baseline, lower is better)"
        )
        say(
            f"* the ensemble written to {band}/ensemble/ and submitted: {ENSEMBLE_LABELS.get(chosen, chosen)} "
            f"(eval.ensemble). Best member: {entry['best_member']}. Challenge score: {score}."
        )
        behind = best_member - entry["ensemble_cpsnr"]
        if behind > 0:
            say(
                f"The ensemble scores {behind:.3f} dB below its best member: the members' errors are much alike "
                f"(the epistemic share of the variance is {_pct(entry.get('epistemic_share'))}), so averaging in "
                "a weaker member costs more than their disagreement gains; the table gives every method's result "
                "against the best member."
            )
    head, rows = members_table(summary, band)
    if rows:
        parts.append("<h3>Members</h3>")
        md.append("\n### Members\n")
        show(head, rows)
        say(
            "views: the predictions averaged per scene (eval.self_ensemble; auto gives a network the views "
            "its training showed it: 1 without data.augment, the rotations with it)."
        )
    if "grid" in entry:
        parts.append("<h3>Sweep</h3>")
        md.append("\n### Sweep\n")
        head, rows, best = grid_table(entry["grid"])
        show(head, rows, best)
        which = "this split's cPSNR" if entry["grid"]["best_by"] == "cpsnr_mean" else "training's validation cPSNR"
        if entry["grid"]["best"] is not None:
            say(
                f"Best on validation ({which}): "
                + ", ".join(f"{k}={v}" for k, v in entry["grid"]["best"].items())
                + "."
            )
    head, rows = views_table(entry)
    if rows:
        parts.append("<h3>Each view alone</h3>")
        md.append("\n### Each view alone\n")
        show(head, rows)
    if entry.get("left_out"):
        say(
            f"Left out of this split's scores ({len(entry['left_out'])}): no frame is clear enough "
            f"(data.min_clearance): {', '.join(entry['left_out'])}."
        )
    if "calibration" in entry:
        cal = entry["calibration"]
        parts.append("<h3>Uncertainty</h3>")
        md.append("\n### Uncertainty\n")
        share = entry.get("epistemic_share")
        pooled = {c["nominal"]: c["observed"] for c in entry.get("coverage", [])}  # over all clear pixels, as drawn
        say(
            f"Coverage of the ensemble's predicted intervals on clear pixels: 50% interval "
            f"{_pct(pooled.get(0.5, cal['coverage50']))} (nominal 50%), 90% interval "
            f"{_pct(pooled.get(0.9, cal['coverage90']))} (nominal 90%); above nominal the scale is too "
            "cautious, below it too confident.",
            f"Mean predicted scale: aleatoric {_fmt(entry['aleatoric_dn'], 1)} DN, epistemic (the members' spread) "
            f"{_fmt(entry['epistemic_dn'], 1)} DN, total {_fmt(entry['total_dn'], 1)} DN; the epistemic share of the "
            f"total variance is {_pct(share)}. Laplace NLL {_fmt(cal['nll'])} DN; correlation of |error| and "
            f"predicted scale {_fmt(cal['scale_error_corr'])}.",
        )
        head, rows = coverage_table(entry)
        if rows:
            fit = entry["calibration_fit"]
            say(
                f"Calibrated ({fit['method']}, eval.calibrate) on {fit['fit_scenes']} of these scenes and checked "
                f"on the {len(fit['check_scenes'])} others: the share of their clear pixels inside each central "
                "interval, as predicted and as calibrated."
            )
            show(head, rows)
    figures = [
        f
        for f in (
            calibration_figure(entry, band, out),
            scatter_figure(eval_dir, band, summary.get("ensemble", "mean"), out),
        )
        if f
    ]
    if figures:
        parts.append(
            "<div class='grid'>"
            + "".join(
                f"<figure><img src='{_png_data(f)}' alt='{f.stem}' "
                f"width='{900 if f.stem.startswith('calib') else 430}'></figure>"
                for f in figures
            )
            + "</div>"
        )
        md += [f"![{f.stem}]({f.name})" for f in figures]
    panels = panels_figure(eval_dir, summary, band, n_scenes, out)
    if panels:
        parts.append(
            f"<figure><img src='{_png_data(panels)}' alt='scene panels'><figcaption>"
            "Per scene: an LR frame, the bicubic upsampling of the mean frame, the ensemble's SR, "
            "the HR target, the registered |error| and the predicted Laplace scale; pixels the target "
            "masks as cloudy are blue.</figcaption></figure>"
        )
        md.append(f"\n![scene panels]({panels.name})")
    return "".join(parts), "\n".join(md) + "\n", text


def _pct(v: float | None) -> str:
    return "n/a" if v is None else f"{v:.1%}"


def build(dirs: list[Path], out: Path, n_scenes: int) -> tuple[Path, list[str]]:
    """Write the report; returns index.html and the per-band tables as text."""
    runs = [d for d in dirs if RunDir(d).metrics.is_file()]
    evals = [d for d in dirs if EvalDir(d).summary.is_file()]
    for d in dirs:
        if d not in runs and d not in evals:
            raise UserError(f"{d}: neither a run directory (metrics.jsonl) nor an evaluation (summary.json)")
    summaries = {d: read_json(EvalDir(d).summary) for d in evals}  # each one whole before anything is written
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise disk_error(out, e) from None
    sections_html, sections_md, tables = [], [], []

    curves = curves_figure(runs, out)
    if curves:
        sections_html.append(
            f"<h2>Training</h2><figure><img src='{_png_data(curves)}' alt='training curves'>"
            f"<figcaption>{len(runs)} run(s): {html.escape(', '.join(r.name for r in runs))}"
            "</figcaption></figure>"
        )
        sections_md.append(f"## Training\n\n![training curves]({curves.name})\n")

    for eval_dir, summary in summaries.items():
        if any("ensemble_cpsnr" in e and "ensembles" not in e for e in summary["bands"].values()):
            raise UserError(
                f"{EvalDir(eval_dir).summary}: written by an earlier version of evaluate; run the "
                "evaluation again (the members' predictions are kept, only the scoring runs)"
            )
        for band in summary["bands"]:
            section_html, section_md, table = band_section(eval_dir, summary, band, n_scenes, out)
            sections_html.append(section_html)
            sections_md.append(section_md)
            if table:
                tables.append(table)

    page = (
        f"<!doctype html><html lang='en'><head><meta charset='utf-8'><title>PIUnet report</title>"
        f"<style>{STYLE}</style></head><body><h1>PIUnet report</h1>"
        f"<p class='sub'>{html.escape(', '.join(str(d) for d in dirs))}</p>{''.join(sections_html)}"
        "<script>window.addEventListener('load',()=>{const ok=[...document.images].every("
        "i=>i.complete&&i.naturalWidth>0);document.body.dataset.loaded=ok?'yes':'broken';});</script>"
        "</body></html>"
    )
    for name, text in (("index.html", page), ("report.md", "# PIUnet report\n\n" + "\n".join(sections_md))):
        write_text(out / name, text)
    return out / "index.html", tables


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("dirs", type=Path, nargs="+", help="run directories and/or evaluation directories")
    parser.add_argument("--out", type=Path, help="where the report goes (default: <first evaluation>/report)")
    parser.add_argument("--scenes", type=int, default=3, help="scenes shown in panels per band (default 3)")


def run(args: argparse.Namespace) -> int:
    out = args.out or next((d / "report" for d in args.dirs if EvalDir(d).summary.is_file()), Path("runs/report"))
    page, tables = build(args.dirs, out, args.scenes)
    for table in tables:
        print(table + "\n")
    print(page)
    return 0
