"""GPU benchmark (`make bench-gpu`): one command, one table, one JSON file.

    python bench/gpu.py [--published DIR] [--json PATH] [--sections ... | --headline] [--quick]

Sections, each in a process of its own (a CUDA fault in one leaves the others their
figures), in order of what matters most; rows are printed as they come and the JSON is
rewritten after every section, so a run cut short keeps what it measured:
- attention: each implementation of the attention's core (attention.py) against a
  float64 one, forward and gradients, at the training shape and past SDPA's 65,535
  sequences; its time, forward and backward.
- step: the trainer's own optimizer step (training/step.py) of the paper configuration at
  batch 24 and 96, each in a process of its own: samples/s and peak memory, against the straightforward
  reference in references/ and, with --published DIR (the published code's model.py and losses.py), against that.
- train: `python -m piunet_dist train` end to end on synthetic shards, its samples/s from
  metrics.jsonl against the step alone.
- two: two processes sharing the GPU over gloo, compiled and eager (a few steps with
  SyncBatchNorm, a validation, a checkpoint).
- evaluate: a band of synthetic scenes with the 4-rotation self-ensemble at 1, 8 and 32
  scenes per batch, bf16 against float32 (largest per-scene cPSNR difference), against
  scene by scene with the reference and the published code; the weights trained above.
- profile: torch.profiler's top kernels of the default step.
- matrix: the remaining implementation x precision x eager/compiled steps.
--headline runs only what the goals are judged by (sections step, train and evaluate, a few
rows each); --quick runs at toy sizes (a check of the script itself, CPU or GPU).
"""

from __future__ import annotations

import argparse
import functools
import importlib.util
import json
import shutil
import subprocess
import sys
import tempfile
import time
import types
from pathlib import Path

import torch
from common import RESULTS, ROOT, command, fmt, machine, plain_step, sync, table, trainer_step  # noqa: E402  (sets up the path to the references)

SECTIONS = ("attention", "step", "train", "two", "evaluate", "profile", "matrix")  # SECTION_RUNS runs them
HEADLINE = ("step", "train", "evaluate")  # what the goals are judged by, and only that
PAPER = {"n_feat": 42, "r_bneck": 8, "n_tefa": 16, "n_heads": 1}
TOY = {"n_feat": 8, "r_bneck": 4, "n_tefa": 1, "n_heads": 1}


def emit(**row) -> None:
    """One row to the parent process (or the screen)."""
    print("ROW " + json.dumps(row), flush=True)


def device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


def timed_ms(fn, repeats: int) -> float:
    """Mean milliseconds of fn() over `repeats` back-to-back calls (CUDA events on a GPU)."""
    sync()
    if torch.cuda.is_available():
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        for _ in range(repeats):
            fn()
        end.record()
        end.synchronize()
        return start.elapsed_time(end) / repeats
    t0 = time.perf_counter()
    for _ in range(repeats):
        fn()
    return (time.perf_counter() - t0) * 1000 / repeats


def reset_memory() -> None:
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()


def peak_gib() -> float | None:
    return torch.cuda.max_memory_allocated() / 2**30 if torch.cuda.is_available() else None


def published(directory: str | None):
    """The published code's modules (model, losses), or None."""
    if not directory:
        return None
    sys.modules.setdefault("pytorch_ssim", types.ModuleType("pytorch_ssim"))  # imported, never used here
    mods = {}
    for name in ("model", "losses"):
        spec = importlib.util.spec_from_file_location(f"published_{name}", Path(directory) / f"{name}.py")
        mods[name] = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(mods[name])
    return types.SimpleNamespace(**mods)


# --- attention -----------------------------------------------------------------------


