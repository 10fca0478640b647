"""Training the Mixture-of-Generative-Experts.

``Trainer.fit`` orchestrates; ``discriminator_step``, ``aux_step``, ``generator_step`` and
``router_step`` each do one update and return a small dataclass of detached tensors (no host
synchronisation inside a step; numbers are pulled to the host only when logged). The trainer
is stateful (``state_dict`` / ``load_state_dict``), so resuming is one call.

Legend: B events, E experts, Z noise, K = 9 conditions, H x W image, F features.
"""

from __future__ import annotations

import contextlib
import copy
import math
import os
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from expertsim.checkpoint import load_checkpoint, save_checkpoint
from expertsim.config import ExperimentConfig, config_from_dict
from expertsim.detector import channel_sums
from expertsim.devices import select_device
from expertsim.distributed import (DistributedContext, all_reduce_sum, global_sum,
                                   sum_gradients)
from expertsim.errors import CheckpointError, ConfigError, TrainingError
from expertsim.eventfile import EventFile
from expertsim.loader import Batch, EventLoader
from expertsim.metrics import N_GROUPS, channel_wasserstein, routing_agreement
from expertsim.models import AuxRegressor, ExpertDiscriminator, MixtureOfExperts, gumbel_route
from expertsim.models.conditioning import N_PLACEMENT
from expertsim.models.experts import calibrate_position
from expertsim.models import losses
from expertsim.models.counting import counted_log_image
from expertsim.optim import ExpertAdam
from expertsim.provenance import make_provenance
from expertsim.tracking import NullTracker
from expertsim.gate import EmptyGate, train_gate
from expertsim.trained_model import TrainedModel, build_mixture

CALIBRATION_EVENTS = 4096  # training showers the shower-placement maps are fitted to


@dataclass
class DeviceBatch:
    """One batch on the training device (float32 unless noted)."""

    x_BHW: torch.Tensor  # log(1 + photons)
    c_BK: torch.Tensor  # scaled conditions
    position_B2: torch.Tensor  # brightest fibre, (row / (H-1), column / (W-1))
    valid_B: torch.Tensor  # 1 for a non-empty image
    spread_B: torch.Tensor  # per-condition photon-sum spread / its train mean (1 where unknown)
    group_B: torch.Tensor  # int64 intensity group


@dataclass
class Routing:
    """How this step's events are routed, with the noise they are generated from."""

    z1_BZ: torch.Tensor
    z2_BZ: torch.Tensor  # second noise draw (SDI diversity)
    logits_BE: torch.Tensor
    gates_BE: torch.Tensor  # straight-through one-hot gates (carry the router gradient)
    probs_BE: torch.Tensor  # softmax of the logits
    mask_BE: torch.Tensor  # gates, detached
    expert_B: torch.Tensor  # int64
    count_E: torch.Tensor  # events per expert over all ranks
    scale_E: torch.Tensor  # per-expert learning-rate scale
    uniform_BHW: torch.Tensor | None  # uniforms of the counting step (train.counting_step
    # or loss.energy_score)
    uniform2_BHW: torch.Tensor | None  # uniforms counting G(z2, c) (loss.energy_score)


@dataclass
class DiscriminatorStep:
    loss: torch.Tensor
    real_score: torch.Tensor  # mean sigmoid(D(real)) over routed events
    fake_score: torch.Tensor


@dataclass
class GeneratorStep:
    loss: torch.Tensor
    adversarial: torch.Tensor
    diversity: torch.Tensor
    intensity: torch.Tensor
    auxiliary: torch.Tensor
    pixel_likelihood: torch.Tensor
    centroid: torch.Tensor
    energy_score: torch.Tensor
    adversarial_B: torch.Tensor  # adversarial loss per event, routed expert (detached)
    features_BF: torch.Tensor  # discriminator features of G(z1, c) (detached)


@dataclass
class RouterStep:
    loss: torch.Tensor
    gan_feedback: torch.Tensor
    differentiation: torch.Tensor
    utilisation_entropy: torch.Tensor
    load_balancing: torch.Tensor


@dataclass
class StepResult:
    discriminator: DiscriminatorStep
    generator: GeneratorStep
    router: RouterStep
    aux_loss: torch.Tensor
    count_E: torch.Tensor

    def scalars(self) -> dict[str, torch.Tensor]:
        out = {"d_loss": self.discriminator.loss, "d_real_score": self.discriminator.real_score,
               "d_fake_score": self.discriminator.fake_score, "g_loss": self.generator.loss,
               "g_adversarial": self.generator.adversarial,
               "g_diversity": self.generator.diversity, "g_intensity": self.generator.intensity,
               "g_auxiliary": self.generator.auxiliary,
               "g_pixel_likelihood": self.generator.pixel_likelihood,
               "g_centroid": self.generator.centroid,
               "g_energy_score": self.generator.energy_score,
               "router_loss": self.router.loss,
               "router_gan_feedback": self.router.gan_feedback,
               "router_differentiation": self.router.differentiation,
               "router_entropy": self.router.utilisation_entropy,
               "router_load_balancing": self.router.load_balancing, "aux_loss": self.aux_loss}
        fraction_E = self.count_E / self.count_E.sum().clamp(min=1)
        for expert in range(len(fraction_E)):
            out[f"expert_fraction_{expert}"] = fraction_E[expert]
        return out


