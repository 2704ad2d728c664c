"""The challenge submission: OUT/submission/ and OUT/submission.zip, one 16-bit PNG per test
scene of every band, from the ensemble; written whole, only when no scene of the test shards
is missing, and only when it holds the challenge's 290 test scenes unless eval.partial says
that fewer are meant (a band alone, a synthetic set)."""

from __future__ import annotations

import shutil
import zipfile
from pathlib import Path

from ..core.errors import UserError
from ..core.eval_dir import EvalDir
from ..core.files import replacing
from ..data.shards import scene_names, shard_paths

# the challenge's test scenes (docs/method.md section 5): what Kelvins scores a submission on
CHALLENGE_TEST = {
    "RED": [f"imgset{i:04d}" for i in range(1160, 1306)],
    "NIR": [f"imgset{i:04d}" for i in range(1306, 1450)],
}


def lacking(shards_by_band: dict[str, Path]) -> dict[str, list[str]]:
    """The challenge's test scenes, per band, that these bands' test shards do not hold."""
    held = {name for band, shards in shards_by_band.items() for name in scene_names(shard_paths(shards, band, "test"))}
    return {band: [n for n in names if n not in held] for band, names in CHALLENGE_TEST.items()}


def check_complete(shards_by_band: dict[str, Path], partial: bool) -> None:
    """Refuse, before anything is predicted, a submission that would lack challenge scenes
    without eval.partial."""
    missing = lacking(shards_by_band)
    if any(missing.values()) and not partial:
        counts = " and ".join(f"{len(names)} of the {len(CHALLENGE_TEST[b])} {b}" for b, names in missing.items())
        raise UserError(
            f"--split test: a submission holds the challenge's 290 test scenes; these members' test shards "
            f"lack {counts} (give every band's members, or --partial to write it all the same)"
        )


def write_submission(out: EvalDir, shards_by_band: dict[str, Path]) -> dict:
    """Write the submission; what it holds: its path, its scenes and the challenge's it lacks per band."""
    expected, missing = [], []
    for band, shards in shards_by_band.items():
        for name in scene_names(shard_paths(shards, band, "test")):
            expected.append((band, name))
            if not (out.ensemble(band) / f"{name}.png").is_file():
                missing.append(f"{band}/{name}")
    if missing:
        raise UserError(
            f"{out}: {len(missing)} test scene(s) have no prediction ({', '.join(missing[:5])}); no submission written"
        )
    with replacing(out.submission) as partial:
        partial.mkdir()
        for band, name in expected:
            shutil.copyfile(out.ensemble(band) / f"{name}.png", partial / f"{name}.png")
    with replacing(out.submission_zip) as partial, zipfile.ZipFile(partial, "w", zipfile.ZIP_DEFLATED) as z:
        for _, name in sorted(expected, key=lambda e: e[1]):
            z.write(out.submission / f"{name}.png", f"{name}.png")
    gaps = lacking(shards_by_band)
    return {
        "path": str(out.submission_zip),
        "scenes": len(expected),
        "lacking": {band: len(names) for band, names in gaps.items()},
        "complete": not any(gaps.values()),
    }