def section_attention(args) -> None:
    from piunet_dist.network.attention import attend

    dev = device()
    b, t, p, f = (2, 5, 40, 12) if args.quick else (24, 9, 1024, 42)
    g = torch.Generator(device=dev).manual_seed(0)
    q64 = torch.randn(b, t, p, 1, f, device=dev, dtype=torch.float64, generator=g)
    x64 = torch.randn(b, t, p, f, device=dev, dtype=torch.float64, generator=g)
    d64 = torch.randn(b, t, p, 1, f, device=dev, dtype=torch.float64, generator=g)
    ref = _attention_grads(q64, x64, d64, "matmul")
    impls = gpu_impls()
    for impl in impls:
        for dtype in (torch.float32, torch.bfloat16):
            got = _attention_grads(q64.to(dtype), x64.to(dtype), d64.to(dtype), impl)
            errors = {
                name: float((a.double() - r).norm() / r.norm()) for name, a, r in zip(("out", "dq", "dx"), got, ref)
            }
            q, x, d = (v.to(dtype).requires_grad_() for v in (q64, x64, d64))

            def fwd_bwd(q=q, x=x, d=d, impl=impl):
                q.grad = x.grad = None
                out = attend(q, x, f**-0.5, impl)
                out.backward(d.detach())

            fwd_bwd()
            ms = timed_ms(fwd_bwd, 3 if args.quick else 20)
            emit(
                section="attention",
                case=f"core fwd+bwd, {b * p} pixels x {t} frames x {f}",
                impl=impl,
                precision=str(dtype).split(".")[-1],
                ms=ms,
                **{f"rel_err_{k}": v for k, v in errors.items()},
            )
    # inference: forward alone over 8 scenes x 4 views of 128x128
    b, p = (2, 40) if args.quick else (32, 128 * 128)
    qb = torch.randn(b, t, p, 1, f, device=dev, dtype=torch.bfloat16, generator=g)
    xb = torch.randn(b, t, p, f, device=dev, dtype=torch.bfloat16, generator=g)
    with torch.no_grad():
        for impl in impls:
            forward = functools.partial(attend, qb, xb, f**-0.5, impl)
            forward()
            emit(
                section="attention",
                case=f"core forward, {b * p} pixels x {t} frames x {f}",
                impl=impl,
                precision="bfloat16",
                ms=timed_ms(forward, 3 if args.quick else 10),
            )
    del qb, xb, forward
    b, p = (2, 40) if args.quick else (24, 1024)
    # what channel padding would buy: a 3x3 convolution of the frames at 42 and 48 channels
    for channels in (42, 48):
        for dtype in (torch.float32, torch.bfloat16):
            w = torch.randn(channels, channels, 3, 3, device=dev, dtype=dtype, requires_grad=True)
            h = (
                torch.randn(b * t, channels, 8 if args.quick else 32, 8 if args.quick else 32, device=dev, dtype=dtype)
                .contiguous(memory_format=torch.channels_last)
                .requires_grad_()
            )

            def conv(h=h, w=w):
                torch.nn.functional.conv2d(h, w, padding=1).sum().backward()

            conv()
            emit(
                section="attention",
                case=f"conv 3x3 fwd+bwd, {b * t} frames, {channels} channels",
                impl="-",
                precision=str(dtype).split(".")[-1],
                ms=timed_ms(conv, 3 if args.quick else 20),
            )
    # past the 65,535 sequences of one SDPA launch: 5 scenes of 128x128 (4 for --quick: a forced split)
    b, p = (2, 40) if args.quick else (5, 128 * 128)
    q64 = torch.randn(b, t, p, 1, f, device=dev, dtype=torch.float64, generator=g)
    x64 = torch.randn(b, t, p, f, device=dev, dtype=torch.float64, generator=g)
    with torch.no_grad():
        ref = attend(q64, x64, f**-0.5, "matmul")
        for impl in impls:
            out = attend(
                q64.to(torch.bfloat16),
                x64.to(torch.bfloat16),
                f**-0.5,
                impl,
                **({"max_sequences": 7} if args.quick else {}),
            )
            emit(
                section="attention",
                case=f"forward, {b * p} sequences",
                impl=impl,
                precision="bfloat16",
                rel_err_out=float((out.double() - ref).norm() / ref.norm()),
            )


def gpu_impls() -> list[str]:
    from piunet_dist.network.attention import IMPLEMENTATIONS

    return [i for i in IMPLEMENTATIONS if i != "auto" and (device() == "cuda" or not i.startswith("triton"))]


def _attention_grads(q, x, d, impl):
    from piunet_dist.network.attention import attend

    q, x = q.clone().requires_grad_(), x.clone().requires_grad_()
    out = attend(q, x, q.shape[-1] ** -0.5, impl)
    out.backward(d)
    return out.detach(), q.grad, x.grad


# --- training steps ------------------------------------------------------------------


