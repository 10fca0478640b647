"""Typed, frozen training configuration loaded from YAML, with ``key=value`` overrides.

Unknown keys are errors that name the key and the file; every field is validated in
``__post_init__`` with a message saying what to fix. Defaults are the published ones
(SOURCES.md) unless a comment says otherwise.
"""

from __future__ import annotations

import dataclasses
import math
import os
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from expertsim.detector import DETECTORS
from expertsim.errors import ConfigError

ENERGY_SCALE_NAMES = ("image", "quadrants", "blocks", "fibres")  # loss.energy_scales, in order


def _positive(section: str, **values: float) -> None:
    for name, value in values.items():
        if value is None or not (value > 0 and math.isfinite(value)):
            raise ConfigError(f"{section}.{name} must be a finite number > 0, got {value}")


def _non_negative(section: str, **values: float) -> None:
    for name, value in values.items():
        if not (value >= 0 and math.isfinite(value)):
            raise ConfigError(f"{section}.{name} must be >= 0 (0 switches it off), got {value}")


@dataclass(frozen=True)
class SimulateSpec:
    """Built-in data: simulate ``n_events`` into data.path first if the file is missing."""

    detector: str = "zn"
    n_events: int = 20000
    seed: int = 1
    repeat: int = 1

    def __post_init__(self) -> None:
        if self.detector.upper() not in DETECTORS:
            raise ConfigError(f"data.simulate.detector must be one of "
                              f"{[name.lower() for name in DETECTORS]}, got {self.detector!r}")
        _positive("data.simulate", n_events=self.n_events, repeat=self.repeat)


@dataclass(frozen=True)
class DataConfig:
    path: str = "data/zn.h5"
    simulate: SimulateSpec | None = None
    batch_size: int = 512  # published
    min_photon_sum: float | None = None  # published work used >= 1 (or >= 18)
    max_photon_sum: float | None = None
    memory_limit_mb: float = 1024.0
    val_max_events: int = 5000  # validation pass cost bound

    def __post_init__(self) -> None:
        _positive("data", batch_size=self.batch_size, memory_limit_mb=self.memory_limit_mb,
                  val_max_events=self.val_max_events)


@dataclass(frozen=True)
class ModelConfig:
    n_experts: int = 3  # published
    noise_dim: int = 10  # published; also the O2 ONNX contract
    generator_channels: int = 32
    discriminator_channels: int = 16
    discriminator_features: int = 64
    router_hidden: int = 64
    aux_channels: int = 8
    dispatch: str = "gather"  # how experts run: gather | dense | loop (expertsim.models.layers)
    # plain: the nine scaled conditions enter the dense layer only (published); positional:
    # derived impact features and centred coordinate channels (expertsim.models.conditioning);
    # radial: positional + radial channels around the predicted centre, one per width below
    conditioning: str = "plain"
    radial_fibres: tuple[float, ...] = (0.5, 1.0, 2.0, 4.0, 8.0)  # widths [fibres], radial only
    # the discriminators also see log(1 + photons) of the image and its quadrants (not
    # published; expertsim.models.experts.ExpertDiscriminator)
    discriminator_sums: bool = False
    # the generators draw the photon sum with a head of its own and the shape as a softmax
    # over the fibres (not published; expertsim.models.experts.ExpertGenerator)
    intensity_head: bool = False

    def __post_init__(self) -> None:
        if self.dispatch not in ("gather", "dense", "loop"):
            raise ConfigError(f"model.dispatch must be gather, dense or loop, got "
                              f"{self.dispatch!r}")
        if self.conditioning not in ("plain", "positional", "radial"):
            raise ConfigError(f"model.conditioning must be plain, positional or radial, got "
                              f"{self.conditioning!r}")
        if not self.radial_fibres or not all(0 < w < math.inf for w in self.radial_fibres):
            raise ConfigError(f"model.radial_fibres must be a list of positive widths, got "
                              f"{list(self.radial_fibres)}")
        _positive("model", n_experts=self.n_experts, noise_dim=self.noise_dim,
                  router_hidden=self.router_hidden, aux_channels=self.aux_channels,
                  discriminator_features=self.discriminator_features)
        if self.generator_channels < 2 or self.generator_channels % 2:
            raise ConfigError("model.generator_channels must be an even number >= 2, got "
                              f"{self.generator_channels}")
        _positive("model", discriminator_channels=self.discriminator_channels)


