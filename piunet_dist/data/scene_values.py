"""What the values of a tree's scenes hold beyond the sensor's nominal 14 bits, for
`synth --describe`: the shares of scenes and frames with bright values above 16,383 DN and
with 65,520 (no data), how the quality maps mark them, and whether a frame with no data is
among those a scene is read with (docs/method.md section 5). Real frames and synthetic ones
are counted alike, so the two can be set side by side.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..core.config import DataConfig
from .probav import NO_DATA, NOMINAL_DN, Scene, select_frames

READ_WITH = DataConfig()  # the frames a scene is read with: data.n_frames and data.min_clearance


@dataclass
class SceneValues:
    frames: int
    frames_without_qm: int
    frames_bright: int  # frames with values above NOMINAL_DN other than NO_DATA
    bright: int  # such pixels
    bright_clear: int  # of them, marked clear by the quality map
    top: int  # the largest value other than NO_DATA
    frames_no_data: int
    no_data_most: int  # the most NO_DATA pixels in one frame
    no_data_clear: int  # NO_DATA pixels marked clear
    no_data_read: bool  # a frame with NO_DATA is among the frames the scene is read with
    hr_top: int | None


def scene_values(scene: Scene) -> SceneValues:
    no_data = scene.lr == NO_DATA
    bright = (scene.lr > NOMINAL_DN) & ~no_data
    per_frame = no_data.reshape(len(no_data), -1).sum(axis=1)
    chosen = select_frames(
        scene.clearance,
        READ_WITH.n_frames,
        "paper",
        np.random.default_rng(0),
        keep_unclear=True,
        min_clearance=READ_WITH.min_clearance,
    )
    return SceneValues(
        frames=len(scene.lr),
        frames_without_qm=len(scene.lr) - (scene.masked_frames if scene.masked_frames is not None else len(scene.lr)),
        frames_bright=int(bright.any(axis=(1, 2)).sum()),
        bright=int(bright.sum()),
        bright_clear=int((bright & scene.qm).sum()),
        top=int(scene.lr[~no_data].max(initial=0)),
        frames_no_data=int((per_frame > 0).sum()),
        no_data_most=int(per_frame.max()),
        no_data_clear=int((no_data & scene.qm).sum()),
        no_data_read=bool((per_frame[np.unique(chosen)] > 0).any()),
        hr_top=None if scene.hr is None else int(scene.hr.max()),
    )


def values_lines(band: str, found: list[SceneValues]) -> list[str]:
    """What a band's scenes hold, a line each, as shares of scenes, frames and pixels."""
    n, frames = len(found), sum(v.frames for v in found)
    bright, no_data = [v for v in found if v.frames_bright], [v for v in found if v.frames_no_data]
    pixels = sum(v.bright for v in found)
    hr_tops = [v.hr_top for v in found if v.hr_top is not None]
    lines = [
        f"{band}: the values of {n} scenes ({frames} frames)",
        f"  above {NOMINAL_DN:,} DN (bright clouds): {len(bright)} of {n} scenes, "
        f"{sum(v.frames_bright for v in found)} of {frames} frames, up to {max(v.top for v in found):,} DN; "
        f"{sum(v.bright_clear for v in found)} of {pixels:,} such pixels marked clear",
        f"  {NO_DATA:,} (no data): {len(no_data)} of {n} scenes, {sum(v.frames_no_data for v in found)} frames, "
        f"up to {max(v.no_data_most for v in found):,} pixels of a frame; "
        f"{sum(v.no_data_clear for v in found)} marked clear; in {sum(v.no_data_read for v in found)} scenes "
        f"a frame with no data is among the {READ_WITH.n_frames} it is read with",
    ]
    if hr_tops:
        lines.append(f"  HR: up to {max(hr_tops):,} DN in {len(hr_tops)} scenes")
    missing = sum(v.frames_without_qm for v in found)
    if missing:
        lines.append(f"  {missing} frames without a quality map, taken as all clear")
    return lines