def make_step(
    kind: str, impl: str, precision: str, compiled: bool, ckpt: bool, batch: int, model_cfg: dict, side: int, pub=None
):
    """One optimizer step and the model it trains: this project's is the trainer's own
    (training/step.py, through common.trainer_step); the reference's and the published code's
    are the same sequence written plainly around their model and loss."""
    if kind == "this":
        return trainer_step(model_cfg, batch, 9, side, precision, compiled, ckpt, impl)
    torch.manual_seed(0)
    if kind == "reference":
        from references import oracles
        from references.reference_piunet import RefPIUNet

        model, loss_fn = RefPIUNet(**model_cfg), oracles.registered_laplace
    else:
        cfg = types.SimpleNamespace(
            N_feat=model_cfg["n_feat"],
            R_bneck=model_cfg["r_bneck"],
            N_tefa=model_cfg["n_tefa"],
            N_heads=model_cfg["n_heads"],
        )
        model = pub.model.PIUNET(cfg)

        def loss_fn(y, mu, s, m):
            return pub.losses.l1_registered_uncertainty_loss(y, mu, s, m, y.shape[-1])

    step = plain_step(model, loss_fn, batch, 9, side, device(), bf16=precision == "bf16", mask_dtype=torch.float32)
    return step, model


def step_row(section: str, kind: str, impl: str = "-", precision: str = "fp32", pub=None, **options) -> dict | None:
    """One step's figures (measure_step's, with its options), emitted as a row. This project's
    steps each run in a process of their own: Accelerate fixes the precision once per process,
    and the peak memory is the row's own."""
    if kind != "this":
        return measure_step(section, kind, impl, precision, pub=pub, **options)
    spec = {"section": section, "kind": kind, "impl": impl, "precision": precision, **options}
    done = subprocess.run(
        [sys.executable, __file__, "--row", json.dumps(spec)], capture_output=True, text=True, cwd=ROOT
    )
    rows = [json.loads(line[4:]) for line in done.stdout.splitlines() if line.startswith("ROW ")]
    if rows:
        print("ROW " + json.dumps(rows[-1]), flush=True)
        return rows[-1]
    error = " | ".join(done.stderr.strip().splitlines()[-2:])[:300]
    emit(
        section=section,
        kind=kind,
        impl=impl,
        precision=precision,
        batch=options.get("batch", 24),
        error=f"exit {done.returncode}: {error}",
    )
    return None


def measure_step(
    section: str,
    kind: str,
    impl: str = "-",
    precision: str = "fp32",
    compiled: bool = False,
    ckpt: bool = False,
    batch: int = 24,
    quick: bool = False,
    pub=None,
) -> dict | None:
    mode = ("compiled" if compiled else "eager") + ("+checkpointed" if ckpt else "")
    batch = min(batch, 4) if quick else batch
    row = {"section": section, "kind": kind, "impl": impl, "precision": precision, "mode": mode, "batch": batch}
    torch._dynamo.reset()
    reset_memory()
    try:
        started = time.perf_counter()
        step, model = make_step(
            kind, impl, precision, compiled, ckpt, batch, TOY if quick else PAPER, 8 if quick else 32, pub
        )
        for _ in range(3):  # compiles, picks kernels, allocates
            step()
        sync()
        warm = time.perf_counter() - started
        reset_memory()
        ms = timed_ms(step, 2 if quick else 10)
        row |= {"step_ms": ms, "samples_per_s": 1000 * row["batch"] / ms, "peak_gib": peak_gib(), "warmup_s": warm}
    except Exception as e:  # a crash is a figure too: the row says what it was
        row["error"] = f"{type(e).__name__}: {str(e).strip().splitlines()[0] if str(e).strip() else ''}"[:200]
    emit(**row)
    return row


def section_step(args) -> None:
    pub = published(args.published)
    q = args.quick
    impl = "triton" if device() == "cuda" else "sdpa"
    step_row("step", "reference", quick=q)
    if pub:
        step_row("step", "published", quick=q, pub=pub)
    step_row("step", "this", impl, "bf16", compiled=True, quick=q)
    step_row("step", "this", impl, "bf16", compiled=True, ckpt=True, quick=q)
    if args.headline:
        return
    if pub:
        step_row("step", "published", precision="bf16", quick=q, pub=pub)
    step_row("step", "this", impl, "bf16", quick=q)
    step_row("step", "this", impl, "fp32", quick=q)
    step_row("step", "this", impl, "bf16", ckpt=True, quick=q)
    step_row("step", "this", impl, "bf16", compiled=True, batch=96, quick=q)
    step_row("step", "this", "sdpa", "bf16", batch=96, quick=q)
    if pub:
        step_row("step", "published", batch=96, quick=q, pub=pub)


