"""Streaming pipelines over the shards.

TrainPatches: endless. Every (rank, worker) draws shards with replacement from its own
generator, seeded by (seed, segment, rank, worker), so no rank starves, every rank
yields as many batches as the trainer asks for, and the stream is a pure function of
those four numbers: the trainer restarts it with a new segment to resume exactly.

EvalScenes: whole scenes, each exactly once across all ranks and workers: shard j goes
to global worker j mod (world size x workers), read in manifest order.
"""

from __future__ import annotations

import logging
import warnings
import zlib
from dataclasses import dataclass

import numpy as np
import torch
from torch.utils.data import IterableDataset, get_worker_info

from ..core.config import DataConfig
from ..core.errors import UserError
from ..network.baselines import challenge_baseline
from .probav import NO_DATA, Scene, select_frames
from .registration import register_frames
from .shards import decode_sample, read_samples

log = logging.getLogger(__name__)


class CorruptData(UserError):
    """A shard or sample that cannot be read."""


def _worker() -> tuple[int, int]:
    info = get_worker_info()
    return (0, 1) if info is None else (info.id, info.num_workers)


@dataclass
class Tally:
    """What one reader (a rank's loader worker) has read and skipped as corrupt."""

    read: int = 0
    skipped: int = 0


MIN_JUDGED = 20  # samples read before the skipped share is judged


def _scenes(url: str, skip_corrupt: bool, tally: Tally, max_skipped_share: float = 0.0):
    """(Scene, meta) of every sample of one shard; corrupt data raises or, if allowed, is
    skipped, up to max_skipped_share of all that this reader has read."""

    def corrupt(what: str):
        if not skip_corrupt:
            raise CorruptData(f"{url}: {what}")
        tally.skipped += 1
        seen = tally.read + tally.skipped
        if seen >= MIN_JUDGED and tally.skipped > max_skipped_share * seen:
            raise CorruptData(
                f"data.skip_corrupt: {tally.skipped} of {seen} training samples read were corrupt, "
                f"over data.max_skipped_share={max_skipped_share}; the last: {url}: {what}"
            )
        if tally.skipped <= 10 or tally.skipped % 1000 == 0:
            log.warning("skipped corrupt data (%d so far in this worker): %s: %s", tally.skipped, url, what)

    samples = iter(read_samples(url))
    while True:
        try:
            sample = next(samples)
        except StopIteration:
            return
        except Exception as e:  # a truncated or damaged tar fails in many ways inside tarfile
            corrupt(f"unreadable tar ({type(e).__name__}: {e})")
            return
        try:
            decoded = decode_sample(sample)
        except ValueError as e:
            corrupt(str(e))
            continue
        tally.read += 1
        yield decoded


def prepare_frames(
    scene: Scene, data: DataConfig, rng: np.random.Generator, keep_unclear: bool = False, policy: str = "paper"
) -> tuple[np.ndarray, np.ndarray] | None:
    """The frames (T,X,Y) float32 DN the network sees of a scene and their masks, as the data
    section reads them (data.n_frames, data.min_clearance, data.no_data, data.register), or
    None for a scene with no clear frame. The scene itself is left as it is."""
    chosen = select_frames(scene.clearance, data.n_frames, policy, rng, keep_unclear, data.min_clearance)
    if chosen is None:
        return None
    lr, qm = scene.lr[chosen].astype(np.float32), scene.qm[chosen]
    if data.no_data == "fill":
        lr = fill_no_data(lr, qm)
    if data.register:
        reference = int(np.argmax(scene.clearance[chosen]))
        lr, qm, _ = register_frames(lr, qm, reference)
    return lr, qm


def fill_no_data(lr: np.ndarray, qm: np.ndarray) -> np.ndarray:
    """Frames whose NO_DATA pixels hold what the other frames saw there instead: the median
    of the frames clear there, else the median of the frame's own clear pixels. A network
    fed 65,520 among values near 7,000 loses up to 13 dB (docs/method.md section 5)."""
    hole = lr == NO_DATA
    if not hole.any():
        return lr
    seen = np.where(qm & ~hole, lr, np.nan)
    with warnings.catch_warnings():  # a pixel no frame saw clear is all-nan: filled below
        warnings.simplefilter("ignore", RuntimeWarning)
        across = np.nanmedian(seen, axis=0)
    out = lr.copy()
    for frame, gap, clear in zip(out, hole, qm & ~hole):
        if gap.any():
            own = np.median(frame[clear]) if clear.any() else np.median(frame[~gap]) if (~gap).any() else 0.0
            frame[gap] = np.where(np.isnan(across[gap]), own, across[gap])
    return out


