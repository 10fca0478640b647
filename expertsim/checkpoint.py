"""Checkpoints (resume training) and model files (inference), the one owner of both formats.

Both are torch files holding only tensors, numbers, strings, lists and dicts, and both load
with ``torch.load(..., weights_only=True)``, which cannot execute code. They are written to a
temporary name and renamed.

checkpoint: {"format": "expertsim-checkpoint", "version", "config" (JSON), "state" (the
trainer's state_dict: model and optimizer states, epoch, step, RNG states), "scaler"}
model file: {"format": "expertsim-model", "version", "config" (JSON), "detector",
"image_shape", "router", "generator" (state dicts), "scaler": {"mean", "scale"},
"provenance" (JSON), optionally "gate" (state dict of the empty-response gate), "gate_info"
(JSON: its size and training report) and "condition_ranges" (JSON: min and max of each raw
condition over the training events)}

This module is the only one that knows those keys: the rest of the package reads a model file
as a :class:`ModelFile` (and, to run it, as an ``expertsim.trained_model.TrainedModel``).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from expertsim import __version__
from expertsim.errors import CheckpointError
from expertsim.fileio import atomic_path
from expertsim.scaler import Scaler

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


@dataclass(frozen=True)
class ModelFile:
    """The contents of a model file: what inference needs, and what made it."""

    config: dict[str, Any]  # the training config (ExperimentConfig.to_dict())
    detector: str  # "ZN" or "ZP"
    image_shape: tuple[int, int]
    router: dict[str, torch.Tensor]  # state dicts
    generator: dict[str, torch.Tensor]
    scaler: Scaler  # the condition scaler the model was trained with
    provenance: dict[str, Any]
    version: str = __version__  # package version that wrote the file
    gate: dict[str, torch.Tensor] | None = None  # the empty-response gate (expertsim.gate)
    gate_info: dict[str, Any] | None = None  # its hidden width and training report
    # the raw conditions the generators were trained on: {"min": [9], "max": [9], "n_events"}
    condition_ranges: dict[str, Any] | None = None


def save_model_file(path: str | os.PathLike, model: ModelFile) -> Path:
    return _save({
        "format": MODEL_FORMAT, "version": model.version, "config": json.dumps(model.config),
        "detector": model.detector, "image_shape": list(model.image_shape),
        "router": model.router, "generator": model.generator,
        "scaler": {"mean": torch.as_tensor(model.scaler.mean, dtype=torch.float64),
                   "scale": torch.as_tensor(model.scaler.scale, dtype=torch.float64)},
        "provenance": json.dumps(model.provenance, default=str),
        **({} if model.gate is None else {
            "gate": model.gate, "gate_info": json.dumps(model.gate_info, default=str)}),
        **({} if model.condition_ranges is None else {
            "condition_ranges": json.dumps(model.condition_ranges)}),
    }, path)


def load_model_file(path: str | os.PathLike) -> ModelFile:
    """Read a model file (weights only: it cannot run code)."""
    payload = _load(path, MODEL_FORMAT)
    try:
        return ModelFile(
            config=json.loads(payload["config"]), detector=str(payload["detector"]),
            image_shape=tuple(int(v) for v in payload["image_shape"]),
            router=payload["router"], generator=payload["generator"],
            scaler=Scaler(payload["scaler"]["mean"].numpy(), payload["scaler"]["scale"].numpy()),
            provenance=json.loads(payload["provenance"]), version=str(payload["version"]),
            gate=payload.get("gate"),
            gate_info=json.loads(payload["gate_info"]) if "gate" in payload else None,
            condition_ranges=(json.loads(payload["condition_ranges"])
                              if "condition_ranges" in payload else None))
    except (KeyError, TypeError, ValueError, AttributeError) as error:
        raise CheckpointError(f"{path}: an incomplete expertsim-model file ({type(error).__name__}"
                              f": {error}); train it again (expertsim train)") from None