def section_matrix(args) -> None:
    """Every implementation x precision x eager/compiled, the compiled batch-24 rows first."""
    impls = gpu_impls()
    pub = published(args.published)
    for precision in ("bf16", "fp32"):
        for impl in impls:
            step_row("matrix", "this", impl, precision, compiled=True, quick=args.quick)
    if pub:
        step_row("matrix", "published", quick=args.quick, pub=pub)
    for batch in (24, 96):
        for impl in impls:
            for precision in ("fp32", "bf16"):
                step_row("matrix", "this", impl, precision, batch=batch, quick=args.quick)


# --- profile -------------------------------------------------------------------------


def section_profile(args) -> None:
    from torch.profiler import ProfilerActivity, profile

    impl = "triton" if device() == "cuda" else "sdpa"
    step, _ = make_step(
        "this",
        impl,
        "bf16",
        True,
        False,
        4 if args.quick else 24,
        TOY if args.quick else PAPER,
        8 if args.quick else 32,
    )
    for _ in range(3):
        step()
    sync()
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if torch.cuda.is_available() else [])
    with profile(activities=activities) as prof:
        for _ in range(3):
            step()
        sync()
    cuda = torch.cuda.is_available()
    events = [e for e in prof.key_averages() if (e.self_device_time_total if cuda else e.self_cpu_time_total) > 0]
    key = (lambda e: e.self_device_time_total) if cuda else (lambda e: e.self_cpu_time_total)
    total = sum(key(e) for e in events)
    for e in sorted(events, key=key, reverse=True)[:15]:
        emit(
            section="profile",
            kernel=e.key[:90],
            calls_per_step=e.count / 3,
            ms_per_step=key(e) / 3000,
            share=key(e) / total,
        )


# --- end to end and two processes ----------------------------------------------------


def work_dir(args) -> Path:
    path = Path(args.work)
    path.mkdir(parents=True, exist_ok=True)
    return path


def shards(args) -> Path:
    """Synthetic NIR scenes packed once for the train and evaluate sections."""
    from piunet_dist.data.packing import pack
    from piunet_dist.data.synthetic import synthesise

    out = work_dir(args) / "shards"
    if not (out / "manifest.json").is_file():
        scenes = 12 if args.quick else 48
        synthesise(work_dir(args) / "scenes", scenes, 0, ["NIR"], seed=0, workers=8)
        val_fraction = 0.34 if args.quick else 0.67
        pack(work_dir(args) / "scenes", out, ["NIR"], val_fraction=val_fraction, workers=8, scenes_per_shard=4)
    return out


def cli(*argv, launcher=()) -> subprocess.CompletedProcess:
    return subprocess.run(
        [*launcher, *([] if launcher else [sys.executable]), "-m", "piunet_dist", *argv],
        capture_output=True,
        text=True,
        cwd=ROOT,
    )


def section_train(args) -> None:
    data = shards(args)
    run_dir = work_dir(args) / "run"
    shutil.rmtree(run_dir, ignore_errors=True)  # the bench's own: each time a new run
    steps = 40 if args.quick else 300
    size = TOY if args.quick else PAPER
    settings = (
        [f"model.{k}={v}" for k, v in size.items()]
        + [
            f"data.shards={data}",
            f"run_dir={run_dir}",
            f"train.max_steps={steps}",
            f"train.log_every={steps // 6}",
            f"train.val_every={steps}",
            f"train.ckpt_every={steps}",
            "data.workers=8",
            f"train.precision={'bf16' if device() == 'cuda' else 'no'}",
            "train.compile_model=true",
            "train.l1_warmup_steps=50",
        ]
        + (["data.patch=8", "train.batch_size=4"] if args.quick else [])
    )
    started = time.perf_counter()
    done = cli("train", "--config", "configs/base.yaml", *settings)
    row = {
        "section": "train",
        "case": f"piunet_dist train, {steps} steps, batch {4 if args.quick else 24}",
        "seconds": time.perf_counter() - started,
        "rc": done.returncode,
    }
    if done.returncode:
        row["error"] = done.stderr.strip().splitlines()[-1][:200] if done.stderr.strip() else "?"
    else:
        events = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
        rates = [e["samples_per_s"] for e in events if e["event"] == "train"][1:]  # the first holds the compile
        val = [e for e in events if e["event"] == "val"]
        last = [e for e in events if e["event"] == "train"][-1]
        row |= {
            "samples_per_s": sum(rates) / len(rates) if rates else None,
            "val_cpsnr": val[-1]["val_cpsnr"] if val else None,
            "peak_gib": last["peak_mem_mb"] / 1024 if "peak_mem_mb" in last else None,
        }
    emit(**row)


