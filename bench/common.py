"""Timing, the steps timed, the table and the JSON file shared by the benchmarks."""

from __future__ import annotations

import contextlib
import datetime
import json
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"
sys.path.insert(0, str(ROOT))  # the straightforward references (references/), as the tests use them

from piunet_dist.core.errors import UserError  # noqa: E402  (found through ROOT, as above)


def command(main) -> None:
    """Run a benchmark's main: a user's mistake (a weights file that is not there, a setting
    out of range) is one line and exit status 2, as the project's commands give it."""
    try:
        main()
    except UserError as e:
        print(f"{Path(sys.argv[0]).name}: error: {e}", file=sys.stderr)
        sys.exit(2)


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    gpu = f", {torch.cuda.get_device_name()}" if torch.cuda.is_available() else ""
    return f"{cpu}, {torch.get_num_threads()} threads{gpu}, torch {torch.__version__}"


def sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def seconds(fn, repeats: int = 5, warmup: int = 2) -> float:
    """Median wall time of fn() over `repeats` runs after `warmup` runs."""
    for _ in range(warmup):
        fn()
    sync()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def report(name: str, rows: list[dict], columns: list[str]) -> None:
    """Print rows as a table and write them with the machine and date to bench/results/NAME.json."""
    stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    print(f"# {name}: {machine()}, {stamp}")
    table(rows, columns)
    RESULTS.mkdir(parents=True, exist_ok=True)
    out = RESULTS / f"{name}.json"
    out.write_text(json.dumps({"machine": machine(), "date": stamp, "rows": rows}, indent=2))
    print(f"(written to {out.relative_to(ROOT)})")


def table(rows: list[dict], columns: list[str]) -> None:
    """Print rows under the given columns, each as wide as its widest cell."""
    widths = [max(len(c), *(len(fmt(r.get(c))) for r in rows)) for c in columns]
    print("  ".join(c.ljust(w) for c, w in zip(columns, widths)))
    for r in rows:
        print("  ".join(fmt(r.get(c)).ljust(w) for c, w in zip(columns, widths)))


def fmt(v) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    return "" if v is None else str(v)


def trainer_step(
    model_cfg: dict,
    batch: int,
    frames: int,
    side: int,
    precision: str,
    compiled: bool = False,
    checkpointed: bool = False,
    attention: str = "auto",
):
    """The trainer's own step (training/step.py) on one fixed batch of DN patches, built as the
    trainer builds it: (a function that takes one step, the model). Accelerate fixes the
    precision once per process, so one precision per process."""
    from accelerate import Accelerator

    from piunet_dist.core.config import Config
    from piunet_dist.training.starting import initial_model
    from piunet_dist.training.step import prepare_step

    cfg = Config()
    for key, value in model_cfg.items():
        setattr(cfg.model, key, value)
    cfg.model.attention = attention
    cfg.train.activation_checkpointing = checkpointed
    cfg.train.compile_loss = compiled or torch.cuda.is_available()
    torch.manual_seed(0)
    model = initial_model(cfg, resuming=False)
    if compiled:
        model.compile_blocks()
    acc = Accelerator(cpu=not torch.cuda.is_available(), mixed_precision={"fp32": "no"}.get(precision, precision))
    step = prepare_step(model, cfg.train, acc)
    g = torch.Generator().manual_seed(0)
    lr = (7000 + 2000 * torch.rand(batch, frames, side, side, generator=g)).to(acc.device)
    hr = (7000 + 2000 * torch.rand(batch, 1, 3 * side, 3 * side, generator=g)).to(acc.device)
    mask = (torch.rand(hr.shape, generator=g) > 0.1).to(acc.device)

    def one():
        loss, _ = step(lambda: (lr, hr, mask), laplace=True)
        if loss is None:
            raise RuntimeError("non-finite loss")

    return one, step.model


def plain_step(
    model, loss_fn, batch: int, frames: int, side: int, device: str, bf16: bool = False, mask_dtype=torch.bool
):
    """One optimizer step written plainly around a model and its registered loss, as the
    reference and the published code train: forward (under bf16 autocast if asked), the loss
    in float32, backward, gradients clipped at 15, Adam; on one fixed batch of random inputs,
    the mask of clear pixels in the dtype the loss takes. Returns the function that takes one step."""
    model = model.to(device).train()
    opt = torch.optim.Adam(model.parameters(), lr=1e-4)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(batch, frames, side, side, generator=g).to(device)
    y = torch.randn(batch, 1, 3 * side, 3 * side, generator=g).to(device)
    mask = (torch.rand(y.shape, generator=g) > 0.1).to(device, mask_dtype)
    autocast = torch.autocast(device, dtype=torch.bfloat16) if bf16 else contextlib.nullcontext()

    def step():
        with autocast:
            mu, s = model(x)
        loss_fn(y, mu.float(), s.float(), mask).backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 15.0)
        opt.step()
        opt.zero_grad(set_to_none=True)

    return step
