"""The trainer: one loop on Accelerate (DDP over processes and nodes, mixed precision).

    python -m piunet_dist train --config configs/nir.yaml [section.key=value ...]
    accelerate launch --multi_gpu --num_processes 2 train.py --config ...

Exact resume: the training stream is restarted at every multiple of train.ckpt_every with
that step as its segment (pipeline.TrainPatches); a checkpoint records its segment and the
batches drawn from it, and a resumed run draws those again before its first step, so it
reads the same batches as one that never stopped (with the same ckpt_every and workers).

Ctrl-C or SIGTERM: the step under way finishes, every process writes the checkpoint, and
the run stops with one line; the same command resumes it.
"""
from __future__ import annotations

import argparse
import math
import os
import sys
import time
import warnings
from contextlib import nullcontext
from pathlib import Path

import torch
from accelerate import Accelerator
from accelerate.utils import InitProcessGroupKwargs, broadcast_object_list, set_seed
from torch.utils.data import DataLoader
from tqdm import tqdm

from ..core import checkpoint
from ..core.config import Config, check_world, config_hash, load_config, run_differences, settings_help, to_yaml
from ..core.errors import UserError
from ..core.files import append_record, repair_lines, utc_now, write_text
from ..core.run_dir import RunDir
from ..core.stop import Interrupted, StopRequest, ignore_interrupts_in_worker
from ..core.version import VERSION
from ..data.pipeline import EvalScenes, PatchSettings, TrainPatches
from ..data.probav import LR_SIZE
from ..data.shards import shard_paths
from ..evaluation.inference import predict, scenes_per_batch
from ..network.attention import resolve
from ..network.losses import registered_l1, registered_laplace
from ..network.metrics import CPSNR, CSSIM, UncertaintyCalibration
from ..network.model import PIUNet, normalise