def section_two(args) -> None:
    """Two processes on one GPU: gloo (NCCL refuses two ranks on one device), SyncBatchNorm."""
    data = shards(args)
    for compiled in (True, False):
        two = work_dir(args) / f"two-{compiled}"
        shutil.rmtree(two, ignore_errors=True)
        tiny = [f"model.{k}={v}" for k, v in TOY.items()] + [
            f"data.shards={data}",
            f"run_dir={two}",
            "train.max_steps=6",
            "train.val_every=6",
            "train.ckpt_every=6",
            "train.batch_size=8",
            "data.patch=16",
            "data.workers=1",
            "train.log_every=2",
            f"train.compile_model={str(compiled).lower()}",
        ]
        launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
        started = time.perf_counter()
        done = cli("train", "--config", "configs/base.yaml", *tiny, launcher=launcher)
        row = {
            "section": "two",
            "case": f"2 processes on one device, {'compiled' if compiled else 'eager'}: "
            "6 steps, validation, checkpoint",
            "seconds": time.perf_counter() - started,
            "rc": done.returncode,
        }
        if done.returncode:
            (work_dir(args) / f"two-{compiled}.log").write_text(done.stdout + done.stderr)
            lines = [line for line in done.stderr.splitlines() if "rror" in line and "elastic" not in line]
            row["error"] = " | ".join(dict.fromkeys(lines))[:600]
        else:
            events = [json.loads(line) for line in (two / "metrics.jsonl").read_text().splitlines()]
            start = next(e for e in events if e["event"] == "start")
            row |= {
                "world_size": start["world_size"],
                "validated": any(e["event"] == "val" for e in events),
                "checkpoint": (two / "checkpoints" / "step_0000006").is_dir(),
            }
        emit(**row)


# --- evaluation ----------------------------------------------------------------------