@dataclass
class FitResult:
    status: str  # "finished", "stopped" (max_steps) or "preempted" (signal)
    epoch: int
    step: int
    best_ws: float
    output_dir: Path
    run_id: str | None
    history: list[dict[str, float]] = field(default_factory=list)
    untrained_ws: float | None = None  # validation channel-WS before the first step
    mean_image_ws: float | None = None  # the same for the train mean image (trivial baseline)
    rank: int = 0  # torch.distributed rank of the process that returned it
    gate_report: dict[str, Any] | None = None  # expertsim.gate.train_gate's report


@dataclass
class LogWindow:
    """Training scalars summed over the steps since the last log line."""

    sums: dict[str, torch.Tensor] = field(default_factory=dict)
    n_steps: int = 0

    def add(self, scalars: dict[str, torch.Tensor]) -> None:
        for key, value in scalars.items():
            self.sums[key] = self.sums.get(key, 0.0) + value
        self.n_steps += 1

    def flush(self) -> dict[str, float]:
        """Means over the window (host numbers); the window starts afresh."""
        means = {f"train/{k}": float(v) / self.n_steps for k, v in self.sums.items()}
        self.sums, self.n_steps = {}, 0
        return means


# Settings a resumed run may change without --resume-changed (dotted prefixes): where and
# how long it runs, how it logs, where the data lies (its content is fingerprinted).
FREE_ON_RESUME = ("name", "data.path", "data.simulate", "data.memory_limit_mb",
                  "data.val_max_events", "train.epochs", "train.max_steps", "train.output_dir",
                  "train.threads", "train.device", "train.log_every", "train.val_every",
                  "tracking")


def resume_changes(saved: ExperimentConfig, current: ExperimentConfig) -> list[str]:
    """"key: old -> new" for every setting outside FREE_ON_RESUME that differs."""
    before, after = saved.flat(), current.flat()
    return [f"{key}: {before.get(key)!r} -> {after.get(key)!r}"
            for key in sorted(set(before) | set(after))
            if before.get(key) != after.get(key)
            and not any(key == free or key.startswith(free + ".") for free in FREE_ON_RESUME)]


class NonFiniteWatch:
    """The first step at which each loss term was NaN or inf, tracked on the device without a
    host synchronisation per step; :meth:`check` (at log steps and before anything is saved)
    raises a TrainingError naming the first step and term."""

    def __init__(self) -> None:
        self.names: list[str] = []
        self.first_bad_T: torch.Tensor | None = None
        self.value_T: torch.Tensor | None = None

    def update(self, scalars: dict[str, torch.Tensor], step: int) -> None:
        if self.first_bad_T is None:
            self.names = [name for name in scalars if not name.startswith("expert_fraction")]
        values_T = torch.stack([torch.as_tensor(scalars[name]).detach().float().reshape(())
                                for name in self.names])
        if self.first_bad_T is None:
            self.first_bad_T = torch.full_like(values_T, -1, dtype=torch.long)
            self.value_T = torch.zeros_like(values_T)
        newly_T = ~torch.isfinite(values_T) & (self.first_bad_T < 0)
        self.first_bad_T = torch.where(newly_T, torch.full_like(self.first_bad_T, step),
                                       self.first_bad_T)
        self.value_T = torch.where(newly_T, values_T, self.value_T)

    def check(self) -> None:
        if self.first_bad_T is None:
            return
        steps = self.first_bad_T.cpu().tolist()
        bad = [(step, name, value) for step, name, value
               in zip(steps, self.names, self.value_T.cpu().tolist()) if step >= 0]
        if not bad:
            return
        step, name, value = min(bad)
        others = [n for s, n, _ in bad if s == step and n != name]
        also = f" (at the same step also {', '.join(others[:4])})" if others else ""
        raise TrainingError(
            f"training stopped at step {step}: the loss term {name} is {value}{also}; the "
            "networks diverged and no model file was written for these steps: lower the "
            "learning rates (optim.*) or the loss weights (loss.*), or check the data")


