"""The challenge submission: OUT/submission/ and OUT/submission.zip, one 16-bit PNG per test
scene of every band, from the ensemble; written whole, and only when no scene is missing."""

from __future__ import annotations

import shutil
import zipfile
from pathlib import Path

from ..core.errors import UserError
from ..core.files import replacing
from ..data.shards import scene_names, shard_paths

ENSEMBLE = "ensemble"  # OUT/<band>/ensemble/: the predictions of eval.ensemble's method


def write_submission(out: Path, shards_by_band: dict[str, Path]) -> Path:
    folder = out / "submission"
    expected, missing = [], []
    for band, shards in shards_by_band.items():
        for name in scene_names(shard_paths(shards, band, "test")):
            expected.append((band, name))
            if not (out / band / ENSEMBLE / f"{name}.png").is_file():
                missing.append(f"{band}/{name}")
    if missing:
        raise UserError(
            f"{out}: {len(missing)} test scene(s) have no prediction ({', '.join(missing[:5])}); no submission written"
        )
    with replacing(folder) as partial:
        partial.mkdir()
        for band, name in expected:
            shutil.copyfile(out / band / ENSEMBLE / f"{name}.png", partial / f"{name}.png")
    with replacing(out / "submission.zip") as partial, zipfile.ZipFile(partial, "w", zipfile.ZIP_DEFLATED) as z:
        for _, name in sorted(expected, key=lambda e: e[1]):
            z.write(folder / f"{name}.png", f"{name}.png")
    return out / "submission.zip"
