"""Choosing the torch device a command runs on."""

from __future__ import annotations

import torch

from expertsim.errors import ConfigError


def select_device(name: str) -> torch.device:
    """``auto`` (CUDA when available, else CPU), ``cpu`` or ``cuda[:N]``; a clear error when
    CUDA is asked for but absent."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"device {name!r} was asked for but CUDA is not available here; use "
                          "auto or cpu")
    return torch.device(name)
