"""The trained model: everything between a particle's raw conditions and photon counts.

A :class:`TrainedModel` is a model file loaded once (weights only) or the trainer's live
networks. It owns the condition scaler, the noise width, the empty-response gate, routing, the
expected photons per fibre and the Poisson step, so that sampling, export, the trainer's
validation pass, the study and the benchmarks all run one path:

    raw conditions (N, 9) --scale--> c_NK --gate (expertsim.gate)--> leaves light or empty
    c_NK --router--> expert_N
    (z_NZ, c_NK) --routed expert--> log(1 + expected photons) (N, H, W)
    --expm1--> expected photons --Poisson given >= 1 photon, keyed (seed, row)-->
    whole photons (expertsim.photon_counts)

Legend: N events, Z noise width, K = 9 conditions, H x W image.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
import torch

from expertsim.checkpoint import ModelFile, load_model_file, save_model_file
from expertsim.config import ExperimentConfig, ModelConfig, config_from_dict
from expertsim.detector import Detector, get_detector
from expertsim.errors import CheckpointError, ConfigError, DataSchemaError
from expertsim.gate import EmptyGate, gate_probability
from expertsim.models import ExpertGenerator, MixtureOfExperts, Router
from expertsim.photon_counts import poisson_counts
from expertsim.scaler import Scaler


def build_mixture(model: ModelConfig, image_shape: tuple[int, int],
                  scaler: Scaler | None = None) -> MixtureOfExperts:
    """The router and the expert generators a model config describes (freshly initialised);
    positional conditioning stores ``scaler`` in the generator (a loaded model's state dict
    brings its own)."""
    router = Router(model.n_experts, model.router_hidden)
    generator = ExpertGenerator(model.n_experts, tuple(image_shape), model.noise_dim,
                                model.generator_channels, model.dispatch, model.conditioning,
                                model.radial_fibres, model.intensity_head)
    if generator.features is not None and scaler is not None:
        generator.features.set_scaler(scaler.mean, scaler.scale)
    return MixtureOfExperts(router, generator)


def _check_finite(path: str | os.PathLike, parts: dict[str, dict[str, torch.Tensor]]) -> None:
    for part, state in parts.items():
        for name, tensor in state.items():
            if tensor.is_floating_point() and not torch.isfinite(tensor).all():
                raise CheckpointError(
                    f"{path}: weight {part}.{name} holds NaN or inf: the training that wrote "
                    "this file diverged; train again (lower learning rates) or use an earlier "
                    "model file")


class TrainedModel:
    """A mixture with its scaler, detector and training config, ready to generate.

    Args:
        mixture: router and experts (a loaded model is put in eval mode; live training
            networks are used in the mode they are in).
        scaler: the condition scaler the model was trained with.
        detector: the calorimeter the model draws.
        config: the training configuration (model section: noise width, experts).
        provenance: what made the model file (empty for live networks).
        path: the model file it was loaded from, if any.
        gate, gate_info: the empty-response gate and its size and training report.
        condition_ranges: min and max (9,) of the raw conditions it was trained on.
    """

    def __init__(self, mixture: MixtureOfExperts, *, scaler: Scaler, detector: Detector,
                 config: ExperimentConfig, provenance: dict[str, Any] | None = None,
                 path: Path | None = None, gate: EmptyGate | None = None,
                 gate_info: dict[str, Any] | None = None,
                 condition_ranges: dict[str, Any] | None = None) -> None:
        self.mixture = mixture
        self.condition_ranges = condition_ranges
        self.gate, self.gate_info = gate, gate_info
        self.scaler, self.detector, self.config = scaler, detector, config
        self.provenance = provenance or {}
        self.path = path

    @classmethod
    def load(cls, path: str | os.PathLike) -> "TrainedModel":
        """Load a model file written by ``expertsim train`` (weights only)."""
        stored = load_model_file(path)
        config = config_from_dict(stored.config, str(path))
        mixture = build_mixture(config.model, stored.image_shape)
        try:
            mixture.router.load_state_dict(stored.router)
            mixture.generator.load_state_dict(stored.generator)
        except RuntimeError as error:
            raise CheckpointError(f"{path}: weights do not fit the model its config describes "
                                  f"({str(error).splitlines()[0]})") from None
        gate = None
        if stored.gate is not None:
            gate = EmptyGate(int(stored.gate_info["hidden"]))
            try:
                gate.load_state_dict(stored.gate)
            except RuntimeError as error:
                raise CheckpointError(f"{path}: its gate does not fit its stated size "
                                      f"({str(error).splitlines()[0]})") from None
            gate.eval()
        _check_finite(path, {"router": stored.router, "generator": stored.generator,
                             "gate": stored.gate or {}})
        return cls(mixture.eval(), scaler=stored.scaler, detector=get_detector(stored.detector),
                   config=config, provenance=stored.provenance, path=Path(path), gate=gate,
                   gate_info=stored.gate_info, condition_ranges=stored.condition_ranges)

    def save(self, path: str | os.PathLike, provenance: dict[str, Any]) -> Path:
        """Write the model file (see expertsim.checkpoint)."""
        return save_model_file(path, ModelFile(
            config=self.config.to_dict(), detector=self.detector.name,
            image_shape=self.image_shape, router=self.mixture.router.state_dict(),
            generator=self.mixture.generator.state_dict(), scaler=self.scaler,
            provenance=provenance,
            gate=None if self.gate is None else self.gate.state_dict(),
            gate_info=self.gate_info, condition_ranges=self.condition_ranges))

    def check_conditions(self, raw_N9: np.ndarray, detector: str | None, source: str) -> int:
        """Check conditions before generating on them: refuses (DataSchemaError) a file made
        for the other calorimeter; returns how many rows lie outside the training range of
        some condition (0 when the model does not record its ranges)."""
        if detector is not None and detector.upper() != self.detector.name:
            raise DataSchemaError(
                f"{source}: holds {detector.upper()} events, but the model "
                f"{self.path or ''} draws {self.detector.name}: use a {self.detector.name} "
                "model or conditions file")
        if not self.condition_ranges:
            return 0
        low = np.asarray(self.condition_ranges["min"])
        high = np.asarray(self.condition_ranges["max"])
        return int(((raw_N9 < low) | (raw_N9 > high)).any(axis=1).sum())

    # ------------------------------------------------------------------ facts

    @property
    def noise_dim(self) -> int:
        return self.config.model.noise_dim

    @property
    def n_experts(self) -> int:
        return self.config.model.n_experts

    @property
    def image_shape(self) -> tuple[int, int]:
        return self.detector.shape

    @property
    def n_parameters(self) -> int:
        return sum(p.numel() for p in self.mixture.parameters())

    @property
    def device(self) -> torch.device:
        return next(self.mixture.parameters()).device

    def set_precision(self, precision: str) -> "TrainedModel":
        """The experts' arithmetic in inference: "float32" (default) or "bfloat16" (autocast;
        the router, the gate and the counting stay float32)."""
        dtypes = {"float32": None, "bfloat16": torch.bfloat16}
        if precision not in dtypes:
            raise ConfigError(f"precision must be float32 or bfloat16, got {precision!r}")
        self.mixture.expert_dtype = dtypes[precision]
        return self

    def to(self, device: str | torch.device) -> "TrainedModel":
        self.mixture.to(device)
        if self.gate is not None:
            self.gate.to(device)
        return self

    # ------------------------------------------------------------------ the path

    def scale(self, raw_N9: np.ndarray) -> torch.Tensor:
        """Raw conditions (N, 9) -> scaled float32 conditions on the model's device."""
        return torch.from_numpy(self.scaler.transform(raw_N9)).to(self.device)

    def noise(self, n_events: int, generator: torch.Generator) -> torch.Tensor:
        """Standard-normal noise (N, Z) from ``generator``, on the CPU."""
        return torch.randn(n_events, self.noise_dim, generator=generator)

    def generate(self, z_NZ: torch.Tensor, c_NK: torch.Tensor, chunk_size: int | None = None
                 ) -> tuple[torch.Tensor, torch.Tensor]:
        """(log(1 + expected photons) (N, H, W), routed expert (N,)); hard routing."""
        return self.mixture.generate(z_NZ.to(self.device), c_NK.to(self.device), chunk_size)

    def expected_photons(self, z_NZ: torch.Tensor, c_NK: torch.Tensor,
                         chunk_size: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Expected photons per fibre (N, H, W) float32 and the routed expert (N,), numpy."""
        image_NHW, expert_N = self.generate(z_NZ, c_NK, chunk_size)
        return torch.expm1(image_NHW.float()).cpu().numpy(), expert_N.cpu().numpy()

    def sample_counts(self, z_NZ: torch.Tensor, c_NK: torch.Tensor, *, seed: int,
                      first_row: int = 0, row_ids: np.ndarray | None = None,
                      chunk_size: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Whole photons (N, H, W) uint32 drawn from the expected photons given at least one
        photon (the generators model responses with light; rows keyed (seed, first_row + i) or
        (seed, row_ids[i]), see :func:`poisson_counts`; drawn on PyTorch's intra-op threads)
        and the routed expert (N,). Generator and counts run chunk by chunk (the mixture's
        chunk size), so no image-sized float array of the whole batch is made: on a CPU,
        10,000 ZN rows at once spent about as long allocating and filling such arrays as
        drawing the counts."""
        n_rows = len(z_NZ)
        ids_N = (first_row + np.arange(n_rows, dtype=np.int64) if row_ids is None
                 else np.asarray(row_ids, dtype=np.int64))
        chunk = chunk_size or self.mixture.chunk_size(self.device)
        counts_NHW = np.zeros((n_rows, *self.image_shape), dtype=np.uint32)
        experts = []
        for start in range(0, n_rows, chunk):
            part = slice(start, start + chunk)
            expected_CHW, expert_C = self.expected_photons(z_NZ[part], c_NK[part], chunk)
            counts_NHW[part] = poisson_counts(expected_CHW, seed, row_ids=ids_N[part],
                                              nonempty=True, threads=torch.get_num_threads())
            experts.append(expert_C)
        expert_N = np.concatenate(experts) if experts else np.zeros(0, dtype=np.int64)
        return counts_NHW, expert_N

    def leaves_light(self, c_NK: torch.Tensor, uniform_N: np.ndarray) -> np.ndarray:
        """The gate's decisions (N,) bool: uniform < P(photon sum >= 1); all True without a
        gate."""
        if self.gate is None:
            return np.ones(len(c_NK), dtype=bool)
        return uniform_N < gate_probability(self.gate, c_NK.to(self.device))
