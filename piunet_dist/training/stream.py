"""The training data stream of one process, and its position: what makes a resume exact.

The stream of patches is a pure function of (seed, segment, rank, loader worker)
(data/pipeline.TrainPatches). The trainer restarts it at every multiple of
train.ckpt_every with that step as its segment, so a checkpoint needs to record only the
segment and how many batches were drawn from it: a resumed run draws them again and then
reads what a run that never stopped would have read. A run resumed on another number of
processes cannot draw the same batches (every rank has its own stream); its stream
restarts a segment at the checkpoint's step instead.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from torch.utils.data import DataLoader

from ..core.config import DataConfig
from ..core.stop import ignore_interrupts_in_worker
from ..data.pipeline import TrainPatches


@dataclass
class StreamPosition:
    """Where a run's training stream is. `segment`: the step its stream (re)started at;
    `drawn`: the micro-batches each process has drawn from that segment since; `world_size`:
    the processes that drew them."""

    segment: int = 0
    drawn: int = 0
    world_size: int = 1

    def state_dict(self) -> dict:
        """As trainer_state.json has always held it."""
        return {"segment": self.segment, "segment_batches": self.drawn, "world_size": self.world_size}

    @classmethod
    def from_state_dict(cls, state: dict, step: int, world_size: int) -> StreamPosition:
        """The position a resumed run continues from, on `world_size` processes. A checkpoint
        written before segments were recorded began one at its step; one written by another
        number of processes (or before that was recorded: taken as the same) restarts a
        segment at its step."""
        saved_world = state.get("world_size", world_size)
        if state.get("segment") is None or saved_world != world_size:
            return cls(step, 0, world_size)
        return cls(state["segment"], state.get("segment_batches", 0), world_size)


@dataclass
class TrainStream:
    """This process's micro-batches (lr, hr, sm in DN), counting what it draws and the corrupt
    samples its loader workers skipped."""

    shards: list[str]
    data: DataConfig
    seed: int
    rank: int
    micro_batch: int
    pin_memory: bool
    position: StreamPosition = field(default_factory=StreamPosition)
    skipped_before: int = 0  # corrupt samples this process skipped in the segments before this one
    _skipped_by_worker: dict[int, int] = field(default_factory=dict)
    _batches: object = None

    def start(self) -> None:
        """Open the stream of the current segment and draw again the batches it already gave."""
        loader = DataLoader(
            TrainPatches(self.shards, self.data, seed=self.seed, rank=self.rank, segment=self.position.segment),
            batch_size=self.micro_batch,
            num_workers=self.data.workers,
            pin_memory=self.pin_memory,
            worker_init_fn=ignore_interrupts_in_worker,
        )
        self._batches = iter(loader)
        already, self.position.drawn = self.position.drawn, 0
        for _ in range(already):
            self.next()
        # skips counted again while drawing are in skipped_before already
        self.skipped_before -= sum(self._skipped_by_worker.values())

    def next(self):
        lr, hr, sm, skipped = next(self._batches)
        self.position.drawn += 1
        worker, count = skipped[-1].tolist()
        self._skipped_by_worker[worker] = count
        return lr, hr, sm

    def restart_at(self, step: int) -> None:
        """A new segment from `step` on (what a run resumed at `step` reads)."""
        self.skipped_before = self.skipped()
        self._skipped_by_worker = {}
        self.position = StreamPosition(step, 0, self.position.world_size)
        self.start()

    def skipped(self) -> int:
        """Corrupt samples this process skipped since the run began."""
        return self.skipped_before + sum(self._skipped_by_worker.values())