@dataclass(frozen=True)
class LossConfig:
    """Loss weights; 0 switches a term off."""

    adversarial: float = 1.0
    diversity: float = 0.1  # published
    intensity: float = 1e-3  # published
    auxiliary: float = 1e-3  # published
    # not published: Poisson deviance of the real response under the generated expectation,
    # per fibre (expertsim.models.losses.pixel_likelihood); 0 = off
    pixel_likelihood: float = 0.0
    # not published: squared distance between generated and real shower centroids (and the
    # predicted shower centre), paired per particle (expertsim.models.losses.centroid); 0 = off
    centroid: float = 0.0
    # not published: energy score (a proper scoring rule) of two counted generations of each
    # particle at its real response, at three scales (expertsim.models.losses.energy_score);
    # teaches the shower-to-shower fluctuations, which the pixel term averages away; 0 = off
    energy_score: float = 0.0
    # the energy score's weight at each of its scales: the whole image, the quadrants, the
    # ENERGY_BLOCK-fibre blocks and the fibres (expertsim.models.losses.energy_score); any
    # positive weights keep it a proper scoring rule
    energy_scales: tuple[float, ...] = (1.0, 1.0, 1.0, 1.0)
    router_gan: float = 0.1  # published
    differentiation: float = 0.1  # published
    utilisation_entropy: float = 0.1  # not published: our choice (0.01 let an expert die in
    # smoke runs; 0.1 kept all three in use and lowered the validation WS slightly)
    load_balancing: float = 1e-7  # published

    def __post_init__(self) -> None:
        weights = dataclasses.asdict(self)
        scales = weights.pop("energy_scales")
        _non_negative("loss", **weights)
        if (len(scales) != len(ENERGY_SCALE_NAMES)
                or not all(0 <= w < math.inf for w in scales) or not any(scales)):
            raise ConfigError(f"loss.energy_scales must be {len(ENERGY_SCALE_NAMES)} weights >= 0 "
                              f"({', '.join(ENERGY_SCALE_NAMES)}), not all 0; got "
                              f"{list(scales)}")


@dataclass(frozen=True)
class OptimConfig:
    lr_generator: float = 1e-4  # published
    lr_discriminator: float = 1e-5  # published
    lr_aux: float = 1e-4  # published
    lr_router: float = 1e-2  # published
    beta1: float = 0.5  # DCGAN practice (not published for ExpertSim)
    beta2: float = 0.999
    scale_lr_by_routed_fraction: bool = True  # published
    # Generator and discriminator learning rates over the run: constant (published), or
    # cosine from the rates above down to lr_final_fraction of them at the last step
    schedule: str = "constant"
    lr_final_fraction: float = 0.1

    def __post_init__(self) -> None:
        _positive("optim", lr_generator=self.lr_generator, lr_discriminator=self.lr_discriminator,
                  lr_aux=self.lr_aux, lr_router=self.lr_router)
        if self.schedule not in ("constant", "cosine"):
            raise ConfigError(f"optim.schedule must be constant or cosine, got {self.schedule!r}")
        if not 0 <= self.lr_final_fraction <= 1:
            raise ConfigError("optim.lr_final_fraction must be in [0, 1], got "
                              f"{self.lr_final_fraction}")
        if not (0 <= self.beta1 < 1 and 0 <= self.beta2 < 1):
            raise ConfigError("optim.beta1 and optim.beta2 must be in [0, 1)")


@dataclass(frozen=True)
class TrainConfig:
    epochs: int = 150  # published
    max_steps: int | None = None  # stop after this many steps in total (tests, smoke runs)
    seed: int = 0
    device: str = "auto"  # auto = cuda if available, else cpu
    bf16: bool = True  # bf16 autocast on CUDA (ignored on CPU)
    gumbel_temperature: float = 1.0
    gumbel_temperature_min: float = 0.5
    gumbel_anneal: float = 1.0  # temperature *= anneal each epoch, down to the minimum
    router_warm_start_steps: int = 0  # steps fitting the router to the intensity groups
    # Shared start: for this many steps every expert is one generator/discriminator pair
    # trained on all events (expert 0, copied to the others after each step, each expert's
    # learning rate scaled by 1/E when optim.scale_lr_by_routed_fraction), and the router
    # fits the intensity groups; then the experts specialise (0 = off, as published)
    shared_start_steps: int = 0
    # Balanced routing: after each step the router's logit bias moves by this much towards
    # the experts routed less than 1/E of the batch (0 = off, as published)
    balance_rate: float = 0.0
    # Exponential moving average of the generator weights (0 = off): validation, the best and
    # final model files use the average; its decay is min(ema_decay, (1 + step) / (10 + step))
    ema_decay: float = 0.0
    # Train what you sample: the discriminator sees generated images as Poisson counts drawn
    # from the expected photons (straight-through gradient), as `expertsim sample` writes them
    counting_step: bool = False
    val_every: int = 1  # epochs between validation passes
    log_every: int = 50  # steps between logged training losses
    output_dir: str = "runs/default"
    threads: int | None = None  # torch CPU threads (None: torch's default)
    # Bit-reproducible runs for a seed (torch deterministic algorithms; no measurable cost on
    # CPU here). Without it, multi-threaded CPU runs differ by ~1e-4 after a few steps.
    deterministic: bool = True

    def __post_init__(self) -> None:
        _positive("train", epochs=self.epochs, gumbel_temperature=self.gumbel_temperature,
                  gumbel_temperature_min=self.gumbel_temperature_min,
                  gumbel_anneal=self.gumbel_anneal, val_every=self.val_every,
                  log_every=self.log_every)
        if self.max_steps is not None:
            _positive("train", max_steps=self.max_steps)
        _non_negative("train", router_warm_start_steps=self.router_warm_start_steps,
                      shared_start_steps=self.shared_start_steps,
                      balance_rate=self.balance_rate)
        if not 0.0 <= self.ema_decay < 1.0:
            raise ConfigError(f"train.ema_decay must be in [0, 1), got {self.ema_decay}")
        if self.threads is not None:
            _positive("train", threads=self.threads)
        if self.device != "auto" and not self.device.startswith(("cpu", "cuda")):
            raise ConfigError(f"train.device must be auto, cpu or cuda[:N], got {self.device!r}")