class TrainPatches(IterableDataset):
    """Endless (lr (T,P,P), hr (1,3P,3P), sm (1,3P,3P), skipped) patches in DN, shuffled, cut
    as the data section says (frames, patch size, augmentation, shuffle buffer, corrupt
    samples); skipped is (worker, corrupt samples it skipped so far), for the trainer's count."""

    def __init__(self, shards: list[str], settings: DataConfig, seed: int, rank: int, segment: int = 0):
        super().__init__()
        if not shards:
            raise UserError("no training shards")
        self.shards, self.settings = shards, settings
        self.seed, self.rank, self.segment = seed, rank, segment

    def __iter__(self):
        wid, _ = _worker()
        rng = np.random.default_rng([self.seed, self.segment, self.rank, wid])
        buffer = []
        size = max(1, self.settings.shuffle_buffer)
        tally = Tally()
        for scene in self._scene_stream(rng, tally):
            for patch in self._patches(scene, rng):
                if len(buffer) < size:
                    buffer.append(patch)
                    continue
                i = rng.integers(size)
                yield *buffer[i], np.array([wid, tally.skipped])
                buffer[i] = patch

    def _scene_stream(self, rng: np.random.Generator, tally: Tally):
        s = self.settings
        while True:
            url = self.shards[rng.integers(len(self.shards))]
            for scene, _ in _scenes(url, s.skip_corrupt, tally, s.max_skipped_share):
                yield scene

    def _patches(self, scene: Scene, rng: np.random.Generator):
        s = self.settings
        if scene.hr is None:
            raise UserError(f"scene {scene.name} has no HR: test shards cannot train")
        frames = prepare_frames(scene, s, rng, policy=s.policy)
        if frames is None:
            return
        lr, _ = frames
        side = lr.shape[-1]
        kept = 0
        for _ in range(4 * s.patches_per_scene):
            if kept == s.patches_per_scene:
                break
            x, y = rng.integers(0, side - s.patch + 1, 2)
            sm = scene.sm[3 * x : 3 * (x + s.patch), 3 * y : 3 * (y + s.patch)]
            if sm.mean() <= s.min_clear:
                continue
            kept += 1
            arrays = [
                lr[:, x : x + s.patch, y : y + s.patch],
                scene.hr[None, 3 * x : 3 * (x + s.patch), 3 * y : 3 * (y + s.patch)],
                sm[None],
            ]
            if s.augment:
                k, flip = int(rng.integers(4)), bool(rng.integers(2))
                arrays = [np.rot90(a, k, axes=(1, 2)) for a in arrays]
                if flip:
                    arrays = [a[:, :, ::-1] for a in arrays]
            lr_p, hr_p, sm_p = arrays
            yield (
                np.ascontiguousarray(lr_p, dtype=np.float32),
                np.ascontiguousarray(hr_p, dtype=np.float32),
                np.ascontiguousarray(sm_p),
            )


class EvalScenes(IterableDataset):
    """Every scene once: a dict with lr (T,X,Y) DN, hr, sm, baseline (DN), name, band, norm;
    the frames read as the data section says (prepare_frames)."""

    def __init__(
        self,
        shards: list[str],
        data: DataConfig | None = None,
        keep_unclear: bool = False,
        rank: int = 0,
        world_size: int = 1,
        seed: int = 0,
    ):
        super().__init__()
        self.shards, self.data, self.keep_unclear = shards, data or DataConfig(), keep_unclear
        self.rank, self.world_size, self.seed = rank, world_size, seed

    def __iter__(self):
        wid, workers = _worker()
        me, everyone = self.rank * workers + wid, self.world_size * workers
        for url in self.shards[me::everyone]:
            for scene, _ in _scenes(url, skip_corrupt=False, tally=Tally()):
                # topping up with repeated frames is random: seeded by the scene, not the reader
                rng = np.random.default_rng([self.seed, zlib.crc32(scene.name.encode())])
                frames = prepare_frames(scene, self.data, rng, self.keep_unclear)
                if frames is None:
                    log.info(
                        "%s: no frame is %.0f%% clear; left out as in the paper",
                        scene.name,
                        100 * self.data.min_clearance,
                    )
                    continue
                has_target = scene.hr is not None
                size = 3 * scene.lr.shape[-1]
                yield {
                    "name": scene.name,
                    "band": scene.band,
                    "norm": float("nan") if scene.norm is None else scene.norm,
                    "lr": torch.from_numpy(frames[0]),
                    "hr": torch.from_numpy(scene.hr.astype(np.float32)) if has_target else torch.zeros(size, size),
                    "sm": torch.from_numpy(scene.sm) if has_target else torch.zeros(size, size, dtype=torch.bool),
                    "has_target": has_target,
                    "baseline": challenge_baseline(scene.lr, scene.qm),
                }