class Trainer:
    def __init__(self, cfg: Config, stop_on_signals: bool = True):
        self.cfg = cfg
        self.run_dir = RunDir(cfg.run_dir)
        self.resume_from = _check_run_dir(cfg)  # before anything is written
        # under submitit, SLURM's signals are its own: it requeues the job
        self.stop = StopRequest() if stop_on_signals else None
        on_gpu = torch.cuda.is_available()
        _check_process_group_env()
        self.acc = Accelerator(cpu=not on_gpu, mixed_precision=cfg.train.precision,
                               log_with="tensorboard", project_dir=str(self.run_dir),
                               kwargs_handlers=_process_group_kwargs(on_gpu))
        expected = int(os.environ.get("WORLD_SIZE", "1"))
        if self.acc.num_processes != expected:
            raise UserError(f"WORLD_SIZE={expected} but Accelerate sees {self.acc.num_processes} process(es): "
                            "start with accelerate launch, torchrun or srun so that all join one group")
        self.micro_batch = check_world(cfg, self.acc.num_processes)
        resolve(cfg.model.attention, self.acc.device)  # refused here, not at the first step
        self.train_shards, self.val_shards = self._shards()

        set_seed(cfg.train.seed)  # the same initial weights on every rank
        model = PIUNet.from_config(cfg.model, checkpoint_blocks=cfg.train.activation_checkpointing)
        if self._use_sync_bn(on_gpu):
            model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
        if cfg.train.compile_model:
            model.compile_blocks()
        set_seed(cfg.train.seed + self.acc.process_index)
        optimizer = torch.optim.Adam(model.parameters(), lr=cfg.train.lr, weight_decay=cfg.train.weight_decay,
                                     fused=on_gpu)
        # stepped once per optimizer step by the loop, so not handed to prepare()
        self.scheduler = torch.optim.lr_scheduler.MultiStepLR(optimizer, cfg.train.lr_milestones, cfg.train.lr_gamma)
        self.model, self.optimizer = self.acc.prepare(model, optimizer)
        self.acc.register_for_checkpointing(self.scheduler)
        self.state = {"step": 0, "best_val_cpsnr": -math.inf, "skipped_steps": 0, "seed": cfg.train.seed,
                      "segment": 0, "segment_batches": 0, "skipped_samples": 0}
        self.skipped_before = 0  # corrupt samples skipped before the current stream began
        self.skipped_by_worker: dict[int, int] = {}

    def _shards(self) -> tuple[list[str], list[str]]:
        """The shards the run reads, checked before the first step: every one present, and the
        val shards, read whole at each validation, against their sha256 (by the main process,
        its verdict sent to all), so that damage stops the run now, not steps later."""
        root, band = Path(self.cfg.data.shards), self.cfg.data.band
        found = [None]
        if self.acc.is_main_process:
            try:
                found = [(shard_paths(root, band, "train"), shard_paths(root, band, "val", digest=True))]
            except UserError as e:
                found = [str(e)]
        found = broadcast_object_list(found)[0]
        if isinstance(found, str):
            raise UserError(found)
        return found

    def _use_sync_bn(self, on_gpu: bool) -> bool:
        mode = self.cfg.train.sync_bn
        if mode == "on" and not on_gpu:
            raise UserError("train.sync_bn=on: torch's SyncBatchNorm runs only on GPUs; use auto or off")
        return mode != "off" and on_gpu and self.acc.num_processes > 1

    # --- the loop -------------------------------------------------------------------

    def train(self) -> dict:
        cfg = self.cfg.train
        if self.stop:  # from here on a signal waits for the end of a step
            self.stop.install()
        try:
            self._start()
            batches = self._batches()
            with tqdm(total=cfg.max_steps, initial=self.state["step"], disable=not self.acc.is_main_process,
                      desc="train", unit="step", dynamic_ncols=True) as bar:
                self._loop(batches, bar)
        finally:
            if self.stop:
                self.stop.uninstall()
        self.acc.end_training()
        return self.state

    def _loop(self, batches, bar) -> None:
        cfg = self.cfg.train
        bad_in_a_row, seen, clock = 0, 0, time.perf_counter()
        saved = None
        while self.state["step"] < cfg.max_steps:
            loss, stop = self._step(batches)
            if loss is None:
                bad_in_a_row += 1
                self.state["skipped_steps"] += 1
                if bad_in_a_row >= cfg.max_bad_steps:
                    raise UserError(f"{bad_in_a_row} non-finite losses in a row at step {self.state['step']}: "
                                    "lower train.lr, use train.precision=bf16 instead of fp16, or check the data")
            else:
                bad_in_a_row = 0
                self.state["step"] += 1
                step = self.state["step"]
                seen += cfg.batch_size
                bar.update(1)
                if step % cfg.log_every == 0 or step == cfg.max_steps:
                    rate = seen / (time.perf_counter() - clock)
                    self._log("train", step=step, loss=loss.item(), lr=self.scheduler.get_last_lr()[0],
                              samples_per_s=rate, skipped_steps=self.state["skipped_steps"],
                              skipped_samples=self._skipped_samples(), **self._memory())
                    bar.set_postfix(loss=f"{loss.item():.4f}", lr=f"{self.scheduler.get_last_lr()[0]:.2g}",
                                    samples_s=f"{rate:.1f}")
                    seen, clock = 0, time.perf_counter()
                # the checkpoint first: a validation that fails loses no step
                if step % cfg.ckpt_every == 0:
                    self._new_segment()  # what a resumed run reads from here
                    saved = self.save()
                    batches = self._batches()
                elif step == cfg.max_steps:
                    saved = self.save()  # the stream goes on: extending the run continues it
                if step % cfg.val_every == 0 or step == cfg.max_steps:
                    self._validate()
            if stop:
                self._stopped(saved)

    def _stopped(self, saved: Path | None) -> None:
        """A signal arrived: every process checkpoints this step (unless just done) and stops."""
        step = self.state["step"]
        if saved is None or saved.name != f"step_{step:07d}":
            saved = self.save()
        raise Interrupted(f"stopped by {self.stop.signal or 'a signal to another process'} at step {step}; "
                          f"checkpoint {saved} written: run the same command to resume")

    def _step(self, batches) -> tuple[torch.Tensor | None, bool]:
        """One optimizer step over grad_accum micro-batches: the loss, None (and no update) if it
        is not finite; and whether any process was asked to stop."""
        cfg = self.cfg.train
        laplace = self.state["step"] >= cfg.l1_warmup_steps
        total = torch.zeros((), device=self.acc.device)
        for micro in range(cfg.grad_accum):
            lr, hr, sm = (t.to(self.acc.device, non_blocking=True) for t in self._next(batches))
            lr, hr = normalise(lr), normalise(hr)  # the data is in DN; the network and its loss are not
            sync = micro == cfg.grad_accum - 1
            with nullcontext() if sync else self.acc.no_sync(self.model):
                mu, s = self.model(lr)
                if laplace:
                    loss = registered_laplace(hr, mu.float(), s.float(), sm, cfg.legacy_sigma_bias, cfg.compile_loss)
                else:
                    # the uncertainty branch idles in the L1 warm-up; a zero-weighted term keeps it
                    # in the graph so DDP gets a (zero) gradient for every parameter on every rank
                    loss = registered_l1(hr, mu.float(), sm, cfg.compile_loss) + 0.0 * s.float().mean()
                self.acc.backward(loss / cfg.grad_accum)
            total += loss.detach() / cfg.grad_accum
        # every rank takes the same decisions, or DDP's next all-reduce would mix states; reading
        # them is the step's one host synchronisation, the price of skipping a bad update exactly
        # (Adam's moments, the schedule and the step count untouched) and of stopping together
        stop = total.new_full((), float(bool(self.stop and self.stop.signal)))  # a fill, no copy from the host
        summed = self.acc.reduce(torch.stack([torch.isfinite(total).float(), total.nan_to_num(), stop]), "sum")
        finite = bool(summed[0].item() == self.acc.num_processes)
        if finite:
            self.acc.clip_grad_norm_(self.model.parameters(), cfg.grad_clip)
            self.optimizer.step()
            self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        return (summed[1] / self.acc.num_processes if finite else None), bool(summed[2].item())

    def _next(self, batches) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The next micro-batch of the stream, counted (a resumed run draws as many again)."""
        lr, hr, sm, skipped = next(batches)
        self.state["segment_batches"] += 1
        worker, count = skipped[-1].tolist()
        self.skipped_by_worker[worker] = count
        return lr, hr, sm

    def _skipped_samples(self) -> int:
        """Corrupt training samples skipped since the run began, over all processes."""
        mine = torch.tensor(float(self.skipped_before + sum(self.skipped_by_worker.values())), device=self.acc.device)
        return int(self.acc.reduce(mine, "sum").item())

    def _new_segment(self) -> None:
        self.skipped_before += sum(self.skipped_by_worker.values())
        self.skipped_by_worker = {}
        self.state["segment"], self.state["segment_batches"] = self.state["step"], 0

    def _batches(self):
        """The stream of the current segment, past the batches this segment already gave."""
        stream = TrainPatches(self.train_shards, PatchSettings.from_config(self.cfg.data), seed=self.cfg.train.seed,
                              rank=self.acc.process_index, segment=self.state["segment"])
        loader = DataLoader(stream, batch_size=self.micro_batch, num_workers=self.cfg.data.workers,
                            pin_memory=self.acc.device.type == "cuda", worker_init_fn=ignore_interrupts_in_worker)
        batches = iter(loader)
        drawn, self.state["segment_batches"] = self.state["segment_batches"], 0
        for _ in range(drawn):
            self._next(batches)
        # skips counted again while drawing are in the saved total already
        self.skipped_before -= sum(self.skipped_by_worker.values())
        return batches

    # --- validation -----------------------------------------------------------------

    @torch.no_grad()
    def _validate(self) -> None:
        cfg = self.cfg
        # the bare module: ranks hold different scene counts, and DDP's forward may talk to the others
        model = self.acc.unwrap_model(self.model).eval()
        scenes = EvalScenes(self.val_shards, cfg.data.n_frames, register=cfg.data.register,
                            rank=self.acc.process_index, world_size=self.acc.num_processes,
                            seed=cfg.train.seed, min_clearance=cfg.data.min_clearance)
        batch_size = scenes_per_batch(cfg.train.val_batch_size, "train.val_batch_size", self.acc.device,
                                      cfg.data.n_frames, LR_SIZE, cfg.model.n_feat)
        loader = DataLoader(scenes, batch_size=batch_size, num_workers=min(2, cfg.data.workers))
        metrics = [m.to(self.acc.device) for m in (CPSNR(), CSSIM(), UncertaintyCalibration())]
        # eagerly: compiled blocks would compile again for whole scenes in eval mode
        with torch.compiler.set_stance("force_eager"):
            for batch in loader:
                sr, scale = predict(model, batch["lr"].to(self.acc.device))
                hr, sm = batch["hr"][:, None].to(self.acc.device), batch["sm"][:, None].to(self.acc.device)
                metrics[0].update(sr, hr, sm)
                if cfg.train.val_cssim:
                    metrics[1].update(sr, hr, sm)
                metrics[2].update(sr, scale, hr, sm)
        with warnings.catch_warnings():  # a rank with no val scene adds zeros to the sums: that is right
            warnings.filterwarnings("ignore", message=".*was called before the ``update`` method")
            cpsnr = metrics[0].compute().item()
            cssim = metrics[1].compute().item() if cfg.train.val_cssim else None
            nll = metrics[2].compute()["nll"].item()
        # compute() hands back each rank its own states once it has the global value
        scenes = int(self.acc.reduce(metrics[0].count.clone(), "sum").item())
        model.train()
        step = self.state["step"]
        self._log("val", step=step, val_cpsnr=cpsnr, val_cssim=cssim, val_nll=nll, val_scenes=scenes)
        if cpsnr > self.state["best_val_cpsnr"]:
            self.state["best_val_cpsnr"] = cpsnr
            checkpoint.save_best(self.acc, self.model, self.run_dir,
                                 {"step": step, "val_cpsnr": cpsnr, "val_cssim": cssim, "val_nll": nll,
                                  "version": VERSION, "time": utc_now()})

    # --- state and logs -------------------------------------------------------------

    def _start(self) -> None:
        cfg = self.cfg
        metrics = self.run_dir.metrics
        if self.acc.is_main_process:
            write_text(self.run_dir.config, to_yaml(cfg))
            cut = repair_lines(metrics)
            if cut:
                print(f"{metrics}: removed a torn last line ({cut} bytes) that a killed run left", file=sys.stderr)
        self.acc.wait_for_everyone()
        newest = self.resume_from
        if newest is not None:
            self.state = {"segment": None, "segment_batches": 0, "skipped_samples": 0, **checkpoint.load(self.acc, newest)}
            if self.state["segment"] is None:  # written before segments were recorded: one began at its step
                self.state["segment"] = self.state["step"]
            if self.acc.is_main_process:
                self.skipped_before = self.state["skipped_samples"]
                print(f"{self.run_dir}: resuming from {newest} (step {self.state['step']} of {cfg.train.max_steps}"
                      + (f"; drawing the {self.state['segment_batches']} batches it had read since step "
                         f"{self.state['segment']} again" if self.state["segment_batches"] else "") + ")",
                      file=sys.stderr, flush=True)
            # a validation runs after the checkpoint of its step, so best/ may know a better score
            best = checkpoint.best_state(self.run_dir)
            if best and best["step"] <= self.state["step"]:
                self.state["best_val_cpsnr"] = max(self.state["best_val_cpsnr"], best["val_cpsnr"])
        self.acc.init_trackers("tensorboard")
        self._log("start", step=self.state["step"], world_size=self.acc.num_processes,
                  precision=cfg.train.precision, config_hash=config_hash(cfg),
                  resumed_from=None if newest is None else newest.name)

    def save(self) -> Path:
        self.state["skipped_samples"] = self._skipped_samples()
        self.state["version"], self.state["time"] = VERSION, utc_now()
        return checkpoint.save(self.acc, self.run_dir, self.state["step"], self.state, self.cfg.train.keep_last)

    def _memory(self) -> dict:
        if self.acc.device.type != "cuda":
            return {}
        return {"peak_mem_mb": torch.cuda.max_memory_allocated(self.acc.device) / 2**20}

    def _log(self, event: str, **fields) -> None:
        if not self.acc.is_main_process:
            return
        append_record(self.run_dir.metrics, {"event": event, **fields})
        numbers = {f"{event}/{k}": v for k, v in fields.items() if isinstance(v, (int, float)) and k != "step"}
        if numbers and event != "start":
            self.acc.log(numbers, step=fields["step"])


def _check_run_dir(cfg: Config) -> Path | None:
    """The checkpoint to resume from, or None for a new run; a run_dir that holds another
    run, or this one under other defining settings, is refused before anything is written."""
    run_dir = Path(cfg.run_dir)
    newest = checkpoint.latest(run_dir)
    used = newest is not None or checkpoint.best_dir(run_dir) is not None
    if not cfg.train.resume:
        if used:
            raise UserError(f"{run_dir}: holds a run already (checkpoints or best/); train.resume=false starts a "
                            "new run only in an unused run_dir: choose another run_dir, or move this one aside")
        return None
    if used and RunDir(run_dir).config.is_file():
        try:
            previous = load_config(RunDir(run_dir).config)
        except UserError as e:
            raise UserError(f"cannot resume: {e}") from None
        changed = run_differences(previous, cfg)
        if changed:
            raise UserError(f"{run_dir}: resuming with settings that define another run ({'; '.join(changed)}); "
                            "give the run's own, or choose another run_dir")
    return newest


def _process_group_kwargs(on_gpu: bool) -> list:
    """Where a node runs more GPU processes than it has GPUs, they share them: over gloo (NCCL
    refuses two ranks on one device), and with LOCAL_RANK taken modulo the GPU count, since
    Accelerate addresses a process's GPU by its local rank (its barriers too). Elsewhere
    Accelerate's choice: NCCL on GPUs, gloo on CPUs."""
    local, gpus = int(os.environ.get("LOCAL_WORLD_SIZE", "1")), torch.cuda.device_count()
    if not on_gpu or local <= gpus:
        return []
    os.environ["LOCAL_RANK"] = str(int(os.environ.get("LOCAL_RANK", "0")) % gpus)
    return [InitProcessGroupKwargs(backend="gloo")]


def _check_process_group_env() -> None:
    """Several processes must each know their rank and where the group meets."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return
    missing = [v for v in ("RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT") if v not in os.environ]
    if missing:
        raise UserError(f"WORLD_SIZE={os.environ['WORLD_SIZE']} but {', '.join(missing)} not set: start with "
                        "accelerate launch, torchrun or srun (python -m piunet_dist.launch does it for SLURM)")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.epilog = settings_help()
    parser.add_argument("--config", type=Path, help="YAML file of settings (configs/base.yaml is the paper's recipe)")
    parser.add_argument("overrides", nargs="*", metavar="section.key=value", help="settings that override the file")


def run(args: argparse.Namespace) -> int:
    cfg = load_config(args.config, args.overrides)
    trainer = Trainer(cfg)
    state = trainer.train()
    if trainer.acc.is_main_process:
        print(f"{cfg.run_dir}: trained to step {state['step']}, best val cPSNR {state['best_val_cpsnr']:.3f} dB")
    return 0
