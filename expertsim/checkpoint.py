"""Checkpoints (resume training) and model files (inference), the one owner of both formats.

Both are torch files holding only tensors, numbers, strings, lists and dicts, and both load
with ``torch.load(..., weights_only=True)``, which cannot execute code. They are written to a
temporary name and renamed.

checkpoint: {"format": "expertsim-checkpoint", "version", "config" (JSON), "state" (the
trainer's state_dict: model and optimizer states, epoch, step, RNG states), "scaler"}
model file: {"format": "expertsim-model", "version", "config" (JSON), "detector",
"image_shape", "router", "generator" (state dicts), "scaler": {"mean", "scale"},
"provenance" (JSON)}
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch

from expertsim import __version__
from expertsim.errors import CheckpointError
from expertsim.eventfile import atomic_path

CHECKPOINT_FORMAT = "expertsim-checkpoint"
MODEL_FORMAT = "expertsim-model"


def _save(payload: dict[str, Any], path: str | os.PathLike) -> Path:
    with atomic_path(path) as temporary:
        torch.save(payload, temporary)
    return Path(path)


def _load(path: str | os.PathLike, expected_format: str) -> dict[str, Any]:
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"{path}: no such file")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # torch raises many kinds: unpickling, zip, EOF
        raise CheckpointError(
            f"{path}: cannot be loaded as a weights-only torch file ({type(error).__name__}: "
            f"{str(error).splitlines()[0][:200]}); it is damaged, or not an ExpertSim file") \
            from None
    if not isinstance(payload, dict) or payload.get("format") != expected_format:
        found = payload.get("format") if isinstance(payload, dict) else type(payload).__name__
        raise CheckpointError(f"{path}: expected an {expected_format} file, found {found!r}")
    return payload


def save_checkpoint(path: str | os.PathLike, *, config: dict[str, Any],
                    state: dict[str, Any]) -> Path:
    return _save({"format": CHECKPOINT_FORMAT, "version": __version__,
                  "config": json.dumps(config), "state": state}, path)


def load_checkpoint(path: str | os.PathLike) -> tuple[dict[str, Any], dict[str, Any]]:
    """(config dict, trainer state) of a checkpoint."""
    payload = _load(path, CHECKPOINT_FORMAT)
    return json.loads(payload["config"]), payload["state"]


def save_model_file(path: str | os.PathLike, *, config: dict[str, Any], detector: str,
                    image_shape: tuple[int, int], router: dict, generator: dict,
                    scaler_mean, scaler_scale, provenance: dict[str, Any]) -> Path:
    return _save({
        "format": MODEL_FORMAT, "version": __version__, "config": json.dumps(config),
        "detector": detector, "image_shape": list(image_shape), "router": router,
        "generator": generator,
        "scaler": {"mean": torch.as_tensor(scaler_mean, dtype=torch.float64),
                   "scale": torch.as_tensor(scaler_scale, dtype=torch.float64)},
        "provenance": json.dumps(provenance, default=str),
    }, path)


def load_model_file(path: str | os.PathLike) -> dict[str, Any]:
    payload = _load(path, MODEL_FORMAT)
    payload["config"] = json.loads(payload["config"])
    payload["provenance"] = json.loads(payload["provenance"])
    return payload


def load_mixture(path: str | os.PathLike):
    """Rebuild the inference model from a model file: (MixtureOfExperts in eval mode, payload).

    The payload also holds the condition scaler (``payload["scaler"]``), the detector and the
    training config.
    """
    from expertsim.config import config_from_dict
    from expertsim.models import ExpertGenerator, MixtureOfExperts, Router

    payload = load_model_file(path)
    model = config_from_dict(payload["config"], str(path)).model
    router = Router(model.n_experts, model.router_hidden)
    generator = ExpertGenerator(model.n_experts, tuple(payload["image_shape"]), model.noise_dim,
                                model.generator_channels, model.dispatch)
    try:
        router.load_state_dict(payload["router"])
        generator.load_state_dict(payload["generator"])
    except RuntimeError as error:
        raise CheckpointError(f"{path}: weights do not fit the model its config describes "
                              f"({str(error).splitlines()[0]})") from None
    return MixtureOfExperts(router, generator).eval(), payload