def section_evaluate(args) -> None:
    from torch.utils.data import DataLoader

    from piunet_dist.data.pipeline import EvalScenes
    from piunet_dist.data.shards import shard_paths
    from piunet_dist.evaluation.inference import super_resolve
    from piunet_dist.network.metrics import cpsnr
    from piunet_dist.network.model import PIUNet, denormalise, normalise
    from piunet_dist.network.weights import load_weights
    from references import oracles
    from references.reference_piunet import RefPIUNet

    dev = device()
    size = TOY if args.quick else PAPER
    data = shards(args)
    val = shard_paths(data, "NIR", "val") + shard_paths(data, "NIR", "train")  # every scene, for a full band
    scenes = list(EvalScenes(val))
    count = len(scenes)
    trained = work_dir(args) / "run" / "best"
    model = PIUNet(**size).to(dev).eval()
    if (trained / "model.safetensors").is_file():
        load_weights(model, trained)
    weights = "trained above" if (trained / "model.safetensors").is_file() else "as initialised"
    case = f"{count} scenes, self-ensemble x4, weights {weights}"

    def ours(batch_size, precision):
        scores = []
        for batch in DataLoader(scenes, batch_size=batch_size, collate_fn=_collate):
            sr, _ = super_resolve(model, batch["lr"].to(dev), 4, precision)
            scores.append(cpsnr(sr, batch["hr"][:, None].to(dev), batch["sm"][:, None].to(dev)))
        return torch.cat(scores).cpu()

    def one_by_one(net, metric):
        scores = []
        with torch.no_grad():
            for scene in scenes:
                lr = scene["lr"][None].to(dev)
                sr = 0
                for k in range(4):
                    mu, _ = net(normalise(torch.rot90(lr, k, dims=(-2, -1))))
                    sr = sr + torch.rot90(denormalise(mu), -k, dims=(-2, -1)) / 4
                scores.append(metric(sr, scene["hr"][None, None].to(dev), scene["sm"][None, None].float().to(dev)))
        return scores

    baselines = {}
    ref = RefPIUNet(**size).to(dev).eval()
    ref.load_state_dict(model.state_dict())
    baselines["reference, scene by scene"] = lambda: one_by_one(ref, oracles.cpsnr)
    pub = published(args.published)
    if pub:
        cfg = types.SimpleNamespace(
            N_feat=size["n_feat"], R_bneck=size["r_bneck"], N_tefa=size["n_tefa"], N_heads=size["n_heads"]
        )
        net = pub.model.PIUNET(cfg).to(dev).eval()
        net.load_state_dict(model.state_dict())
        baselines["published, scene by scene"] = lambda: one_by_one(net, lambda s, h, m: pub.losses.cpsnr(h, s, m, 384))
    variants = (
        ((32, "bf16"), (32, "no")) if args.headline else ((1, "no"), (1, "bf16"), (8, "bf16"), (32, "bf16"), (32, "no"))
    )
    _ = ours(*variants[0])  # warm-up: kernels picked, caches filled
    rates = {}
    for name, fn in baselines.items():
        sync()
        t0 = time.perf_counter()
        fn()
        sync()
        rates[name] = count / (time.perf_counter() - t0)
        emit(section="evaluate", case=case, variant=name, scenes_per_s=rates[name])
    fp32 = None
    for batch_size, precision in variants:
        reset_memory()
        sync()
        t0 = time.perf_counter()
        scores = ours(batch_size, precision)
        sync()
        rate = count / (time.perf_counter() - t0)
        row = {
            "section": "evaluate",
            "case": case,
            "variant": f"this, {batch_size} scenes per batch, {'bf16' if precision == 'bf16' else 'fp32'}",
            "scenes_per_s": rate,
            "peak_gib": peak_gib(),
            "mean_cpsnr": float(scores.mean()),
        }
        row |= {f"vs {k.split(',')[0]}": rate / v for k, v in rates.items()}
        if precision == "no":
            fp32 = scores if fp32 is None else fp32
        elif fp32 is not None:
            row["max_abs_dcpsnr_vs_fp32"] = float((scores - fp32).abs().max())
        emit(**row)


def _collate(items):
    return {
        "lr": torch.stack([i["lr"] for i in items]),
        "hr": torch.stack([i["hr"] for i in items]),
        "sm": torch.stack([i["sm"] for i in items]),
    }


# --- the parent ----------------------------------------------------------------------

SECTION_RUNS = {
    "attention": section_attention,
    "step": section_step,
    "train": section_train,
    "two": section_two,
    "evaluate": section_evaluate,
    "profile": section_profile,
    "matrix": section_matrix,
}

