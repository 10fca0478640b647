"""The empty-response gate: does a particle leave any photon in the calorimeter at all?

Most particles that reach the ZDC region leave no light in a given calorimeter (they miss
its face, are bent away, or shower too little); the built-in simulator's files have about
55 % empty ZN responses and about 98 % empty ZP ones. ALICE O2 therefore runs a classifier
first and calls the generators only for the particles it passes (SOURCES.md), and
the generators are trained on the responses that have light. The gate is that classifier:

    scaled conditions c_NK --ConditionFeatures--> (N, 15) --MLP--> logit of P(photon sum >= 1)

It sees the same derived features as the positional experts (the straight-line impact point
on the face, angles, q/p, log E), because whether a particle hits the face is a sharp
function of them. It is trained by binary cross-entropy on every event of the train split,
empty ones included, so its probability is calibrated; sampling draws the decision
(uniform < probability), which keeps the fraction of empty events right also where the
outcome is genuinely random (a low-energy particle that makes no photon by chance).

Legend: N events, K = 9 conditions.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from torch import nn

from expertsim.eventfile import EventFile
from expertsim.models.conditioning import N_CONDITIONS, N_DERIVED, ConditionFeatures
from expertsim.scaler import Scaler

MIN_EVENTS_PER_CLASS = 20  # fewer empty (or non-empty) training events: no gate is trained


class EmptyGate(nn.Module):
    """c_NK (scaled conditions) -> logit (N,) of the probability that the particle leaves at
    least one photon; the condition scaler is stored as buffers (see ConditionFeatures)."""

    def __init__(self, hidden: int = 64) -> None:
        super().__init__()
        self.hidden = hidden
        self.features = ConditionFeatures()
        self.net = nn.Sequential(
            nn.Linear(N_CONDITIONS + N_DERIVED, hidden), nn.SiLU(),
            nn.Linear(hidden, hidden), nn.SiLU(), nn.Linear(hidden, 1))

    def forward(self, c_NK: torch.Tensor) -> torch.Tensor:
        return self.net(self.features(c_NK)).squeeze(1)

    def probability(self, c_NK: torch.Tensor) -> torch.Tensor:
        """P(photon sum >= 1) per particle, (N,)."""
        return torch.sigmoid(self.forward(c_NK))


def gate_metrics(probability_N: np.ndarray, leaves_light_N: np.ndarray) -> dict[str, float]:
    """How well probabilities predict the observed emptiness of events.

    accuracy_threshold: decisions p >= 0.5; accuracy_drawn: expected accuracy of drawn
    decisions (p * y + (1 - p) * (1 - y)); false_empty: P(drawn empty | has light);
    false_non_empty: P(drawn light | empty); empty_fraction vs predicted_empty_fraction
    (mean of 1 - p): calibration; log_loss in nats.

    >>> round(gate_metrics(np.array([1.0, 0.0]), np.array([True, False]))["accuracy_drawn"], 6)
    1.0
    """
    p = np.clip(np.asarray(probability_N, dtype=np.float64), 1e-7, 1 - 1e-7)
    y = np.asarray(leaves_light_N, dtype=bool)
    drawn_correct = np.where(y, p, 1 - p)
    return {
        "n": int(len(y)),
        "empty_fraction": float(1 - y.mean()),
        "predicted_empty_fraction": float((1 - p).mean()),
        "accuracy_threshold": float(((p >= 0.5) == y).mean()),
        "accuracy_drawn": float(drawn_correct.mean()),
        "false_empty": float((1 - p[y]).mean()) if y.any() else math.nan,
        "false_non_empty": float(p[~y].mean()) if (~y).any() else math.nan,
        "log_loss": float(-np.log(drawn_correct).mean()),
    }


def _gate_data(path: str | os.PathLike) -> dict[str, np.ndarray]:
    with EventFile(path) as events:
        return {"conditions": events.conditions(), "split": events.split_labels(),
                "leaves_light": events.derived("photon_sum") > 0}


def train_gate(path: str | os.PathLike, scaler: Scaler, *, steps: int, batch_size: int,
               lr: float, hidden: int, seed: int, device: str | torch.device = "cpu",
               progress: Callable[[int], None] | None = None
               ) -> tuple[EmptyGate | None, dict[str, Any]]:
    """Train the gate on every event of the train split of ``path`` (empty ones included),
    report it on the validation split. Returns (gate, report); the gate is None, with the
    reason in the report, when the train split has fewer than MIN_EVENTS_PER_CLASS empty or
    non-empty events (a file of only non-empty responses, e.g. a converted published dataset,
    cannot teach emptiness).

    The learning rate falls linearly to a tenth over the steps; initialisation and batches come
    from ``seed`` alone (torch's global random state is left as it was).
    """
    data = _gate_data(path)
    train, val = data["split"] == 0, data["split"] == 1
    y_train = data["leaves_light"][train]
    report: dict[str, Any] = {"n_train": int(train.sum()),
                              "train_empty_fraction": float(1 - y_train.mean())
                              if len(y_train) else None,
                              "steps": steps, "batch_size": batch_size, "lr": lr,
                              "hidden": hidden, "seed": seed}
    n_empty, n_light = int((~y_train).sum()), int(y_train.sum())
    if min(n_empty, n_light) < MIN_EVENTS_PER_CLASS:
        report["trained"] = False
        report["reason"] = (f"{path}: the train split has {n_empty} empty and {n_light} "
                            f"non-empty events (need {MIN_EVENTS_PER_CLASS} of each)")
        return None, report
    c_NK = torch.from_numpy(scaler.transform(data["conditions"][train])).to(device)
    y_N = torch.from_numpy(y_train.astype(np.float32)).to(device)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        gate = EmptyGate(hidden)
    gate.features.set_scaler(scaler.mean, scaler.scale)
    gate.to(device).train()
    optimizer = torch.optim.Adam(gate.parameters(), lr)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: 1.0 - 0.9 * min(step / max(steps, 1), 1.0))
    generator = torch.Generator().manual_seed(seed)
    loss_function = nn.BCEWithLogitsLoss()
    for _ in range(steps):
        index = torch.randint(len(y_N), (batch_size,), generator=generator).to(device)
        loss = loss_function(gate(c_NK[index]), y_N[index])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        schedule.step()
        if progress is not None:
            progress(1)
    gate.eval()
    report["trained"] = True
    report["train"] = gate_metrics(gate_probability(gate, c_NK), y_train)
    if val.any():
        c_val = torch.from_numpy(scaler.transform(data["conditions"][val])).to(device)
        report["val"] = gate_metrics(gate_probability(gate, c_val), data["leaves_light"][val])
    return gate.cpu(), report


@torch.no_grad()
def gate_probability(gate: EmptyGate, c_NK: torch.Tensor, batch_size: int = 65536
                     ) -> np.ndarray:
    """P(photon sum >= 1) per particle as float64 numpy, in batches."""
    parts = [gate.probability(c_NK[start:start + batch_size]).double().cpu().numpy()
             for start in range(0, len(c_NK), batch_size)]
    return np.concatenate(parts) if parts else np.zeros(0)



def add_gate(model_path: str | os.PathLike, data_path: str | os.PathLike,
             output: str | os.PathLike, *, steps: int, batch_size: int, lr: float, hidden: int,
             seed: int) -> dict[str, Any]:
    """Train a gate on ``data_path`` for an existing model file and write the model with it
    to ``output`` (a new file; the input model is left as it is). Returns the gate's report."""
    from expertsim.errors import ConfigError, DataSchemaError
    from expertsim.provenance import make_provenance
    from expertsim.trained_model import TrainedModel

    if Path(output).resolve() == Path(model_path).resolve():
        raise ConfigError(f"{output}: the output would replace the input model; write the "
                          "gated model to another file")
    model = TrainedModel.load(model_path)
    with EventFile(data_path) as events:
        if events.detector.name != model.detector.name:
            raise DataSchemaError(f"{data_path}: a {events.detector.name} file, but "
                                  f"{model_path} draws {model.detector.name}")
    gate, report = train_gate(data_path, model.scaler, steps=steps, batch_size=batch_size,
                              lr=lr, hidden=hidden, seed=seed)
    if gate is None:
        raise DataSchemaError(report["reason"] + "; a gate needs empty and non-empty events")
    model.gate, model.gate_info = gate, {"hidden": hidden, "report": report}
    model.save(output, make_provenance(
        made_by="expertsim gate", seed=seed, inputs=[model_path, data_path],
        config={"steps": steps, "batch_size": batch_size, "lr": lr, "hidden": hidden,
                "model_provenance": model.provenance}))
    return report
