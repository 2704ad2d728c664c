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
    stepped by the step itself, once per optimizer step, so it is not handed to prepare()."""
    optimizer = torch.optim.Adam(
        model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay, fused=acc.device.type == "cuda"
    )
    scheduler = torch.optim.lr_scheduler.MultiStepLR(optimizer, cfg.lr_milestones, cfg.lr_gamma)
    model, optimizer = acc.prepare(model, optimizer)
    return TrainStep(model, optimizer, scheduler, acc, cfg)


@dataclass
class TrainStep:
    """forward and backward over train.grad_accum micro-batches, then one decision all processes
    agree on: a non-finite loss (on any of them) skips the update, leaving Adam's moments and
    the schedule untouched; otherwise clip, step the optimizer and the schedule."""

    model: torch.nn.Module  # as Accelerate prepared it (DDP, autocast)
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    acc: Accelerator
    cfg: TrainConfig

    def __call__(
        self, next_batch: Callable[[], tuple], laplace: bool, stop_requested: bool = False
    ) -> tuple[torch.Tensor | None, bool]:
        """The step's mean loss (None where it was not finite and nothing was updated), and
        whether any process was asked to stop."""
        cfg, acc = self.cfg, self.acc
        total = torch.zeros((), device=acc.device)
        for micro in range(cfg.grad_accum):
            lr, hr, sm = (t.to(acc.device, non_blocking=True) for t in next_batch())
            with nullcontext() if micro == cfg.grad_accum - 1 else acc.no_sync(self.model):
                loss = self.loss(normalise(lr), normalise(hr), sm, laplace)
                acc.backward(loss / cfg.grad_accum)
            total += loss.detach() / cfg.grad_accum
        # every rank takes the same decisions, or DDP's next all-reduce would mix states; reading
        # them is the step's one host synchronisation, the price of skipping a bad update exactly
        # and of stopping together
        stop = total.new_full((), float(stop_requested))  # a fill, no copy from the host
        summed = acc.reduce(torch.stack([torch.isfinite(total).float(), total.nan_to_num(), stop]), "sum")
        finite = bool(summed[0].item() == acc.num_processes)
        if finite:
            acc.clip_grad_norm_(self.model.parameters(), cfg.grad_clip)
            self.optimizer.step()
            self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        return (summed[1] / acc.num_processes if finite else None), bool(summed[2].item())

    def loss(self, lr: torch.Tensor, hr: torch.Tensor, sm: torch.Tensor, laplace: bool) -> torch.Tensor:
        cfg = self.cfg
        mu, s = self.model(lr)
        if laplace:
            return registered_laplace(hr, mu.float(), s.float(), sm, cfg.legacy_sigma_bias, cfg.compile_loss)
        # the uncertainty branch idles in the L1 warm-up; a zero-weighted term keeps it in the
        # graph so DDP gets a (zero) gradient for every parameter on every rank
        return registered_l1(hr, mu.float(), sm, cfg.compile_loss) + 0.0 * s.float().mean()
