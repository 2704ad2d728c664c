"""Load PIUnet weights: the published checkpoint files and this project's checkpoints.

Accepted: a `torch.save(model.state_dict())` file (the published nir/red checkpoints), a
file holding {"model": state_dict}, a `.safetensors` file, or a checkpoint directory of
this project (`model.safetensors` inside, as Accelerate writes it). Anything else is a
UserError naming the file and what does not fit.
"""

from __future__ import annotations

import re
from pathlib import Path

import torch
import yaml
from torch import nn

from ..core.errors import UserError
from ..core.run_dir import RunDir
from .model import PIUNet

_WRAPPER_PREFIXES = ("module.", "_orig_mod.")
_MODEL_FILES = ("model.safetensors", "pytorch_model.bin", "model.pt")


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    path = Path(path)
    if path.is_dir():
        found = [path / name for name in _MODEL_FILES if (path / name).is_file()]
        if not found:
            raise UserError(f"{path}: not a checkpoint directory (none of {', '.join(_MODEL_FILES)})")
        path = found[0]
    if not path.is_file():
        raise UserError(f"{path}: no such checkpoint file")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(path))
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # a damaged or foreign file fails in many ways inside the unpickler
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise UserError(f"{path}: not a readable checkpoint ({first})") from None
    if isinstance(state, dict) and isinstance(state.get("model"), dict):
        state = state["model"]
    if (
        not isinstance(state, dict)
        or not state
        or not all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in state.items())
    ):
        raise UserError(f"{path}: not a checkpoint (expected a state_dict of named tensors)")
    return {_strip_wrappers(k): v for k, v in state.items()}


def _strip_wrappers(key: str) -> str:
    changed = True
    while changed:
        changed = False
        for prefix in _WRAPPER_PREFIXES:
            if key.startswith(prefix):
                key, changed = key[len(prefix) :], True
    return key


def load_weights(model: nn.Module, path: str | Path) -> nn.Module:
    """Load weights into `model` strictly; a mismatch is one UserError that lists it."""
    state = read_state_dict(path)
    expected = model.state_dict()
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    wrong_shape = [
        f"{k} {tuple(state[k].shape)} (model has {tuple(v.shape)})"
        for k, v in expected.items()
        if k in state and state[k].shape != v.shape
    ]
    problems = []
    for what, keys in (("missing keys", missing), ("unexpected keys", unexpected), ("wrong shapes", wrong_shape)):
        if keys:
            more = f" and {len(keys) - 3} more" if len(keys) > 3 else ""
            problems.append(f"{len(keys)} {what}: {', '.join(keys[:3])}{more}")
    if problems:
        raise UserError(f"{path}: does not fit this PIUnet: {'; '.join(problems)}")
    model.load_state_dict(state, strict=True)
    return model


def model_from_weights(path: str | Path, n_heads: int | None = None) -> PIUNet:
    """Build the PIUnet whose shape the weights describe and load them. The heads cannot be read
    off the weights: a run's weights take them from its config.yaml, where `n_heads` must agree;
    other files (the published ones have 1) take `n_heads`, by default 1."""
    n_feat, r_bneck, n_tefa = shape_of(read_state_dict(path), path)
    trained = _run_heads(Path(path))
    if trained is not None and n_heads not in (None, trained):
        raise UserError(f"--heads {n_heads}: {path} was trained with {trained} head(s) (its run's config.yaml)")
    heads = trained or n_heads or 1
    if n_feat % heads:
        raise UserError(f"--heads {heads}: does not divide the {n_feat} feature channels of {path}")
    return load_weights(PIUNet(n_feat, r_bneck, n_tefa, heads), path)


def shape_of(state: dict[str, torch.Tensor], path: str | Path) -> tuple[int, int, int]:
    """(n_feat, r_bneck, n_tefa) of the PIUnet these weights are of."""
    try:
        n_feat = state["conv_in.weight"].shape[0]
        n_tefa = len({m.group(1) for k in state if (m := re.match(r"res\.(\d+)\.", k))})
        r_bneck = n_feat // state["res.0.lin0.weight"].shape[0] if n_tefa else 8
    except KeyError as e:
        raise UserError(f"{path}: not a PIUnet checkpoint (no {e.args[0]})") from None
    return n_feat, r_bneck, n_tefa


def _run_heads(path: Path) -> int | None:
    """model.n_heads of the run that wrote these weights (best/ or checkpoints/step_N/), if known."""
    run = RunDir.of_weights(path)
    if run is None:
        return None
    try:
        return int(yaml.safe_load(run.config.read_text())["model"]["n_heads"])
    except (OSError, yaml.YAMLError, KeyError, TypeError, ValueError):
        return None