COLUMNS = (
    "kind",
    "case",
    "impl",
    "precision",
    "mode",
    "batch",
    "variant",
    "kernel",
    "step_ms",
    "samples_per_s",
    "scenes_per_s",
    "peak_gib",
    "ms",
    "ms_per_step",
    "calls_per_step",
    "share",
    "rel_err_out",
    "rel_err_dq",
    "rel_err_dx",
    "max_abs_dcpsnr_vs_fp32",
    "vs reference",
    "vs published",
    "val_cpsnr",
    "world_size",
    "validated",
    "checkpoint",
    "error",
)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sections", nargs="+", choices=SECTIONS, default=list(SECTIONS))
    parser.add_argument("--published", help="folder with the published code's model.py and losses.py")
    parser.add_argument("--json", type=Path, default=RESULTS / "gpu.json", help="where the figures go")
    parser.add_argument(
        "--work",
        default=str(Path(tempfile.gettempdir()) / "piunet-bench-gpu"),
        help="scratch folder for shards and runs",
    )
    parser.add_argument("--quick", action="store_true", help="toy sizes: a check of this script")
    parser.add_argument(
        "--headline",
        action="store_true",
        help="only the goals' figures (a few minutes): the batch-24 step with and without checkpointing, "
        "train end to end, a band's evaluation at the default batch; beside the reference and published code",
    )
    parser.add_argument("--section", choices=SECTIONS, help=argparse.SUPPRESS)
    parser.add_argument("--row", help=argparse.SUPPRESS)  # one step of this project's, in a process of its own
    args = parser.parse_args()
    if args.row:
        measure_step(**json.loads(args.row))
        return
    if args.section:
        SECTION_RUNS[args.section](args)
        return
    stamp = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    rows, started = [], time.perf_counter()
    print(f"# gpu: {machine()}, {stamp}", flush=True)
    for section in HEADLINE if args.headline else args.sections:
        cmd = [sys.executable, __file__, "--section", section, "--json", str(args.json), "--work", args.work]
        cmd += ["--published", args.published] if args.published else []
        cmd += [flag for flag, on in (("--quick", args.quick), ("--headline", args.headline)) if on]
        # one pipe, read as it comes: a second one left unread would fill and stop the section
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=ROOT)
        said = []
        for line in proc.stdout:
            if line.startswith("ROW "):
                rows.append(json.loads(line[4:]))
                print("  " + "  ".join(f"{k}={fmt(v)}" for k, v in rows[-1].items()), flush=True)
            elif line.strip():
                said = [*said[-2:], line.strip()]
        if proc.wait():
            rows.append({"section": section, "error": f"exit {proc.returncode}: " + " | ".join(said)[:400]})
            print("  " + json.dumps(rows[-1]), flush=True)
        print(f"# {section} done at {time.perf_counter() - started:.0f} s", flush=True)
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"machine": machine(), "date": stamp, "rows": rows}, indent=1))
    for section in SECTIONS:
        titled(section, [r for r in rows if r["section"] == section])
    summary = goals(rows)
    titled("against the goals", summary)
    rows += summary
    args.json.write_text(json.dumps({"machine": machine(), "date": stamp, "rows": rows}, indent=1))
    print(f"(written to {args.json}; {time.perf_counter() - started:.0f} s in all)")


def goals(rows: list[dict]) -> list[dict]:
    """The figures the GPU work is judged by, each against what it is measured against."""

    def find(**match):
        return next((r for r in rows if all(r.get(k) == v for k, v in match.items()) and "error" not in r), None)

    impl = "triton" if torch.cuda.is_available() else "sdpa"
    fast = find(section="step", kind="this", impl=impl, precision="bf16", mode="compiled", batch=24)
    ckpt = find(section="step", kind="this", impl=impl, precision="bf16", mode="compiled+checkpointed", batch=24)
    out = []
    for base in ("published", "reference"):
        ref = find(section="step", kind=base, precision="fp32", batch=24)
        if fast and ref:
            out.append(
                {
                    "section": "goals",
                    "case": f"bf16 compiled step, batch 24, vs the {base} code's fp32 step",
                    "ratio": fast["samples_per_s"] / ref["samples_per_s"],
                }
            )
    if fast:
        out.append(
            {"section": "goals", "case": "peak memory, batch 24, no checkpointing", "peak_gib": fast["peak_gib"]}
        )
    if fast and ckpt:
        out.append(
            {
                "section": "goals",
                "case": "peak memory with activation checkpointing, and its time",
                "peak_gib": ckpt["peak_gib"],
                "ratio": fast["samples_per_s"] / ckpt["samples_per_s"],
            }
        )
    e2e = next((r for r in rows if r["section"] == "train" and "samples_per_s" in r), None)
    if fast and e2e:
        out.append(
            {
                "section": "goals",
                "case": "piunet_dist train end to end against the step alone",
                "ratio": e2e["samples_per_s"] / fast["samples_per_s"],
            }
        )
    for r in rows:
        if r["section"] == "evaluate" and r.get("variant", "").startswith("this, 32") and "vs published" in r:
            out.append(
                {
                    "section": "goals",
                    "case": f"evaluation vs published scene by scene: {r['variant']}",
                    "ratio": r["vs published"],
                }
            )
    return out


def titled(title: str, rows: list[dict]) -> None:
    """One section's rows under the columns they fill."""
    if rows:
        print(f"\n## {title}")
        table(rows, [c for c in COLUMNS + ("ratio",) if any(c in r for r in rows)])


if __name__ == "__main__":
    command(main)
