"""Distillation: a lighter generator trained to draw what a trained mixture draws.

The generators' convolutions are most of the cost of a particle (README, "Speed"); a
generator with fewer channels is cheaper, but trained adversarially from scratch it loses
fidelity. A generator is a deterministic function of its noise and conditions, (z, c) ->
log(1 + expected photons per fibre), so a smaller one can instead learn the trained model's
function directly, by regression on the teacher's own images for the same (z, c): every step
draws fresh noise and training conditions, runs the teacher, and moves the student towards
its images (mean squared error of log(1 + expected photons) per fibre, plus that of the
log(1 + photon sum), the scale the channel metrics judge). No discriminator, no Monte Carlo
images: only the conditions of the training file are used, so the student learns the
teacher's response where particles occur.

The student is an ordinary model file: the teacher's configuration with one expert (no
routing) and ``channels`` generator channels, the teacher's condition scaler, gate and
training ranges, and provenance naming the teacher by hash. Its fidelity is judged as any
model's is (``expertsim validate``; ``benchmarks/production.py --student``).

Legend: B events, K = 9 conditions, H x W image.
"""

from __future__ import annotations

import math
import os
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from expertsim.errors import ConfigError, DataSchemaError
from expertsim.eventfile import EventFile
from expertsim.models import losses
from expertsim.models.experts import calibrate_position

CALIBRATION_EVENTS = 4096  # teacher images the student's shower-placement map is fitted to


def _student_config(teacher, channels: int):
    from expertsim.config import config_from_dict

    values = teacher.config.to_dict()
    values["name"] = f"{values.get('name') or 'model'}-distilled-{channels}"
    values["model"] = {**values["model"], "n_experts": 1, "generator_channels": channels}
    return config_from_dict(values, "distilled student")


def _training_conditions(teacher, data_path: str | os.PathLike) -> torch.Tensor:
    """Scaled conditions of the train split's events with light (what the generators draw)."""
    with EventFile(data_path) as events:
        if events.detector.name != teacher.detector.name:
            raise DataSchemaError(f"{data_path}: a {events.detector.name} file, but the "
                                  f"teacher draws {teacher.detector.name}")
        rows = events.rows("train", teacher.config.data.min_photon_sum or 1)
        if len(rows) < 2:
            raise DataSchemaError(f"{data_path}: {len(rows)} train-split events with light; "
                                  "distillation needs the conditions of many")
        return teacher.scale(events.conditions(rows))


def distillation_loss(student_BHW: torch.Tensor, teacher_BHW: torch.Tensor) -> torch.Tensor:
    """Mean squared error of log(1 + photons) per fibre + that of log(1 + photon sum)."""
    def log_sum(image_BHW: torch.Tensor) -> torch.Tensor:
        return torch.log1p(torch.expm1(image_BHW).clamp(min=0).sum(dim=(1, 2)))

    return (torch.nn.functional.mse_loss(student_BHW, teacher_BHW)
            + torch.nn.functional.mse_loss(log_sum(student_BHW), log_sum(teacher_BHW)))


def distill(teacher_path: str | os.PathLike, data_path: str | os.PathLike,
            output: str | os.PathLike, *, channels: int = 8, steps: int = 3000,
            batch_size: int = 256, lr: float = 1e-3, seed: int = 0,
            progress: Callable[[int, float], None] | None = None) -> dict[str, Any]:
    """Train a one-expert student with ``channels`` generator channels on the teacher's
    images (module docstring) and write it to ``output``; returns the run's report (losses
    at the start and end, time, sizes). The learning rate decays to zero on a cosine."""
    from expertsim.provenance import make_provenance
    from expertsim.trained_model import TrainedModel, build_mixture

    if Path(output).resolve() == Path(teacher_path).resolve():
        raise ConfigError(f"{output}: the output would replace the teacher; write the student "
                          "to another file")
    teacher = TrainedModel.load(teacher_path)
    c_NK = _training_conditions(teacher, data_path)
    config = _student_config(teacher, channels)
    generator = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    student = build_mixture(config.model, teacher.image_shape, teacher.scaler)
    _calibrate(student.generator, teacher, c_NK, generator)
    optimiser = torch.optim.Adam(student.generator.parameters(), lr=lr, betas=(0.9, 0.99))
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimiser, lambda step: 0.5 * (1 + math.cos(math.pi * min(step / steps, 1.0))))
    started, history = time.perf_counter(), []
    student.generator.train()
    for step in range(steps):
        index_B = torch.randint(len(c_NK), (batch_size,), generator=generator)
        z_BZ = torch.randn(batch_size, teacher.noise_dim, generator=generator)
        with torch.no_grad():
            target_BHW = teacher.mixture(z_BZ, c_NK[index_B])[0]
        loss = distillation_loss(student.generator.forward_expert(z_BZ, c_NK[index_B], 0),
                                 target_BHW)
        optimiser.zero_grad(set_to_none=True)
        loss.backward()
        optimiser.step()
        schedule.step()
        history.append(float(loss))
        if progress is not None:
            progress(1, history[-1])
    report = _report(teacher, student, history, time.perf_counter() - started, c_NK,
                     generator)
    model = TrainedModel(student.eval(), scaler=teacher.scaler, detector=teacher.detector,
                         config=config, gate=teacher.gate, gate_info=teacher.gate_info,
                         condition_ranges=teacher.condition_ranges)
    model.save(output, make_provenance(
        made_by="expertsim distill", seed=seed, inputs=[teacher_path, data_path],
        config={"channels": channels, "steps": steps, "batch_size": batch_size, "lr": lr,
                "report": report, "teacher_provenance": teacher.provenance}))
    return report


def _calibrate(student_generator, teacher, c_NK: torch.Tensor,
               generator: torch.Generator) -> None:
    """Fit the student's shower-placement map to the centroids of the teacher's images
    (positional conditioning; as the trainer fits it to the Monte Carlo's)."""
    if student_generator.position is None:
        return
    c_CK = c_NK[torch.randperm(len(c_NK), generator=generator)[:CALIBRATION_EVENTS]]
    z_CZ = torch.randn(len(c_CK), teacher.noise_dim, generator=generator)
    with torch.no_grad():
        centre_C2, valid_C = losses.image_centroid(teacher.generate(z_CZ, c_CK)[0])
    keep = valid_C > 0
    if int(keep.sum()) >= 2 * c_NK.shape[1]:
        calibrate_position(student_generator, c_CK[keep], centre_C2[keep])


@torch.no_grad()
def _report(teacher, student, history: list[float], seconds: float, c_NK: torch.Tensor,
            generator: torch.Generator) -> dict[str, Any]:
    """Losses (first and last 50 steps' means), a held-aside check of the photon sums of
    student against teacher on the same (z, c), sizes."""
    student.generator.eval()
    index = torch.randint(len(c_NK), (2048,), generator=generator)
    z_BZ = torch.randn(len(index), teacher.noise_dim, generator=generator)
    teacher_sum = torch.expm1(teacher.generate(z_BZ, c_NK[index])[0]).sum(dim=(1, 2))
    student_sum = torch.expm1(student.generate(z_BZ, c_NK[index])[0]).sum(dim=(1, 2))
    window = max(1, min(50, len(history) // 2))
    return {"steps": len(history), "seconds": seconds,
            "loss_first": float(np.mean(history[:window])),
            "loss_last": float(np.mean(history[-window:])),
            "photon_sum_ratio_median": float((student_sum / teacher_sum.clamp(min=1e-6))
                                             .median()),
            "teacher_parameters": teacher.n_parameters,
            "student_parameters": sum(p.numel() for p in student.parameters())}