class Trainer:
    """Trains router, experts and auxiliary regressor on one event file.

    Args:
        config: the experiment configuration.
        context: torch.distributed rank and world size (single process by default).
        tracker: experiment tracker (rank 0); NullTracker by default.
    """

    def __init__(self, config: ExperimentConfig, *, context: DistributedContext | None = None,
                 tracker: NullTracker | None = None) -> None:
        self.config = config
        self.context = context or DistributedContext()
        self.tracker = tracker or NullTracker()
        self.device = select_device(config.train.device)
        self.stop_event = threading.Event()
        if config.train.threads:
            torch.set_num_threads(config.train.threads)
        if config.train.deterministic:
            os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # needed by CUDA
        torch.use_deterministic_algorithms(config.train.deterministic, warn_only=True)
        torch.manual_seed(config.train.seed)  # model initialisation

        data = config.data
        self.loader = EventLoader(
            data.path, split="train", batch_size=data.batch_size, seed=config.train.seed,
            min_photon_sum=data.min_photon_sum, max_photon_sum=data.max_photon_sum,
            memory_limit_bytes=int(data.memory_limit_mb * 2 ** 20), drop_last=True,
            rank=self.context.rank, world_size=self.context.world_size)
        if len(self.loader) == 0:
            raise ConfigError(f"{data.path}: fewer training events ({self.loader.n_events}) than "
                              f"one batch ({data.batch_size}); lower data.batch_size")
        self.detector = self.loader.info.detector
        self.image_shape = self.detector.shape
        spread = self.loader.column("spread")
        finite = spread[np.isfinite(spread)]
        self.spread_mean = float(finite.mean()) if len(finite) and finite.mean() > 0 else 1.0
        self._load_validation()

        self._build_networks()
        self.gate, self.gate_info = self._train_gate()
        self.noise = torch.Generator().manual_seed(config.train.seed + 1)

        self.epoch = 0
        self.batch_in_epoch = 0
        self.step = 0
        self.temperature = config.train.gumbel_temperature
        self.best_ws = math.inf
        self.untrained_ws: float | None = None
        self.run_id: str | None = None
        self.output_dir = Path(config.train.output_dir)
        self.watch = NonFiniteWatch()
        self.data_fingerprint, self.condition_ranges = self._describe_data()

    def _describe_data(self) -> tuple[str, dict[str, Any]]:
        """The training events' fingerprint, SHA-256 of their rows, conditions and photon sums
        (content, not the path: a copied file has the same one), and the range of each raw
        condition over what the model learnt from (stored in the model file: sampling warns
        outside it): every train-split event when the model has a gate (it learnt which
        particles leave no light from all of them), else the generators' events."""
        import hashlib

        rows = self.loader.indices
        with EventFile(self.config.data.path) as events:
            conditions_N9 = events.conditions()
            photon_sum_N = events.derived("photon_sum", rows)
            learnt_from = events.rows("train") if self.gate is not None else rows
        digest = hashlib.sha256(self.detector.name.encode())
        for values in (rows, conditions_N9[rows], photon_sum_N):
            digest.update(np.ascontiguousarray(values).tobytes())
        ranges = {"min": conditions_N9[learnt_from].min(axis=0).tolist(),
                  "max": conditions_N9[learnt_from].max(axis=0).tolist(),
                  "n_events": len(learnt_from)}
        return digest.hexdigest(), ranges

    def _build_networks(self) -> None:
        """Router, experts, discriminators and auxiliary regressor with their optimizers
        (initialised from torch's global seed, set just before)."""
        model, n_experts = self.config.model, self.config.model.n_experts
        self.n_experts = n_experts
        mixture = build_mixture(model, self.image_shape, self.loader.scaler)
        self.router = mixture.router.to(self.device)
        self.generator = mixture.generator.to(self.device)
        self.discriminator = ExpertDiscriminator(
            n_experts, self.image_shape, model.discriminator_channels,
            model.discriminator_features, model.dispatch, model.conditioning,
            model.radial_fibres, model.discriminator_sums)
        if self.discriminator.features is not None:
            self.discriminator.features.set_scaler(self.loader.scaler.mean,
                                                   self.loader.scaler.scale)
        self.discriminator.to(self.device)
        self.aux = AuxRegressor(self.image_shape, model.aux_channels).to(self.device)
        optim = self.config.optim
        betas = (optim.beta1, optim.beta2)
        self.opt_generator = ExpertAdam(self.generator.parameters(), n_experts,
                                        optim.lr_generator, betas)
        self.opt_discriminator = ExpertAdam(self.discriminator.parameters(), n_experts,
                                            optim.lr_discriminator, betas)
        self.opt_aux = torch.optim.Adam(self.aux.parameters(), optim.lr_aux, betas)
        self.opt_router = torch.optim.Adam(self.router.parameters(), optim.lr_router, betas)
        self._calibrate_heads()
        self.generator_ema = None
        if self.config.train.ema_decay > 0:
            self.generator_ema = copy.deepcopy(self.generator).requires_grad_(False)

    def _calibrate_heads(self) -> None:
        """Positional conditioning: fit the shower-placement maps of generators and
        discriminators to the centroids of up to CALIBRATION_EVENTS training showers (the same
        rows on every rank); the intensity head (model.intensity_head): its linear map to their
        log photon sums. A resumed run then loads its trained weights over them."""
        self.placement_rms: float | None = None  # the generator fit's RMS residual
        if self.generator.position is None and self.generator.intensity is None:
            return
        data = self.config.data
        with EventFile(data.path) as events:
            rows = events.rows("train", data.min_photon_sum,
                               data.max_photon_sum)[:CALIBRATION_EVENTS]
            conditions = self.loader.scaler.transform(events.conditions(rows))
            photons = torch.from_numpy(events.images(rows).astype(np.float32))
        centre_N2, valid_N = losses.image_centroid(torch.log1p(photons))
        keep = valid_N > 0
        if int(keep.sum()) < 2 * N_PLACEMENT:
            return  # too few showers to fit; the maps start at zero and are learned
        c_NK = torch.from_numpy(conditions)[keep].to(self.device)
        self.generator.calibrate_intensity(c_NK, photons[keep].sum(dim=(1, 2)).to(self.device))
        if self.generator.position is None:
            return
        centre_N2 = centre_N2[keep].to(self.device)
        self.placement_rms = calibrate_position(self.generator, c_NK, centre_N2)
        calibrate_position(self.discriminator, c_NK, centre_N2)

    def _train_gate(self) -> tuple[EmptyGate | None, dict[str, Any]]:
        """The empty-response gate on every event of the train split (expertsim.gate): 10-15 s
        on a CPU, the same on every rank (its own seed; torch's global stream untouched)."""
        settings = self.config.gate
        if not settings.enabled:
            return None, {"hidden": settings.hidden,
                          "report": {"trained": False, "reason": "gate.enabled is false"}}
        gate, report = train_gate(
            self.config.data.path, self.loader.scaler, steps=settings.steps,
            batch_size=settings.batch_size, lr=settings.lr, hidden=settings.hidden,
            seed=self.config.train.seed + 104729, device=self.device)
        return gate, {"hidden": settings.hidden, "report": report}

    # ------------------------------------------------------------------ data

    def _load_validation(self) -> None:
        data = self.config.data
        with EventFile(data.path) as events:
            index = events.rows("val", data.min_photon_sum,
                                data.max_photon_sum)[:data.val_max_events]
            if len(index) == 0:
                raise ConfigError(f"{data.path}: the validation split is empty after filters")
            conditions = events.conditions(index)
            self.val_channels = events.derived("channels", index).astype(np.float64)
            self.val_group = events.derived("group", index)
        self.val_conditions = torch.from_numpy(self.loader.scaler.transform(conditions))
        train_channels = self.loader.column("channels").astype(np.float64)
        mean_image_channels = np.broadcast_to(train_channels.mean(0), self.val_channels.shape)
        self.mean_image_ws = float(channel_wasserstein(mean_image_channels,
                                                       self.val_channels).mean())

    def _to_device(self, batch: Batch) -> DeviceBatch:
        rows, cols = self.image_shape
        position = batch.brightest.astype(np.float32) / np.array([rows - 1, cols - 1], np.float32)
        spread = batch.spread / self.spread_mean
        spread = np.where(np.isfinite(spread), spread, 1.0).astype(np.float32)
        arrays = (batch.images, batch.conditions, position,
                  (batch.photon_sum > 0).astype(np.float32), spread, batch.group.astype(np.int64))
        return DeviceBatch(*(torch.from_numpy(np.ascontiguousarray(v)).to(
            self.device, non_blocking=True) for v in arrays))

    def _noise(self, local_batch: int) -> tuple[torch.Tensor | None, ...]:
        """z1, z2 (B, Z), Gumbel noise (B, E) and, with the counting step or the energy score,
        uniforms (B, H, W) (a second set for the energy score) for this rank's slice of the
        global batch.

        Drawn for the whole global batch from one seeded stream, so the events get the same
        noise whatever the number of ranks.
        """
        global_batch = local_batch * self.context.world_size
        z_dim = self.config.model.noise_dim
        z1 = torch.randn(global_batch, z_dim, generator=self.noise)
        z2 = torch.randn(global_batch, z_dim, generator=self.noise)
        uniform = torch.rand(global_batch, self.n_experts, generator=self.noise)
        gumbel = -torch.log(-torch.log(uniform.clamp(1e-10, 1 - 1e-7)))
        energy = self.config.loss.energy_score > 0
        pixels, pixels2 = (torch.rand(global_batch, *self.image_shape, generator=self.noise)
                           if wanted else None
                           for wanted in (self.config.train.counting_step or energy, energy))
        part = slice(self.context.rank * local_batch, (self.context.rank + 1) * local_batch)
        return tuple(None if t is None else t[part].to(self.device)
                     for t in (z1, z2, gumbel, pixels, pixels2))

    def _autocast(self):
        if self.device.type == "cuda" and self.config.train.bf16:
            return torch.autocast("cuda", dtype=torch.bfloat16)
        return contextlib.nullcontext()

    # ------------------------------------------------------------------ steps

    def learning_rate_factor(self) -> float:
        """optim.schedule at this step: 1 (constant), or cosine from 1 at step 0 to
        optim.lr_final_fraction at the run's last step (train.max_steps, else all epochs)."""
        optim = self.config.optim
        if optim.schedule == "constant":
            return 1.0
        total = self.config.train.epochs * len(self.loader)
        if self.config.train.max_steps is not None:
            total = min(total, self.config.train.max_steps)
        progress = min(self.step / max(total - 1, 1), 1.0)
        final = optim.lr_final_fraction
        return final + (1 - final) * 0.5 * (1 + math.cos(math.pi * progress))

    def _apply_schedule(self) -> None:
        factor = self.learning_rate_factor()
        for optimizer, base in ((self.opt_generator, self.config.optim.lr_generator),
                                (self.opt_discriminator, self.config.optim.lr_discriminator)):
            for group in optimizer.param_groups:
                group["lr"] = base * factor

    def train_step(self, batch: Batch) -> StepResult:
        self._apply_schedule()
        events = self._to_device(batch)
        routing = self._route(events, len(batch))
        discriminator = self.discriminator_step(events, routing)
        aux_loss = self.aux_step(events)
        generator = self.generator_step(events, routing)
        shared = self.shared_start()
        if shared:
            self._copy_expert_zero()
        if shared or self.step < self.config.train.router_warm_start_steps:
            router = self.router_warm_start_step(routing.logits_BE, events.group_B)
        else:
            router = self.router_step(routing, generator)
        if self.config.train.balance_rate > 0 and not shared:
            self.router.rebalance(routing.count_E / routing.count_E.sum(),
                                  self.config.train.balance_rate)
        return StepResult(discriminator, generator, router, aux_loss, routing.count_E)

    def shared_start(self) -> bool:
        """Whether this step belongs to the shared start (train.shared_start_steps): every
        event is drawn and judged by expert 0, whose weights every expert then takes."""
        return self.n_experts > 1 and self.step < self.config.train.shared_start_steps

    @torch.no_grad()
    def _copy_expert_zero(self) -> None:
        """Give every expert expert 0's generator and discriminator weights, weight average
        and Adam moments, so that the experts leave the shared start as equal copies (and
        the model validated during it draws every event with the shared weights)."""
        modules = [self.generator, self.discriminator]
        if self.generator_ema is not None:
            modules.append(self.generator_ema)
        tensors = [parameter for module in modules for parameter in module.parameters()]
        for optimizer in (self.opt_generator, self.opt_discriminator):
            for state in optimizer.state.values():
                tensors += [state[key] for key in ("exp_avg", "exp_avg_sq") if key in state]
        for tensor in tensors:
            tensor[1:] = tensor[:1]

    def _route(self, events: DeviceBatch, local_batch: int) -> Routing:
        z1_BZ, z2_BZ, gumbel_BE, uniform_BHW, uniform2_BHW = self._noise(local_batch)
        logits_BE = self.router(events.c_BK)
        gates_BE, probs_BE = gumbel_route(logits_BE, gumbel_BE, self.temperature)
        mask_BE = gates_BE.detach()
        if self.shared_start():
            mask_BE = torch.zeros_like(mask_BE)
            mask_BE[:, 0] = 1
        count_E = all_reduce_sum(mask_BE.sum(dim=0), self.context)
        fraction_E = count_E / count_E.sum()
        if self.shared_start():  # the rate each expert gets at balanced routing
            fraction_E = torch.full_like(fraction_E, 1.0 / self.n_experts)
        scale_E = (fraction_E if self.config.optim.scale_lr_by_routed_fraction
                   else torch.ones_like(fraction_E))
        return Routing(z1_BZ, z2_BZ, logits_BE, gates_BE, probs_BE, mask_BE,
                       mask_BE.argmax(dim=1), count_E, scale_E, uniform_BHW, uniform2_BHW)

    def _as_seen(self, fake_BHW: torch.Tensor, routing: Routing) -> torch.Tensor:
        """A generated image as the discriminator sees it: counted like the sampler's output
        when train.counting_step is on (straight-through gradient), else as generated."""
        if not self.config.train.counting_step:
            return fake_BHW
        return counted_log_image(fake_BHW, routing.uniform_BHW)

    def discriminator_step(self, events: DeviceBatch, routing: Routing) -> DiscriminatorStep:
        c_BK, expert_B = events.c_BK, routing.expert_B
        mask_BE, count_E = routing.mask_BE, routing.count_E
        with torch.no_grad(), self._autocast():
            fake_BHW = self.generator(routing.z1_BZ, c_BK, expert_B)
        with self._autocast():
            real_logits_B, _ = self.discriminator(events.x_BHW, c_BK, expert_B)
            fake_logits_B, _ = self.discriminator(
                self._as_seen(fake_BHW, routing).to(events.x_BHW.dtype), c_BK, expert_B)
        loss_B = losses.discriminator_adversarial(real_logits_B.float(), fake_logits_B.float())
        loss = losses.routed_mean(loss_B, mask_BE, count_E)
        self.opt_discriminator.zero_grad(set_to_none=False)
        loss.backward()
        sum_gradients(self.discriminator.parameters(), self.context)
        self.opt_discriminator.set_expert_scale(routing.scale_E)
        self.opt_discriminator.step()
        with torch.no_grad():
            real_score = losses.routed_mean(torch.sigmoid(real_logits_B.float()), mask_BE, count_E)
            fake_score = losses.routed_mean(torch.sigmoid(fake_logits_B.float()), mask_BE, count_E)
        n_used = (count_E > 0).sum().clamp(min=1)
        return DiscriminatorStep(loss.detach(), real_score / n_used, fake_score / n_used)

    def aux_step(self, events: DeviceBatch) -> torch.Tensor:
        """Fit the brightest-fibre regressor on real, non-empty images."""
        with self._autocast():
            predicted_B2 = self.aux(events.x_BHW).float()
        n_valid = all_reduce_sum(events.valid_B.sum(), self.context).clamp(min=1)
        loss = ((((predicted_B2 - events.position_B2) ** 2).mean(dim=1) * events.valid_B).sum()
                / n_valid)
        self.opt_aux.zero_grad(set_to_none=False)
        loss.backward()
        sum_gradients(self.aux.parameters(), self.context)
        self.opt_aux.step()
        return loss.detach()

    def generator_step(self, events: DeviceBatch, routing: Routing) -> GeneratorStep:
        self.discriminator.requires_grad_(False)
        self.aux.requires_grad_(False)
        try:
            fake_BHW, features_BF, terms_B = self._generator_terms(events, routing)
            weights = self.config.loss
            total_B = (weights.adversarial * terms_B[0] + weights.diversity * terms_B[1]
                       + weights.intensity * terms_B[2] + weights.auxiliary * terms_B[3]
                       + weights.pixel_likelihood * terms_B[4] + weights.centroid * terms_B[5]
                       + weights.energy_score * terms_B[6])
            loss = losses.routed_mean(total_B, routing.mask_BE, routing.count_E)
            self.opt_generator.zero_grad(set_to_none=False)
            loss.backward()
        finally:
            self.discriminator.requires_grad_(True)
            self.aux.requires_grad_(True)
        sum_gradients(self.generator.parameters(), self.context)
        self.opt_generator.set_expert_scale(routing.scale_E)
        self.opt_generator.step()
        self._update_average()
        with torch.no_grad():
            parts = [losses.routed_mean(term_B, routing.mask_BE, routing.count_E)
                     for term_B in terms_B]
        return GeneratorStep(loss.detach(), *parts, terms_B[0].detach(), features_BF.detach())

    @torch.no_grad()
    def _update_average(self) -> None:
        """Move the generator's weight average towards the weights (train.ema_decay)."""
        if self.generator_ema is None:
            return
        decay = min(self.config.train.ema_decay, (1 + self.step) / (10 + self.step))
        torch._foreach_lerp_(list(self.generator_ema.parameters()),
                             list(self.generator.parameters()), 1.0 - decay)

    def _generator_terms(self, events: DeviceBatch, routing: Routing):
        """G(z1, c), its discriminator features and the per-event expert loss terms
        (adversarial, diversity, intensity, auxiliary, pixel likelihood, centroid, energy
        score); a term whose weight is 0 is 0."""
        weights, c_BK, expert_B = self.config.loss, events.c_BK, routing.expert_B
        with self._autocast():
            fake_BHW = self.generator(routing.z1_BZ, c_BK, expert_B)
            seen_BHW = self._as_seen(fake_BHW, routing)
            logits_B, features_BF = self.discriminator(seen_BHW, c_BK, expert_B)
        zero_B = torch.zeros(routing.z1_BZ.shape[0], device=self.device)
        adversarial_B = losses.generator_adversarial(logits_B.float())
        diversity_B = energy_B = zero_B
        if weights.diversity > 0 or weights.energy_score > 0:
            with self._autocast():
                fake2_BHW = self.generator(routing.z2_BZ, c_BK, expert_B)
        if weights.diversity > 0:
            with self._autocast():
                _, features2_BF = self.discriminator(self._as_seen(fake2_BHW, routing), c_BK,
                                                     expert_B)
            diversity_B = losses.sdi_diversity(features_BF.float(), features2_BF.float(),
                                               routing.z1_BZ, routing.z2_BZ, events.spread_B)
        if weights.energy_score > 0:
            # with the counting step the discriminator's input is already G(z1, c) counted
            # with these uniforms: the inverse-CDF draw (48 passes over the image) runs once
            counted_BHW = (seen_BHW if self.config.train.counting_step
                           else counted_log_image(fake_BHW, routing.uniform_BHW))
            energy_B = losses.energy_score(counted_BHW,
                                           counted_log_image(fake2_BHW, routing.uniform2_BHW),
                                           events.x_BHW, weights.energy_scales)
        intensity_B, auxiliary_B, pixel_B, centroid_B = self._anchor_terms(fake_BHW, events,
                                                                            routing, zero_B)
        return fake_BHW, features_BF, (adversarial_B, diversity_B, intensity_B, auxiliary_B,
                                       pixel_B, centroid_B, energy_B)

    def _anchor_terms(self, fake_BHW: torch.Tensor, events: DeviceBatch, routing: Routing,
                      zero_B: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """The paired terms that pull G(z1, c) towards the real response of the same particle:
        intensity, auxiliary, pixel likelihood and centroid (0 where the weight is 0)."""
        weights, c_BK, expert_B = self.config.loss, events.c_BK, routing.expert_B
        intensity_B = auxiliary_B = pixel_B = centroid_B = zero_B
        if weights.intensity > 0:
            intensity_B = losses.intensity(fake_BHW, events.x_BHW)
        if weights.auxiliary > 0:
            with self._autocast():
                predicted_B2 = self.aux(fake_BHW)
            auxiliary_B = losses.auxiliary(predicted_B2.float(), events.position_B2,
                                           events.valid_B)
        if weights.pixel_likelihood > 0:
            pixel_B = losses.pixel_likelihood(fake_BHW, events.x_BHW)
        if weights.centroid > 0:
            with self._autocast():
                centre_B2 = self.generator.centre(c_BK, expert_B)
            centroid_B = losses.centroid(fake_BHW, events.x_BHW, centre_B2)
        return intensity_B, auxiliary_B, pixel_B, centroid_B

    def router_step(self, routing: Routing, generator: GeneratorStep) -> RouterStep:
        weights, context, gates_BE = self.config.loss, self.context, routing.gates_BE
        n_events = all_reduce_sum(torch.tensor(float(gates_BE.shape[0]), device=self.device),
                                  context)
        feedback = global_sum(losses.router_gan_feedback(gates_BE, generator.adversarial_B)
                              .sum(), context) / n_events
        gate_sum_E = global_sum(gates_BE.sum(dim=0), context)
        feature_sum_EF = global_sum(gates_BE.T @ generator.features_BF.float(), context)
        # an expert without events has a zero sum: dividing it by a tiny count would turn the
        # gradient of its gates into a huge push (it drove every mixture to one expert)
        differentiation = losses.expert_differentiation(
            feature_sum_EF / gate_sum_E.clamp(min=1.0).unsqueeze(1), gate_sum_E.detach() > 0)
        mean_probs_E = global_sum(routing.probs_BE.sum(dim=0), context) / n_events
        entropy = losses.utilisation_entropy(mean_probs_E)
        balance = losses.load_balancing(gate_sum_E.detach() / n_events, mean_probs_E)
        loss = (weights.router_gan * feedback + weights.differentiation * differentiation
                + weights.utilisation_entropy * entropy + weights.load_balancing * balance)
        self._update_router(loss)
        return RouterStep(loss.detach(), feedback.detach(), differentiation.detach(),
                          entropy.detach(), balance.detach())

    def router_warm_start_step(self, logits_BE: torch.Tensor, group_B: torch.Tensor
                               ) -> RouterStep:
        """Fit the router to the intensity groups (group g -> expert floor(g * E / 3))."""
        target_B = group_B.clamp(0, N_GROUPS - 1) * self.n_experts // N_GROUPS
        n_events = all_reduce_sum(torch.tensor(float(len(group_B)), device=self.device),
                                  self.context)
        loss = F.cross_entropy(logits_BE, target_B, reduction="sum") / n_events
        self._update_router(loss)
        zero = torch.zeros((), device=self.device)
        return RouterStep(loss.detach(), zero, zero, zero, zero)

    def _update_router(self, loss: torch.Tensor) -> None:
        self.opt_router.zero_grad(set_to_none=False)
        loss.backward()
        sum_gradients(self.router.parameters(), self.context)
        self.opt_router.step()

    # ------------------------------------------------------------------ validation

    def trained_model(self) -> TrainedModel:
        """The live router and generator (its weight average with train.ema_decay) as a
        TrainedModel (shares their weights)."""
        generator = self.generator if self.generator_ema is None else self.generator_ema
        return TrainedModel(MixtureOfExperts(self.router, generator),
                            scaler=self.loader.scaler, detector=self.detector, config=self.config,
                            gate=self.gate, gate_info=self.gate_info,
                            condition_ranges=self.condition_ranges)

    @torch.no_grad()
    def validate(self, batch_size: int = 1024) -> dict[str, float]:
        """Channel-WS of one generation per validation condition (fixed noise, Poisson counts
        as the sampler makes them), and routing."""
        model = self.trained_model()
        model.mixture.eval()
        noise = torch.Generator().manual_seed(self.config.train.seed + 7919)
        channels, experts = [], []
        for start in range(0, len(self.val_conditions), batch_size):
            c_BK = self.val_conditions[start:start + batch_size]
            with self._autocast():
                counts, expert_B = model.sample_counts(
                    model.noise(len(c_BK), noise), c_BK, seed=self.config.train.seed,
                    first_row=start, chunk_size=len(c_BK))
            channels.append(channel_sums(counts))
            experts.append(expert_B)
        self.router.train(), self.generator.train()
        ws_C = channel_wasserstein(np.concatenate(channels), self.val_channels)
        expert_N = np.concatenate(experts)
        metrics = {f"val/ws_ch{k + 1}": float(w) for k, w in enumerate(ws_C)}
        metrics["val/ws_mean"] = float(ws_C.mean())
        metrics["val/router_group_agreement"] = routing_agreement(expert_N, self.val_group,
                                                                  self.n_experts)
        for expert in range(self.n_experts):
            metrics[f"val/expert_fraction_{expert}"] = float((expert_N == expert).mean())
        return metrics

    # ------------------------------------------------------------------ state

    def state_dict(self) -> dict[str, Any]:
        return {
            "router": self.router.state_dict(), "generator": self.generator.state_dict(),
            "discriminator": self.discriminator.state_dict(), "aux": self.aux.state_dict(),
            "opt_router": self.opt_router.state_dict(),
            "opt_generator": self.opt_generator.state_dict(),
            "opt_discriminator": self.opt_discriminator.state_dict(),
            "opt_aux": self.opt_aux.state_dict(),
            "noise_rng": self.noise.get_state(), "torch_rng": torch.get_rng_state(),
            "epoch": self.epoch, "batch_in_epoch": self.batch_in_epoch, "step": self.step,
            "temperature": self.temperature, "best_ws": self.best_ws,
            "untrained_ws": self.untrained_ws, "run_id": self.run_id,
            "data_fingerprint": self.data_fingerprint,
            "scaler_mean": torch.from_numpy(self.loader.scaler.mean),
            "scaler_scale": torch.from_numpy(self.loader.scaler.scale),
            **({} if self.generator_ema is None
               else {"generator_ema": self.generator_ema.state_dict()}),
            **({} if self.gate is None else {"gate": self.gate.state_dict()}),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for name in ("router", "generator", "discriminator", "aux", "opt_router",
                     "opt_generator", "opt_discriminator", "opt_aux"):
            getattr(self, name).load_state_dict(state[name])
        if self.generator_ema is not None:
            if "generator_ema" not in state:
                raise CheckpointError("the checkpoint has no generator weight average; resume "
                                      "with train.ema_decay as the run was made (0)")
            self.generator_ema.load_state_dict(state["generator_ema"])
        if self.gate is not None and "gate" in state:
            self.gate.load_state_dict(state["gate"])
        self.noise.set_state(state["noise_rng"])
        torch.set_rng_state(state["torch_rng"])
        for name in ("epoch", "batch_in_epoch", "step", "temperature", "best_ws",
                     "untrained_ws", "run_id"):
            setattr(self, name, state[name])

    def resume_from(self, path: str | Path, *, allow_changes: bool = False) -> list[str]:
        """Continue from a checkpoint; returns the settings that differ from the checkpoint's.

        The model section must match. Other settings (FREE_ON_RESUME aside) and the training
        data (its fingerprint) must match too, unless ``allow_changes``.
        """
        config, state = load_checkpoint(path)
        saved = config_from_dict(config, str(path))
        if saved.model != self.config.model:
            raise CheckpointError(f"{path}: its model section differs from this run's config; "
                                  "resume with the config the checkpoint was made with")
        changes = resume_changes(saved, self.config)
        stored_fingerprint = state.get("data_fingerprint")
        if stored_fingerprint is not None and stored_fingerprint != self.data_fingerprint:
            changes.append(f"training data: {self.config.data.path} holds other events than "
                           "the run was trained on")
        if changes and not allow_changes:
            raise CheckpointError(
                f"{path}: this run's settings differ from the checkpoint's ("
                + "; ".join(changes[:3]) + (f"; {len(changes) - 3} more" if len(changes) > 3
                                            else "")
                + "): resume with the config it was made with, start over with --no-resume "
                "(or another train.output_dir), or pass --resume-changed to go on with the "
                "new settings")
        try:
            self.load_state_dict(state)
        except CheckpointError as error:
            raise CheckpointError(f"{path}: {error}") from None
        except (RuntimeError, KeyError, ValueError) as error:
            raise CheckpointError(
                f"{path}: its networks do not fit this version's ({str(error).splitlines()[0]}); "
                "it was probably written by an older ExpertSim: start over with --no-resume or "
                "another train.output_dir") from None
        return changes

    def save_checkpoint(self, name: str) -> Path:
        return save_checkpoint(self.output_dir / name, config=self.config.to_dict(),
                               state=self.state_dict())

    def save_model(self, name: str = "model.pt") -> Path:
        return self.trained_model().save(
            self.output_dir / name,
            make_provenance(made_by="expertsim train", seed=self.config.train.seed,
                            config={"epoch": self.epoch, "step": self.step},
                            inputs=[self.config.data.path]))

    # ------------------------------------------------------------------ orchestration

    def request_stop(self) -> None:
        """Ask fit() to checkpoint and return after the current step (signal handlers)."""
        self.stop_event.set()

    def fit(self, progress=None) -> FitResult:
        """Train until the configured epochs (or max_steps, or a stop request).

        ``progress``, if given, is called with the trainer after every step.
        """
        self._begin()
        window, history, status = LogWindow(), [], "finished"
        while self.epoch < self.config.train.epochs and status == "finished":
            status = self._train_epoch(window, history, progress)
        self._end(status)
        return FitResult(status, self.epoch, self.step, self.best_ws, self.output_dir,
                         self.run_id, history, self.untrained_ws, self.mean_image_ws,
                         self.context.rank, self.gate_info["report"])

    def _begin(self) -> None:
        """Start tracking (rank 0) and, on a fresh run, validate the untrained model."""
        if not self.context.is_main:
            return
        self.output_dir.mkdir(parents=True, exist_ok=True)
        self.tracker.start(self.config.flat(), run_id=self.run_id)
        self.run_id = self.tracker.run_id
        gate_val = self.gate_info["report"].get("val")
        if gate_val:
            self.tracker.log_metrics({f"gate/{k}": v for k, v in gate_val.items()}, step=0)
        if self.step == 0:
            first = self.validate()
            self.untrained_ws = first["val/ws_mean"]
            self.tracker.log_metrics({**first, "val/ws_mean_image_baseline": self.mean_image_ws},
                                     step=0)

    def _train_epoch(self, window: LogWindow, history: list[dict[str, float]],
                     progress) -> str:
        """Train the rest of the current epoch; returns "finished" when the epoch ended,
        else "preempted" (stop request) or "stopped" (max_steps)."""
        train = self.config.train
        self.loader.set_epoch(self.epoch)
        for index, batch in enumerate(self.loader):
            if index < self.batch_in_epoch:
                continue  # resumed mid-epoch: these batches were trained on already
            scalars = self.train_step(batch).scalars()
            window.add(scalars)
            self.step, self.batch_in_epoch = self.step + 1, index + 1
            self.watch.update(scalars, self.step)
            if progress is not None:
                progress(self)
            at_log_step = self.step % train.log_every == 0
            if at_log_step:
                self.watch.check()
                logged = window.flush()
                history.append({"step": self.step, **logged})
                if self.context.is_main:
                    self.tracker.log_metrics(logged, step=self.step)
            if self._stop_requested(at_log_step):
                return "preempted"
            if train.max_steps is not None and self.step >= train.max_steps:
                return "stopped"
        self.epoch, self.batch_in_epoch = self.epoch + 1, 0
        self.temperature = max(train.gumbel_temperature_min,
                               self.temperature * train.gumbel_anneal)
        if self.context.is_main and (self.epoch % train.val_every == 0
                                     or self.epoch == train.epochs):
            self._end_of_epoch_validation()
        return "finished"

    def _end(self, status: str) -> None:
        """Save the last checkpoint (rank 0); unless pre-empted (it will be resumed), make sure
        a model file exists and log the artifacts."""
        self.watch.check()
        if not self.context.is_main:
            return
        self.save_checkpoint("checkpoint_last.pt")
        if status != "preempted":
            if not math.isfinite(self.best_ws):
                # no validation chose a model (the run ended inside its first epoch): the final
                # weights are the model
                self.save_model("model.pt")
            self._log_artifacts()

    def _stop_requested(self, at_log_step: bool) -> bool:
        """Whether a stop was asked for. Under DDP the ranks agree through one all-reduce per
        log window (at log steps only), so that they stop at the same step without a host
        synchronisation every step."""
        if not self.context.enabled:
            return self.stop_event.is_set()
        if not at_log_step:
            return False
        flag = torch.tensor(float(self.stop_event.is_set()), device=self.device)
        return all_reduce_sum(flag, self.context).item() > 0

    def _end_of_epoch_validation(self) -> None:
        self.watch.check()
        metrics = self.validate()
        metrics["train/temperature"] = self.temperature
        metrics["epoch"] = self.epoch
        self.tracker.log_metrics(metrics, step=self.step)
        if metrics["val/ws_mean"] < self.best_ws:
            self.best_ws = metrics["val/ws_mean"]
            self.save_checkpoint("checkpoint_best.pt")
            self.save_model("model.pt")

    def _log_artifacts(self) -> None:
        for name in ("model.pt", "checkpoint_last.pt", "checkpoint_best.pt"):
            if (self.output_dir / name).exists():
                self.tracker.log_artifact(self.output_dir / name)

