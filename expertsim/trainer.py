"""Training the Mixture-of-Generative-Experts.

``Trainer.fit`` orchestrates; ``discriminator_step``, ``aux_step``, ``generator_step`` and
``router_step`` each do one update and return a small dataclass of detached tensors (no host
synchronisation inside a step; numbers are pulled to the host only when logged). The trainer
is stateful (``state_dict`` / ``load_state_dict``), so resuming is one call.

Legend: B events, E experts, Z noise, K = 9 conditions, H x W image, F features.
"""

from __future__ import annotations

import contextlib
import math
import os
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from scipy.optimize import linear_sum_assignment

from expertsim.checkpoint import load_checkpoint, save_checkpoint, save_model_file
from expertsim.config import ExperimentConfig, config_from_dict
from expertsim.detector import channel_sums
from expertsim.distributed import (DistributedContext, all_reduce_sum, global_sum,
                                   sum_gradients)
from expertsim.errors import CheckpointError, ConfigError
from expertsim.eventfile import SPLIT_NAMES, open_event_file
from expertsim.loader import Batch, EventLoader
from expertsim.metrics import channel_wasserstein
from expertsim.models import (AuxRegressor, ExpertDiscriminator, ExpertGenerator,
                              MixtureOfExperts, Router, gumbel_route)
from expertsim.models import losses
from expertsim.optim import ExpertAdam
from expertsim.provenance import make_provenance
from expertsim.sampling import poisson_counts
from expertsim.tracking import NullTracker

N_GROUPS = 3


