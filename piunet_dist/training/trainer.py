"""The trainer: one loop on Accelerate (DDP over processes and nodes, mixed precision).

    python -m piunet_dist train --config configs/nir.yaml [section.key=value ...]
    accelerate launch --multi_gpu --num_processes 2 train.py --config ...

A checkpoint holds Accelerate's state, the TrainerState and the position of the data stream
(stream.py), so a resumed run reads the same batches as one that never stopped (with the
same ckpt_every and workers); on another number of processes its stream restarts a segment
at the checkpoint's step. train.init_weights starts a new run from other weights
(fine-tuning); a resumed run always continues from its own checkpoint.

Ctrl-C or SIGTERM: the step under way finishes, every process writes the checkpoint, and
the run stops with one line; the same command resumes it.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import math
import os
import sys
import time
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import torch
from accelerate import Accelerator
from accelerate.utils import InitProcessGroupKwargs, broadcast_object_list, set_seed
from tqdm import tqdm

from ..core import checkpoint, tracking
from ..core.config import Config, config_hash, flat, to_yaml
from ..core.config_flags import settings_help
from ..core.config_load import check_world, load_config
from ..core.errors import UserError
from ..core.files import append_record, repair_lines, utc_now, write_text
from ..core.memory import keep_freed_memory
from ..core.run_dir import RunDir
from ..core.stop import Interrupted, StopRequest
from ..core.version import VERSION
from ..data.shards import band_digest, shard_paths
from ..evaluation.inference import resolve_precision
from ..network.attention import resolve
from .starting import check_run_dir, check_same_shards, initial_model
from .step import prepare_step
from .stream import StreamPosition, TrainStream
from .validation import validate


@dataclass
class TrainerState:
    """What a checkpoint's trainer_state.json holds besides the stream's position."""

    step: int = 0
    best_val_cpsnr: float = -math.inf
    skipped_steps: int = 0  # steps whose loss was not finite: nothing was updated
    skipped_samples: int = 0  # corrupt training samples skipped, over all processes
    seed: int = 0

    @classmethod
    def from_saved(cls, saved: dict) -> TrainerState:
        return cls(**{f.name: saved[f.name] for f in fields(cls) if f.name in saved})


class Trainer:
    def __init__(self, cfg: Config, stop_on_signals: bool = True):
        self.cfg = cfg
        self.run_dir = RunDir(cfg.run_dir)
        self.resume_from = check_run_dir(cfg)  # before anything is written
        log_with = tracking.resolve(cfg.train.log_with)
        # under submitit, SLURM's signals are its own: it requeues the job
        self.stop = StopRequest() if stop_on_signals else None
        on_gpu = torch.cuda.is_available()
        _check_process_group_env()
        self.precision, self.precision_reason = resolve_precision(
            cfg.train.precision, torch.device("cuda" if on_gpu else "cpu"), "train.precision"
        )
        self.acc = Accelerator(
            cpu=not on_gpu,
            mixed_precision=self.precision,
            log_with=tracking.trackers(
                log_with, self.run_dir.path, cfg.train.tracker_project, tracking.run_tags(cfg), cfg.train.tracker_group
            ),
            project_dir=str(self.run_dir),
            kwargs_handlers=_process_group_kwargs(on_gpu),
        )
        expected = int(os.environ.get("WORLD_SIZE", "1"))
        if self.acc.num_processes != expected:
            raise UserError(
                f"WORLD_SIZE={expected} but Accelerate sees {self.acc.num_processes} process(es): "
                "start with accelerate launch, torchrun or srun so that all join one group"
            )
        micro_batch = check_world(cfg, self.acc.num_processes)
        resolve(cfg.model.attention, self.acc.device)  # refused here, not at the first step
        train_shards, self.val_shards, self.shards_sha256 = self._shards()
        if self.resume_from is not None:
            check_same_shards(cfg, self.resume_from, self.shards_sha256)

        set_seed(cfg.train.seed)  # the same initial weights on every rank
        model = initial_model(cfg, resuming=self.resume_from is not None)
        if self._use_sync_bn(on_gpu):
            model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
        if cfg.train.compile_model:
            model.compile_blocks()
        set_seed(cfg.train.seed + self.acc.process_index)
        self.step = prepare_step(model, cfg.train, self.acc)
        self.pipelined = on_gpu if cfg.train.pipeline == "auto" else cfg.train.pipeline == "on"
        self.model, self.scheduler = self.step.model, self.step.scheduler
        self.acc.register_for_checkpointing(self.scheduler)
        self.state = TrainerState(seed=cfg.train.seed)
        self.stream = TrainStream(
            train_shards,
            cfg.data,
            cfg.train.seed,
            self.acc.process_index,
            micro_batch,
            pin_memory=on_gpu,
            position=StreamPosition(world_size=self.acc.num_processes),
        )

    def _shards(self) -> tuple[list[str], list[str], str]:
        """The shards the run reads, checked before the first step: every one present, and the
        val shards, read whole at each validation, against their sha256 (by the main process,
        its verdict sent to all), so that damage stops the run now, not steps later; and the
        digest of them all, which its checkpoints keep."""
        root, band = Path(self.cfg.data.shards), self.cfg.data.band
        found = [None]
        if self.acc.is_main_process:
            try:
                train, val = shard_paths(root, band, "train"), shard_paths(root, band, "val", digest=True)
                found = [(train, val, band_digest(root, band))]
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

    def train(self) -> TrainerState:
        if self.stop:  # from here on a signal waits for the end of a step
            self.stop.install()
        try:
            self._start()
            self.stream.start()
            with tqdm(
                total=self.cfg.train.max_steps,
                initial=self.state.step,
                disable=not self.acc.is_main_process,
                desc="train",
                unit="step",
                dynamic_ncols=True,
            ) as bar:
                self._loop(bar)
        except BaseException:
            for tracker in self.acc.trackers:  # closed, so that the resumed run continues them
                with contextlib.suppress(AttributeError):  # one that failed to start has nothing to close
                    tracker.finish()
            raise
        finally:
            if self.stop:
                self.stop.uninstall()
        self.acc.end_training()
        return self.state

    def _loop(self, bar) -> None:
        cfg, state = self.cfg.train, self.state
        self._bad_in_a_row, self._seen, self._clock, saved = 0, 0, time.perf_counter(), None
        pending, stopping = None, False  # a step applied whose outcome the host has not read
        while pending is not None or (state.step < cfg.max_steps and not stopping):
            if pending is None:
                pending = self._compute(state.step)
                self.step.apply(pending)
            # where nothing waits on this step's outcome, the next one is queued before it is read
            queue_next = self.pipelined and not stopping and self._quiet(state.step + 1)
            ahead = self._compute(state.step + 1) if queue_next else None
            loss, stop = self.step.outcome(pending)
            saved = self._took(loss, bar) or saved
            stopping = stopping or stop
            if ahead is not None:
                self.step.apply(ahead)  # after the outcome: the schedule has stepped
            pending = ahead
        if stopping:
            self._stopped(saved)

    def _compute(self, step: int) -> torch.Tensor:
        """Queue the gradients of the step that follows `step` steps taken."""
        laplace = step >= self.cfg.train.l1_warmup_steps
        return self.step.compute(self.stream.next, laplace, stop_requested=bool(self.stop and self.stop.signal))

    def _quiet(self, step: int) -> bool:
        """Whether taking step `step` asks nothing of the host, so the next may be queued first:
        no log, checkpoint or validation, not the last step, nor the first of the Laplace loss
        (a step skipped for its loss would take its number, and the next would be computed as
        the wrong one)."""
        cfg = self.cfg.train
        cadences = (cfg.log_every, cfg.ckpt_every, cfg.val_every)
        return step < cfg.max_steps and step != cfg.l1_warmup_steps and all(step % every for every in cadences)

    def _took(self, loss: float | None, bar) -> Path | None:
        """What a step's outcome asks: count a skipped step; or count, log, checkpoint (returned)
        and validate a step taken."""
        cfg, state = self.cfg.train, self.state
        if loss is None:
            self._bad_in_a_row += 1
            state.skipped_steps += 1
            if self._bad_in_a_row >= cfg.max_bad_steps:
                raise UserError(
                    f"{self._bad_in_a_row} non-finite losses in a row at step {state.step}: "
                    "lower train.lr, use train.precision=bf16 instead of fp16, or check the data"
                )
            return None
        self._bad_in_a_row = 0
        state.step += 1
        self._seen += cfg.batch_size
        bar.update(1)
        if state.step % cfg.log_every == 0 or state.step == cfg.max_steps:
            self._log_step(loss, self._seen / (time.perf_counter() - self._clock), bar)
            self._seen, self._clock = 0, time.perf_counter()
        saved = None
        # the checkpoint first: a validation that fails loses no step
        if state.step % cfg.ckpt_every == 0:
            self.stream.restart_at(state.step)  # what a run resumed here reads
            saved = self.save()
        elif state.step == cfg.max_steps:
            saved = self.save()  # the stream goes on: extending the run continues it
        if state.step % cfg.val_every == 0 or state.step == cfg.max_steps:
            self._validate()
        return saved

    def _log_step(self, loss: float, rate: float, bar) -> None:
        lr = self.scheduler.get_last_lr()[0]
        self._log(
            "train",
            step=self.state.step,
            loss=loss,
            objective="laplace" if self.state.step > self.cfg.train.l1_warmup_steps else "l1",
            lr=lr,
            samples_per_s=rate,
            skipped_steps=self.state.skipped_steps,
            skipped_samples=self._skipped_samples(),
            **self._memory(),
        )
        bar.set_postfix(loss=f"{loss:.4f}", lr=f"{lr:.2g}", samples_s=f"{rate:.1f}")

    def _stopped(self, saved: Path | None) -> None:
        """A signal arrived: every process checkpoints this step (unless just done) and stops."""
        step = self.state.step
        if saved is None or saved.name != self.run_dir.checkpoint(step).name:
            saved = self.save()
        raise Interrupted(
            f"stopped by {self.stop.signal or 'a signal to another process'} at step {step}; "
            f"checkpoint {saved} written: run the same command to resume"
        )

    def _skipped_samples(self) -> int:
        """Corrupt training samples skipped since the run began, over all processes."""
        mine = torch.tensor(float(self.stream.skipped()), device=self.acc.device)
        return int(self.acc.reduce(mine, "sum").item())

    # --- validation -----------------------------------------------------------------

    def _validate(self) -> None:
        scores = validate(self.model, self.val_shards, self.cfg, self.acc)
        step = self.state.step
        self._log("val", step=step, **{f"val_{k}": v for k, v in asdict(scores).items()})
        if scores.cpsnr > self.state.best_val_cpsnr:
            self.state.best_val_cpsnr = scores.cpsnr
            record = {"step": step, "val_cpsnr": scores.cpsnr, "val_cssim": scores.cssim, "val_nll": scores.nll}
            checkpoint.save_best(self.acc, self.model, self.run_dir, record | {"version": VERSION, "time": utc_now()})

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
        if self.resume_from is not None:
            self._resume(self.resume_from)
        self.acc.init_trackers(cfg.train.tracker_project, config=tracking.config_values(flat(cfg)))
        if self.acc.is_main_process and self.precision_reason:
            print(f"{self.run_dir}: precision {self.precision} ({self.precision_reason})")
        self._log(
            "start",
            step=self.state.step,
            world_size=self.acc.num_processes,
            precision=self.precision,
            precision_reason=self.precision_reason,
            config_hash=config_hash(cfg),
            resumed_from=None if self.resume_from is None else self.resume_from.name,
            slurm_job_id=os.environ.get("SLURM_JOB_ID"),
            init_weights=(cfg.train.init_weights or None) if self.resume_from is None else None,
        )

    def _resume(self, newest: Path) -> None:
        """Everything as the checkpoint left it, on every process; said on screen."""
        saved = checkpoint.load(self.acc, newest)
        self.state = TrainerState.from_saved(saved)
        world = self.acc.num_processes
        position = StreamPosition.from_state_dict(saved, self.state.step, world)
        self.stream.position = position
        # best/ is written after the checkpoint of its step, so it may know a better score
        best = checkpoint.best_state(self.run_dir)
        if best and best["step"] <= self.state.step:
            self.state.best_val_cpsnr = max(self.state.best_val_cpsnr, best["val_cpsnr"])
        if not self.acc.is_main_process:
            return
        self.stream.skipped_before = self.state.skipped_samples  # the count over all processes, kept by one
        again = (
            f"; drawing the {position.drawn} batches it had read since step {position.segment} again"
            if position.drawn
            else ""
        )
        print(
            f"{self.run_dir}: resuming from {newest} (step {self.state.step} of {self.cfg.train.max_steps}{again})",
            file=sys.stderr,
            flush=True,
        )
        written_by = saved.get("world_size", world)
        if written_by != world:
            print(
                f"{self.run_dir}: the process count changed from {written_by} to {world}: the global batch stays "
                f"{self.cfg.train.batch_size}, and the data stream restarts its segment at step {self.state.step}",
                file=sys.stderr,
                flush=True,
            )

    def save(self) -> Path:
        self.state.skipped_samples = self._skipped_samples()
        record = {
            **asdict(self.state),
            **self.stream.position.state_dict(),
            "shards_sha256": self.shards_sha256,
            "version": VERSION,
            "time": utc_now(),
        }
        return checkpoint.save(self.acc, self.run_dir, self.state.step, record, self.cfg.train.keep_last)

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
        raise UserError(
            f"WORLD_SIZE={os.environ['WORLD_SIZE']} but {', '.join(missing)} not set: start with "
            "accelerate launch, torchrun or srun (python -m piunet_dist.launch does it for SLURM)"
        )


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.epilog = settings_help()
    parser.add_argument("--config", type=Path, help="YAML file of settings (configs/base.yaml is the paper's recipe)")
    parser.add_argument("overrides", nargs="*", metavar="section.key=value", help="settings that override the file")


def train_run(cfg: Config, stop_on_signals: bool = True) -> tuple[TrainerState, bool]:
    """Train; the state reached and whether this is the main process. The trainer is freed
    before this returns: DDP's reducer holds the process group after end_training has
    destroyed it, and freed only as the interpreter shuts down, gloo's threads abort a
    finished run ("terminate called without an active exception", SIGABRT)."""
    keep_freed_memory()
    trainer = Trainer(cfg, stop_on_signals=stop_on_signals)
    state, main_process = trainer.train(), trainer.acc.is_main_process
    del trainer
    gc.collect()
    return state, main_process


def run(args: argparse.Namespace) -> int:
    cfg = load_config(args.config, args.overrides)
    state, main_process = train_run(cfg)
    if main_process:
        print(f"{cfg.run_dir}: trained to step {state.step}, best val cPSNR {state.best_val_cpsnr:.3f} dB")
    return 0