@dataclass(frozen=True)
class GateConfig:
    """The empty-response gate (expertsim.gate), trained before the generators on every event
    of the train split, empty ones included; stored in model.pt. Choices, not published:
    5,000 steps (10-15 s on 2 CPU cores) took the validation accuracy on the built-in ZN
    files from 97.8 % at 1,500 steps to 99.2 %, calibration unchanged (README, "ALICE O2")."""

    enabled: bool = True
    steps: int = 5000
    batch_size: int = 2048
    lr: float = 3e-3
    hidden: int = 64

    def __post_init__(self) -> None:
        _positive("gate", steps=self.steps, batch_size=self.batch_size, lr=self.lr,
                  hidden=self.hidden)


@dataclass(frozen=True)
class TrackingConfig:
    enabled: bool = True
    uri: str = "sqlite:///mlflow.db"  # a local store in the working directory
    experiment: str = "expertsim"
    run_name: str | None = None


@dataclass(frozen=True)
class ExperimentConfig:
    name: str = "expertsim"
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    gate: GateConfig = field(default_factory=GateConfig)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def flat(self) -> dict[str, Any]:
        """Dotted keys -> values, e.g. {"loss.diversity": 0.1} (for experiment tracking)."""
        return flatten(self.to_dict())


def flatten(values: dict[str, Any]) -> dict[str, Any]:
    """A nested mapping as dotted keys -> leaf values, e.g. {"loss.diversity": 0.1}."""
    out: dict[str, Any] = {}

    def walk(prefix: str, value: Any) -> None:
        if isinstance(value, dict):
            for key, inner in value.items():
                walk(f"{prefix}.{key}" if prefix else key, inner)
        else:
            out[prefix] = value

    walk("", values)
    return out


def _build(cls: type, values: Any, where: str, source: str) -> Any:
    if values is None:
        return None
    if not isinstance(values, dict):
        raise ConfigError(f"{source}: '{where}' must be a mapping, got {values!r}")
    hints = typing.get_type_hints(cls)
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - known)
    if unknown:
        key = f"{where}.{unknown[0]}" if where else unknown[0]
        raise ConfigError(f"{source}: unknown key '{key}' (known keys here: {sorted(known)})")
    kwargs = {}
    for name, value in values.items():
        kwargs[name] = _coerce(hints[name], value, f"{where}.{name}" if where else name, source)
    return cls(**kwargs)


def _coerce(hint: Any, value: Any, where: str, source: str) -> Any:
    origin = typing.get_origin(hint)
    args = [a for a in typing.get_args(hint) if a is not type(None)]
    if origin in (typing.Union, types.UnionType):
        if value is None:
            return None
        return _coerce(args[0], value, where, source)
    if dataclasses.is_dataclass(hint):
        return _build(hint, value, where, source)
    if hint is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{source}: '{where}' must be true or false, got {value!r}")
        return value
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{source}: '{where}' must be an integer, got {value!r}")
        return value
    if hint is float:
        if isinstance(value, str):  # YAML 1.1 reads 1e-4 (no dot) as a string
            try:
                value = float(value)
            except ValueError:
                pass
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{source}: '{where}' must be a number, got {value!r}")
        if not math.isfinite(value):
            raise ConfigError(f"{source}: '{where}' must be a finite number, got {value!r}")
        return float(value)
    if typing.get_origin(hint) is tuple:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{source}: '{where}' must be a list, got {value!r}")
        return tuple(_coerce(args[0], item, f"{where}[{k}]", source)
                     for k, item in enumerate(value))
    if hint is str:
        if not isinstance(value, str):
            raise ConfigError(f"{source}: '{where}' must be a string, got {value!r}")
        return value
    return value