def select_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"train.device={name!r} but CUDA is not available here; use auto or cpu")
    return torch.device(name)


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
               "g_auxiliary": self.generator.auxiliary, "router_loss": self.router.loss,
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

        model, n_experts = config.model, config.model.n_experts
        self.n_experts = n_experts
        self.router = Router(n_experts, model.router_hidden).to(self.device)
        self.generator = ExpertGenerator(n_experts, self.image_shape, model.noise_dim,
                                         model.generator_channels,
                                         model.dispatch).to(self.device)
        self.discriminator = ExpertDiscriminator(
            n_experts, self.image_shape, model.discriminator_channels,
            model.discriminator_features, model.dispatch).to(self.device)
        self.aux = AuxRegressor(self.image_shape, model.aux_channels).to(self.device)
        optim = config.optim
        betas = (optim.beta1, optim.beta2)
        self.opt_generator = ExpertAdam(self.generator.parameters(), n_experts,
                                        optim.lr_generator, betas)
        self.opt_discriminator = ExpertAdam(self.discriminator.parameters(), n_experts,
                                            optim.lr_discriminator, betas)
        self.opt_aux = torch.optim.Adam(self.aux.parameters(), optim.lr_aux, betas)
        self.opt_router = torch.optim.Adam(self.router.parameters(), optim.lr_router, betas)
        self.noise = torch.Generator().manual_seed(config.train.seed + 1)

        self.epoch = 0
        self.batch_in_epoch = 0
        self.step = 0
        self.temperature = config.train.gumbel_temperature
        self.best_ws = math.inf
        self.untrained_ws: float | None = None
        self.run_id: str | None = None
        self.output_dir = Path(config.train.output_dir)

    # ------------------------------------------------------------------ data

    def _load_validation(self) -> None:
        data = self.config.data
        with open_event_file(data.path) as handle:
            keep = handle["split"][:] == SPLIT_NAMES["val"]
            photon_sum = handle["derived/photon_sum"][:]
            if data.min_photon_sum is not None:
                keep &= photon_sum >= data.min_photon_sum
            if data.max_photon_sum is not None:
                keep &= photon_sum <= data.max_photon_sum
            index = np.flatnonzero(keep)[:data.val_max_events]
            if len(index) == 0:
                raise ConfigError(f"{data.path}: the validation split is empty after filters")
            conditions = handle["conditions"][index].astype(np.float64)
            self.val_channels = handle["derived/channels"][index].astype(np.float64)
            self.val_group = handle["derived/group"][index]
        mean, scale = self.loader.mean_9, self.loader.scale_9
        self.val_conditions = torch.from_numpy(((conditions - mean) / scale).astype(np.float32))
        train_channels = self.loader.column("channels").astype(np.float64)
        mean_image_channels = np.broadcast_to(train_channels.mean(0), self.val_channels.shape)
        self.mean_image_ws = float(channel_wasserstein(mean_image_channels,
                                                       self.val_channels).mean())

    def _to_device(self, batch: Batch) -> dict[str, torch.Tensor]:
        rows, cols = self.image_shape
        position = batch.brightest.astype(np.float32) / np.array([rows - 1, cols - 1], np.float32)
        spread = batch.spread / self.spread_mean
        spread = np.where(np.isfinite(spread), spread, 1.0).astype(np.float32)
        arrays = {"x": batch.images, "c": batch.conditions, "position": position,
                  "valid": (batch.photon_sum > 0).astype(np.float32), "spread": spread,
                  "group": batch.group.astype(np.int64)}
        return {k: torch.from_numpy(np.ascontiguousarray(v)).to(self.device, non_blocking=True)
                for k, v in arrays.items()}

    def _noise(self, local_batch: int) -> tuple[torch.Tensor, ...]:
        """z1, z2 (B, Z) and Gumbel noise (B, E) for this rank's slice of the global batch.

        Drawn for the whole global batch from one seeded stream, so the events get the same
        noise whatever the number of ranks.
        """
        global_batch = local_batch * self.context.world_size
        z_dim = self.config.model.noise_dim
        z1 = torch.randn(global_batch, z_dim, generator=self.noise)
        z2 = torch.randn(global_batch, z_dim, generator=self.noise)
        uniform = torch.rand(global_batch, self.n_experts, generator=self.noise)
        gumbel = -torch.log(-torch.log(uniform.clamp(1e-10, 1 - 1e-7)))
        part = slice(self.context.rank * local_batch, (self.context.rank + 1) * local_batch)
        return tuple(t[part].to(self.device) for t in (z1, z2, gumbel))

    def _autocast(self):
        if self.device.type == "cuda" and self.config.train.bf16:
            return torch.autocast("cuda", dtype=torch.bfloat16)
        return contextlib.nullcontext()

    # ------------------------------------------------------------------ steps

    def train_step(self, batch: Batch) -> StepResult:
        tensors = self._to_device(batch)
        z1, z2, gumbel = self._noise(len(batch))
        logits_BE = self.router(tensors["c"])
        gates_BE, probs_BE = gumbel_route(logits_BE, gumbel, self.temperature)
        mask_BE = gates_BE.detach()
        expert_B = mask_BE.argmax(dim=1)
        count_E = all_reduce_sum(mask_BE.sum(dim=0), self.context)
        fraction_E = count_E / count_E.sum()
        scale_E = (fraction_E if self.config.optim.scale_lr_by_routed_fraction
                   else torch.ones_like(fraction_E))

        discriminator = self.discriminator_step(tensors, z1, expert_B, mask_BE, count_E, scale_E)
        aux_loss = self.aux_step(tensors)
        generator = self.generator_step(tensors, z1, z2, expert_B, mask_BE, count_E, scale_E)
        if self.step < self.config.train.router_warm_start_steps:
            router = self.router_warm_start_step(logits_BE, tensors["group"])
        else:
            router = self.router_step(gates_BE, probs_BE, mask_BE, generator)
        return StepResult(discriminator, generator, router, aux_loss, count_E)

    def discriminator_step(self, t: dict, z1_BZ: torch.Tensor, expert_B: torch.Tensor,
                           mask_BE: torch.Tensor, count_E: torch.Tensor, scale_E: torch.Tensor
                           ) -> DiscriminatorStep:
        with torch.no_grad(), self._autocast():
            fake_BHW = self.generator(z1_BZ, t["c"], expert_B)
        with self._autocast():
            real_logits_B, _ = self.discriminator(t["x"], t["c"], expert_B)
            fake_logits_B, _ = self.discriminator(fake_BHW.to(t["x"].dtype), t["c"], expert_B)
        loss_B = losses.discriminator_adversarial(real_logits_B.float(), fake_logits_B.float())
        loss = losses.routed_mean(loss_B, mask_BE, count_E)
        self.opt_discriminator.zero_grad(set_to_none=False)
        loss.backward()
        sum_gradients(self.discriminator.parameters(), self.context)
        self.opt_discriminator.set_expert_scale(scale_E)
        self.opt_discriminator.step()
        with torch.no_grad():
            real_score = losses.routed_mean(torch.sigmoid(real_logits_B.float()), mask_BE, count_E)
            fake_score = losses.routed_mean(torch.sigmoid(fake_logits_B.float()), mask_BE, count_E)
        n_used = (count_E > 0).sum().clamp(min=1)
        return DiscriminatorStep(loss.detach(), real_score / n_used, fake_score / n_used)

    def aux_step(self, t: dict) -> torch.Tensor:
        """Fit the brightest-fibre regressor on real, non-empty images."""
        with self._autocast():
            predicted_B2 = self.aux(t["x"]).float()
        n_valid = all_reduce_sum(t["valid"].sum(), self.context).clamp(min=1)
        loss = (((predicted_B2 - t["position"]) ** 2).mean(dim=1) * t["valid"]).sum() / n_valid
        self.opt_aux.zero_grad(set_to_none=False)
        loss.backward()
        sum_gradients(self.aux.parameters(), self.context)
        self.opt_aux.step()
        return loss.detach()

    def generator_step(self, t: dict, z1_BZ: torch.Tensor, z2_BZ: torch.Tensor,
                       expert_B: torch.Tensor, mask_BE: torch.Tensor, count_E: torch.Tensor,
                       scale_E: torch.Tensor) -> GeneratorStep:
        weights, c_BK = self.config.loss, t["c"]
        self.discriminator.requires_grad_(False)
        self.aux.requires_grad_(False)
        try:
            with self._autocast():
                fake_BHW = self.generator(z1_BZ, c_BK, expert_B)
                logits_B, features_BF = self.discriminator(fake_BHW, c_BK, expert_B)
            zero_B = torch.zeros(z1_BZ.shape[0], device=self.device)
            adversarial_B = losses.generator_adversarial(logits_B.float())
            diversity_B = intensity_B = auxiliary_B = zero_B
            if weights.diversity > 0:
                with self._autocast():
                    fake2_BHW = self.generator(z2_BZ, c_BK, expert_B)
                    _, features2_BF = self.discriminator(fake2_BHW, c_BK, expert_B)
                diversity_B = losses.sdi_diversity(features_BF.float(), features2_BF.float(),
                                                   z1_BZ, z2_BZ, t["spread"])
            if weights.intensity > 0:
                intensity_B = losses.intensity(fake_BHW, t["x"])
            if weights.auxiliary > 0:
                with self._autocast():
                    predicted_B2 = self.aux(fake_BHW)
                auxiliary_B = losses.auxiliary(predicted_B2.float(), t["position"], t["valid"])
            total_B = (weights.adversarial * adversarial_B + weights.diversity * diversity_B
                       + weights.intensity * intensity_B + weights.auxiliary * auxiliary_B)
            loss = losses.routed_mean(total_B, mask_BE, count_E)
            self.opt_generator.zero_grad(set_to_none=False)
            loss.backward()
        finally:
            self.discriminator.requires_grad_(True)
            self.aux.requires_grad_(True)
        sum_gradients(self.generator.parameters(), self.context)
        self.opt_generator.set_expert_scale(scale_E)
        self.opt_generator.step()
        with torch.no_grad():
            parts = [losses.routed_mean(term, mask_BE, count_E) for term in
                     (adversarial_B, diversity_B, intensity_B, auxiliary_B)]
        return GeneratorStep(loss.detach(), *parts, adversarial_B.detach(), features_BF.detach())

    def router_step(self, gates_BE: torch.Tensor, probs_BE: torch.Tensor, mask_BE: torch.Tensor,
                    generator: GeneratorStep) -> RouterStep:
        weights = self.config.loss
        context = self.context
        n_events = all_reduce_sum(torch.tensor(float(gates_BE.shape[0]), device=self.device),
                                  context)
        feedback = global_sum(losses.router_gan_feedback(gates_BE, generator.adversarial_B)
                              .sum(), context) / n_events
        gate_sum_E = global_sum(gates_BE.sum(dim=0), context)
        feature_sum_EF = global_sum(gates_BE.T @ generator.features_BF.float(), context)
        differentiation = losses.expert_differentiation(
            feature_sum_EF / gate_sum_E.clamp(min=1e-6).unsqueeze(1))
        mean_probs_E = global_sum(probs_BE.sum(dim=0), context) / n_events
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

    def mixture(self) -> MixtureOfExperts:
        return MixtureOfExperts(self.router, self.generator).eval()

    @torch.no_grad()
    def validate(self, batch_size: int = 1024) -> dict[str, float]:
        """Channel-WS of one generation per validation condition (fixed noise, Poisson counts
        as the sampler makes them), and routing."""
        mixture = self.mixture()
        noise = torch.Generator().manual_seed(self.config.train.seed + 7919)
        channels, experts = [], []
        for start in range(0, len(self.val_conditions), batch_size):
            c_BK = self.val_conditions[start:start + batch_size]
            z_BZ = torch.randn(len(c_BK), self.config.model.noise_dim, generator=noise)
            with self._autocast():
                image_BHW, expert_B = mixture(z_BZ.to(self.device), c_BK.to(self.device))
            expected = torch.expm1(image_BHW.float()).cpu().numpy()
            counts = poisson_counts(expected, self.config.train.seed, start)  # as `sample`
            channels.append(channel_sums(counts))
            experts.append(expert_B.cpu().numpy())
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
            "scaler_mean": torch.from_numpy(self.loader.mean_9),
            "scaler_scale": torch.from_numpy(self.loader.scale_9),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for name in ("router", "generator", "discriminator", "aux", "opt_router",
                     "opt_generator", "opt_discriminator", "opt_aux"):
            getattr(self, name).load_state_dict(state[name])
        self.noise.set_state(state["noise_rng"])
        torch.set_rng_state(state["torch_rng"])
        for name in ("epoch", "batch_in_epoch", "step", "temperature", "best_ws",
                     "untrained_ws", "run_id"):
            setattr(self, name, state[name])

    def resume_from(self, path: str | Path) -> None:
        config, state = load_checkpoint(path)
        if config_from_dict(config).model != self.config.model:
            raise CheckpointError(f"{path}: its model section differs from this run's config; "
                                  "resume with the config the checkpoint was made with")
        self.load_state_dict(state)

    def save_checkpoint(self, name: str) -> Path:
        return save_checkpoint(self.output_dir / name, config=self.config.to_dict(),
                               state=self.state_dict())

    def save_model(self, name: str = "model.pt") -> Path:
        return save_model_file(
            self.output_dir / name, config=self.config.to_dict(), detector=self.detector.name,
            image_shape=self.image_shape, router=self.router.state_dict(),
            generator=self.generator.state_dict(), scaler_mean=self.loader.mean_9,
            scaler_scale=self.loader.scale_9,
            provenance=make_provenance(made_by="expertsim train", seed=self.config.train.seed,
                                       config={"epoch": self.epoch, "step": self.step},
                                       inputs=[self.config.data.path]))

    # ------------------------------------------------------------------ orchestration

    def request_stop(self) -> None:
        """Ask fit() to checkpoint and return after the current step (signal handlers)."""
        self.stop_event.set()

    def fit(self, progress=None) -> FitResult:
        """Train until the configured epochs (or max_steps, or a stop request)."""
        train, main = self.config.train, self.context.is_main
        if main:
            self.output_dir.mkdir(parents=True, exist_ok=True)
            self.tracker.start(self.config.flat(), run_id=self.run_id)
            self.run_id = self.tracker.run_id
        history: list[dict[str, float]] = []
        if main and self.step == 0:
            first = self.validate()
            self.untrained_ws = first["val/ws_mean"]
            self.tracker.log_metrics({**first, "val/ws_mean_image_baseline": self.mean_image_ws},
                                     step=0)
        status, sums, n_summed = "finished", {}, 0
        while self.epoch < train.epochs and status == "finished":
            self.loader.set_epoch(self.epoch)
            for index, batch in enumerate(self.loader):
                if index < self.batch_in_epoch:
                    continue  # resumed mid-epoch: these batches were trained on already
                result = self.train_step(batch)
                self.step, self.batch_in_epoch = self.step + 1, index + 1
                for key, value in result.scalars().items():
                    sums[key] = sums.get(key, 0.0) + value
                n_summed += 1
                if progress is not None:
                    progress(self)
                if self.step % train.log_every == 0:
                    logged = {f"train/{k}": float(v) / n_summed for k, v in sums.items()}
                    history.append({"step": self.step, **logged})
                    sums, n_summed = {}, 0
                    if main:
                        self.tracker.log_metrics(logged, step=self.step)
                if self._stop_requested():
                    status = "preempted"
                elif train.max_steps is not None and self.step >= train.max_steps:
                    status = "stopped"
                if status != "finished":
                    break
            else:
                self.epoch, self.batch_in_epoch = self.epoch + 1, 0
                self.temperature = max(train.gumbel_temperature_min,
                                       self.temperature * train.gumbel_anneal)
                if main and (self.epoch % train.val_every == 0 or self.epoch == train.epochs):
                    self._end_of_epoch_validation()
        if main:
            self.save_checkpoint("checkpoint_last.pt")
            # no validation chose a model (the run ended inside its first epoch): the final
            # weights are the model; a pre-empted run writes none (it will be resumed)
            if status != "preempted" and not math.isfinite(self.best_ws):
                self.save_model("model.pt")
            if status != "preempted":
                self._log_artifacts()
        return FitResult(status, self.epoch, self.step, self.best_ws, self.output_dir,
                         self.run_id, history)

    def _stop_requested(self) -> bool:
        """Whether any rank was asked to stop; ranks agree so that they stop at the same step."""
        if not self.context.enabled:
            return self.stop_event.is_set()
        flag = torch.tensor(float(self.stop_event.is_set()), device=self.device)
        return all_reduce_sum(flag, self.context).item() > 0

    def _end_of_epoch_validation(self) -> None:
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


def routing_agreement(expert_N: np.ndarray, group_N: np.ndarray, n_experts: int) -> float:
    """Fraction of events whose expert matches their intensity group under the best one-to-one
    assignment of experts to groups (1 = the router reproduces the physical partition)."""
    confusion = np.zeros((n_experts, N_GROUPS))
    np.add.at(confusion, (expert_N, np.clip(group_N, 0, N_GROUPS - 1)), 1)
    rows, cols = linear_sum_assignment(-confusion)
    return float(confusion[rows, cols].sum() / max(len(expert_N), 1))
