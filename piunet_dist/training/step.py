"""One optimizer step of PIUnet, as the trainer takes it and the benchmarks time it.

The micro-batches arrive in DN; the network and its loss work in normalised units
(docs/method.md section 2). The registered L1 loss warms the network up, then the registered
Laplace loss trains the image and its uncertainty (section 3).
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass

import torch
from accelerate import Accelerator

from ..core.config import TrainConfig
from ..network.losses import registered_l1, registered_laplace
from ..network.model import normalise


def prepare_step(model: torch.nn.Module, cfg: TrainConfig, acc: Accelerator) -> TrainStep:
    """The step that trains `model`: Adam and its step-wise schedule, as the recipe says, the
    model and optimizer prepared by Accelerate (DDP, mixed precision). The schedule is
    stepped by the step itself, once per optimizer step, so it is not handed to prepare().
    Adam's fused kernel (on GPUs and CPUs alike) can skip an update on the device."""
    optimizer = torch.optim.Adam(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay, fused=True)
    scheduler = torch.optim.lr_scheduler.MultiStepLR(optimizer, cfg.lr_milestones, cfg.lr_gamma)
    model, optimizer = acc.prepare(model, optimizer)
    return TrainStep(model, optimizer, scheduler, acc, cfg)


@dataclass
class TrainStep:
    """forward and backward over train.grad_accum micro-batches, then one decision all processes
    agree on: a non-finite loss (on any of them) skips the update, leaving Adam's moments and
    the schedule untouched; otherwise clip, step the optimizer and the schedule.

    In three parts, so that the host need not wait for the device: compute() and apply()
    only queue work (the skip is decided on the device: Adam's fused step takes it as
    found_inf), outcome() is the step's one host read, and steps the schedule. Taken one
    after the other they are one step; the trainer may compute the next step before it reads
    this one's outcome, and apply it after."""

    model: torch.nn.Module  # as Accelerate prepared it (DDP, autocast)
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    acc: Accelerator
    cfg: TrainConfig

    def __call__(
        self, next_batch: Callable[[], tuple], laplace: bool, stop_requested: bool = False
    ) -> tuple[float | None, bool]:
        """One whole step: its mean loss (None where it was not finite and nothing was
        updated), and whether any process was asked to stop."""
        flags = self.compute(next_batch, laplace, stop_requested)
        self.apply(flags)
        return self.outcome(flags)

    def compute(self, next_batch: Callable[[], tuple], laplace: bool, stop_requested: bool = False) -> torch.Tensor:
        """The gradients of the next micro-batches, and the step's flags summed over every
        process: [processes whose loss was finite, their losses, processes asked to stop]."""
        cfg, acc = self.cfg, self.acc
        total = torch.zeros((), device=acc.device)
        for micro in range(cfg.grad_accum):
            lr, hr, sm = (t.to(acc.device, non_blocking=True) for t in next_batch())
            with nullcontext() if micro == cfg.grad_accum - 1 else acc.no_sync(self.model):
                loss = self.loss(normalise(lr), normalise(hr), sm, laplace)
                acc.backward(loss / cfg.grad_accum)
            total += loss.detach() / cfg.grad_accum
        stop = total.new_full((), float(stop_requested))  # a fill, no copy from the host
        return acc.reduce(torch.stack([torch.isfinite(total).float(), total.nan_to_num(), stop]), "sum")

    def apply(self, flags: torch.Tensor) -> None:
        """Clip and update, unless a loss was not finite: decided on the device, so nothing waits."""
        self.acc.clip_grad_norm_(self.model.parameters(), self.cfg.grad_clip)
        if self.acc.scaler is None:  # under fp16 the gradient scaler decides, on the same gradients
            self.optimizer.optimizer.found_inf = (flags[0] < self.acc.num_processes).float()
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)

    def outcome(self, flags: torch.Tensor) -> tuple[float | None, bool]:
        """The host read of an applied step: its mean loss (None where it was skipped), and
        whether any process was asked to stop; a step taken steps the schedule."""
        finite, total, stop = flags.tolist()
        taken = finite == self.acc.num_processes
        if taken:
            self.scheduler.step()
        return (total / self.acc.num_processes if taken else None), bool(stop)

    def loss(self, lr: torch.Tensor, hr: torch.Tensor, sm: torch.Tensor, laplace: bool) -> torch.Tensor:
        cfg = self.cfg
        mu, s = self.model(lr)
        if laplace:
            return registered_laplace(hr, mu.float(), s.float(), sm, cfg.legacy_sigma_bias, cfg.compile_loss)
        # the uncertainty branch idles in the L1 warm-up; a zero-weighted term keeps it in the
        # graph so DDP gets a (zero) gradient for every parameter on every rank
        return registered_l1(hr, mu.float(), sm, cfg.compile_loss) + 0.0 * s.float().mean()