def config_from_dict(values: dict[str, Any], source: str = "<dict>") -> ExperimentConfig:
    try:
        return _build(ExperimentConfig, values or {}, "", source)
    except ConfigError as error:
        message = str(error)
        raise ConfigError(message if message.startswith(source) else f"{source}: {message}"
                          ) from None


def apply_overrides(values: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply ``section.key=value`` strings (values parsed as YAML) to a nested dict."""
    values = dict(values)
    for override in overrides:
        if "=" not in override:
            raise ConfigError(f"--set {override!r}: write it as section.key=value")
        key, raw = override.split("=", 1)
        parts = key.strip().split(".")
        target = values
        for part in parts[:-1]:
            inner = target.get(part)
            target[part] = dict(inner) if isinstance(inner, dict) else {}
            target = target[part]
        target[parts[-1]] = yaml.safe_load(raw)
    return values


def load_config(path: str | os.PathLike, overrides: list[str] | None = None) -> ExperimentConfig:
    """Read a YAML config file, apply its ``detectors`` section for the data's detector, then
    the overrides, and validate.

    A config may hold settings for one detector only (the study's configs serve ZN and ZP):

        loss: {centroid: 1.0}
        detectors:
          zn: {loss: {centroid: 100.0}}   # replaces loss.centroid when data.path holds ZN

    The detector is read from the event file at data.path, or from data.simulate when that
    file does not exist yet. ``--set`` overrides win over both; the returned config holds the
    resolved values only (what a run records and what a study compares before reusing a run).
    """
    path = Path(path)
    if not path.exists():
        raise ConfigError(f"{path}: no such config file")
    try:
        values = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as error:
        raise ConfigError(f"{path}: not valid YAML ({error})") from None
    if not isinstance(values, dict):
        raise ConfigError(f"{path}: the top level must be a mapping of sections")
    overrides = list(overrides or [])
    source = str(path) + (" (with --set overrides)" if overrides else "")
    values = apply_overrides(values, overrides)
    sections = values.pop("detectors", None)
    if sections is not None:
        plain = [item for item in overrides if not item.strip().startswith("detectors.")]
        values = apply_overrides(_merged(values, _detector_section(sections, values, source)),
                                 plain)
    return config_from_dict(values, source)


# keys a detectors section may not set: they decide which section applies
_DETECTOR_FIXED = ("name", "data.path", "data.simulate", "detectors")


def _detector_section(sections: Any, values: dict[str, Any], source: str) -> dict[str, Any]:
    """The part of a config's ``detectors`` mapping that applies to its data's detector."""
    known = [name.lower() for name in DETECTORS]
    if not isinstance(sections, dict) or not all(
            isinstance(key, str) and key.lower() in known for key in sections):
        raise ConfigError(f"{source}: 'detectors' must map detector names ({known}) to "
                          f"sections of settings, got {sections!r}")
    for name, section in sections.items():
        if not isinstance(section, dict):
            raise ConfigError(f"{source}: 'detectors.{name}' must be a mapping of sections, "
                              f"got {section!r}")
        for key in flatten(section):
            if key.startswith(_DETECTOR_FIXED):
                raise ConfigError(f"{source}: 'detectors.{name}.{key}' cannot be set per "
                                  "detector (it decides which detector applies); set it at "
                                  "the top level")
        config_from_dict(_merged(values, section), f"{source}, detectors.{name}")
    detector = _data_detector(values, source).lower()
    return {key.lower(): section for key, section in sections.items()}.get(detector, {})


def _merged(base: dict[str, Any], update: dict[str, Any]) -> dict[str, Any]:
    """``base`` with ``update``'s leaves written over it (nested mappings merged)."""
    out = dict(base)
    for key, value in update.items():
        inner = out.get(key)
        out[key] = (_merged(inner, value) if isinstance(inner, dict) and isinstance(value, dict)
                    else value)
    return out


def _data_detector(values: dict[str, Any], source: str) -> str:
    """The detector of a config's data: the event file's, else data.simulate's."""
    data = values.get("data") or {}
    data_path = Path(str(data.get("path", DataConfig.path)))
    if data_path.exists():
        from expertsim.eventfile import check_raw, open_event_file

        with open_event_file(data_path) as handle:
            return check_raw(handle, data_path)[0].name
    simulate = data.get("simulate")
    if isinstance(simulate, dict):
        return str(simulate.get("detector", SimulateSpec.detector))
    raise ConfigError(f"{source}: its 'detectors' section needs the data's detector, but "
                      f"data.path {data_path} does not exist and data.simulate is not set; "
                      "point data.path at an event file (--set data.path=...)")
