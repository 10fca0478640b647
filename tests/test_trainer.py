"""The trainer on tiny real event files: accounting, resume, pre-emption, tracking."""

import os
import signal
import threading
import time

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from expertsim.checkpoint import load_model_file
from expertsim.cli import main
from expertsim.config import config_from_dict
from expertsim.trained_model import TrainedModel
from expertsim.trainer import Trainer


def tiny_config(data_path, output_dir, **train):
    return config_from_dict({
        "name": "tiny",
        "data": {"path": str(data_path), "batch_size": 64, "val_max_events": 300},
        "model": {"n_experts": 3, "generator_channels": 8, "discriminator_channels": 4,
                  "discriminator_features": 16, "aux_channels": 4},
        "train": {"epochs": 2, "seed": 5, "log_every": 1, "output_dir": str(output_dir),
                  "threads": 1, **train},
        "tracking": {"enabled": False},
        "gate": {"steps": 300},
    })


class StubRouter(torch.nn.Module):
    """Routes by the sign of the first scaled condition (energy): never to expert 2."""

    def __init__(self):
        super().__init__()
        self.bias = torch.nn.Parameter(torch.zeros(3))

    def forward(self, c_BK):
        logits = torch.full((len(c_BK), 3), -1e4) + self.bias
        logits[:, 0] = torch.where(c_BK[:, 0] > 0, 1e4, -1e4)
        logits[:, 1] = torch.where(c_BK[:, 0] > 0, -1e4, 1e4)
        return logits


def test_per_expert_accounting_with_a_stub_router_and_an_empty_expert(zn_file, tmp_path):
    trainer = Trainer(tiny_config(zn_file, tmp_path))
    trainer.router = StubRouter()
    trainer.opt_router = torch.optim.SGD(trainer.router.parameters(), lr=0.0)
    before = trainer.generator.conv1.weight.detach().clone()
    batch = next(iter(trainer.loader))
    result = trainer.train_step(batch)
    expected = [(batch.conditions[:, 0] > 0).sum(), (batch.conditions[:, 0] <= 0).sum(), 0]
    assert result.count_E.tolist() == expected
    after = trainer.generator.conv1.weight.detach()
    assert torch.equal(after[2], before[2]), "the expert without events must not move"
    assert not torch.equal(after[0], before[0])
    for value in result.scalars().values():
        assert torch.isfinite(value).all()
    assert result.scalars()["expert_fraction_2"] == 0


@pytest.mark.parametrize("ema_decay", [0.0, 0.9])
def test_resume_equals_uninterrupted_training(zn_file, tmp_path, ema_decay):
    straight = Trainer(tiny_config(zn_file, tmp_path / "a", max_steps=6, ema_decay=ema_decay))
    history = straight.fit().history

    first = Trainer(tiny_config(zn_file, tmp_path / "b", max_steps=3, ema_decay=ema_decay))
    assert first.fit().status == "stopped"
    resumed = Trainer(tiny_config(zn_file, tmp_path / "b", max_steps=6, ema_decay=ema_decay))
    resumed.resume_from(tmp_path / "b" / "checkpoint_last.pt")
    assert resumed.step == 3 and resumed.batch_in_epoch == 3
    tail = resumed.fit().history
    assert [h["train/g_loss"] for h in tail] == [h["train/g_loss"] for h in history[3:]]
    assert [h["train/d_loss"] for h in tail] == [h["train/d_loss"] for h in history[3:]]
    for name, tensor in straight.generator.state_dict().items():
        assert torch.equal(tensor, resumed.generator.state_dict()[name]), name
    if ema_decay:
        # the model file holds the weight average, which lags the weights, also after resume
        saved = TrainedModel.load(tmp_path / "b" / "model.pt").mixture.generator.state_dict()
        for name, tensor in straight.generator_ema.state_dict().items():
            assert torch.equal(tensor, resumed.generator_ema.state_dict()[name]), name
            assert torch.equal(tensor, saved[name]), name
        weight = "conv1.weight"
        assert not torch.equal(saved[weight], straight.generator.state_dict()[weight])


@pytest.mark.parametrize("counting_step", [False, True])
def test_energy_score_trains_radial_models_reproducibly(zn_file, tmp_path, counting_step):
    """The energy-score term draws its own counting uniforms (with or without the counting
    step for the discriminator), is logged, and two runs with one seed agree exactly."""
    def run(folder):
        config = tiny_config(zn_file, tmp_path / folder, max_steps=3,
                             counting_step=counting_step)
        values = config.to_dict()
        values["loss"].update(energy_score=1.0)
        values["model"].update(conditioning="radial")
        trainer = Trainer(config_from_dict(values))
        return trainer, trainer.fit().history

    trainer, history = run("a")
    scores = [h["train/g_energy_score"] for h in history]
    assert all(np.isfinite(scores)) and min(scores) > 0
    assert trainer.generator.radial == (0.5, 1.0, 2.0, 4.0, 8.0)
    _, again = run("b")
    assert [h["train/g_loss"] for h in again] == [h["train/g_loss"] for h in history]


def test_sigterm_saves_a_checkpoint_and_stops(zn_file, tmp_path):
    trainer = Trainer(tiny_config(zn_file, tmp_path))
    previous = signal.signal(signal.SIGTERM, lambda *_: trainer.request_stop())
    try:
        def progress(t):
            if t.step == 2:
                os.kill(os.getpid(), signal.SIGTERM)
        result = trainer.fit(progress=progress)
    finally:
        signal.signal(signal.SIGTERM, previous)
    assert result.status == "preempted" and result.step == 2
    again = Trainer(tiny_config(zn_file, tmp_path))
    again.resume_from(tmp_path / "checkpoint_last.pt")
    assert again.step == 2


@pytest.mark.slow
def test_cli_exits_75_on_sigusr1_and_resumes(zn_file, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    config = tmp_path / "c.yaml"
    config.write_text(f"data: {{path: {zn_file}, batch_size: 64, val_max_events: 200}}\n"
                      "model: {generator_channels: 8, discriminator_channels: 4}\n"
                      "train: {epochs: 50, output_dir: out, threads: 1}\n"
                      "gate: {steps: 300}\n"
                      "tracking: {enabled: false}\n")
    done = threading.Event()

    def signal_once_training():
        """SIGUSR1 a second after the run installed its handler (not on a fixed timer: on a
        loaded machine the set-up can outlast it, and the default action ends pytest)."""
        deadline = time.monotonic() + 600
        while not done.is_set() and time.monotonic() < deadline:
            if signal.getsignal(signal.SIGUSR1) not in (signal.SIG_DFL, None):
                if not done.wait(1.0):
                    os.kill(os.getpid(), signal.SIGUSR1)
                return
            time.sleep(0.05)

    sender = threading.Thread(target=signal_once_training, daemon=True)
    sender.start()
    try:
        result = CliRunner().invoke(main, ["train", "--config", str(config)])
    finally:
        done.set()
        sender.join()
    assert result.exit_code == 75, result.output
    assert (tmp_path / "out" / "checkpoint_last.pt").exists()
    result = CliRunner().invoke(main, ["train", "--config", str(config), "--set",
                                       "train.epochs=1", "--set", "train.max_steps=1000"])
    assert "resuming from" in result.output


@pytest.mark.slow
def test_smoke_run_leaves_model_checkpoint_and_mlflow_run(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(main, [
        "train", "--config", os.path.join(os.path.dirname(__file__), "..", "training",
                                          "smoke.yaml"),
        "--set", "data.simulate.n_events=3000", "--set", "data.batch_size=64",
        "--set", "train.epochs=2", "--set", "data.val_max_events=300",
        "--set", "train.log_every=5", "--set", "gate.steps=300"])
    assert result.exit_code == 0, result.output
    out = tmp_path / "runs" / "smoke"
    for name in ("model.pt", "checkpoint_last.pt", "checkpoint_best.pt"):
        assert (out / name).stat().st_size > 1000
    model = load_model_file(out / "model.pt")
    assert model.detector == "ZN" and model.config["model"]["n_experts"] == 3
    trained = TrainedModel.load(out / "model.pt")
    mixture = trained.mixture
    with torch.no_grad():
        images, experts = mixture(torch.randn(16, 10), torch.randn(16, 9))
    assert images.shape == (16, 44, 44) and torch.isfinite(images).all()
    assert experts.min() >= 0 and experts.max() < 3
    assert trained.scaler.mean.shape == (9,)

    from mlflow.tracking import MlflowClient
    client = MlflowClient("sqlite:///mlflow.db")
    experiment = client.get_experiment_by_name("expertsim-smoke")
    run = client.search_runs([experiment.experiment_id])[0]
    assert run.data.params["loss.diversity"] == "0.1"
    assert run.data.params["model.n_experts"] == "3"
    history = client.get_metric_history(run.info.run_id, "val/ws_mean")
    assert len(history) == 3  # untrained + two epochs
    assert all(np.isfinite(m.value) for m in history)
    assert len(client.get_metric_history(run.info.run_id, "train/g_loss")) >= 2
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"model.pt", "checkpoint_last.pt"} <= artifacts


def test_multithreaded_training_is_reproducible(zn_file, tmp_path):
    runs = []
    for name in ("a", "b"):
        trainer = Trainer(tiny_config(zn_file, tmp_path / name, max_steps=3, threads=2))
        trainer.fit()
        runs.append(trainer.generator.state_dict())
    torch.set_num_threads(1)
    for key, tensor in runs[0].items():
        assert torch.equal(tensor, runs[1][key]), key


def test_shared_start_trains_one_pair_then_lets_the_experts_part(zn_file, tmp_path):
    """train.shared_start_steps: during the shared start every event goes to expert 0 at
    1/E of the learning rate and every expert leaves each step with expert 0's weights and
    Adam moments; after it the router's experts train apart and stop being equal."""
    trainer = Trainer(tiny_config(zn_file, tmp_path, shared_start_steps=2, ema_decay=0.9))
    batches = iter(trainer.loader)
    before = trainer.generator.conv1.weight.detach().clone()
    for step in range(2):
        result = trainer.train_step(next(batches))
        trainer.step += 1
        assert result.count_E.tolist() == [64, 0, 0]
    moved = trainer.generator.conv1.weight.detach()
    assert not torch.equal(moved[0], before[0])
    tied = [*trainer.generator.parameters(), *trainer.discriminator.parameters(),
            *trainer.generator_ema.parameters()]
    for state in trainer.opt_generator.state.values():
        tied += [state["exp_avg"], state["exp_avg_sq"]]
    for tensor in tied:
        assert torch.equal(tensor[1], tensor[0]) and torch.equal(tensor[2], tensor[0])
    result = trainer.train_step(next(batches))
    assert (result.count_E > 0).sum() >= 2, result.count_E
    weight = trainer.generator.conv1.weight.detach()
    assert not torch.equal(weight[0], weight[1]) or not torch.equal(weight[0], weight[2])


def test_shared_start_runs_at_the_balanced_learning_rate(zn_file, tmp_path):
    """The first Adam step moves a weight by about lr (its update is +-1 times lr): in the
    shared start expert 0 moves by lr / E, as each expert would at balanced routing."""
    trainer = Trainer(tiny_config(zn_file, tmp_path, shared_start_steps=1))
    before = trainer.generator.conv_out.bias.detach().clone()
    trainer.train_step(next(iter(trainer.loader)))
    step = (trainer.generator.conv_out.bias.detach() - before)[0].abs().max().item()
    lr = trainer.config.optim.lr_generator
    assert step == pytest.approx(lr / 3, rel=1e-3)


@pytest.mark.slow
def test_balanced_routing_keeps_every_expert_alive(zn_file, tmp_path):
    """A router pushed to send nearly everything to expert 0 (a collapsed mixture): with
    balanced routing the three experts each end with >= 10 % of the events, in training and
    at inference; without it an expert stays starved."""
    fractions = {}
    for rate in (0.0, 0.3):
        trainer = Trainer(tiny_config(zn_file, tmp_path / str(rate), max_steps=40,
                                      balance_rate=rate, epochs=20))
        with torch.no_grad():
            trainer.router.balance_bias_E.copy_(torch.tensor([6.0, 0.0, 0.0]))
        history = trainer.fit().history
        trained = [np.mean([h[f"train/expert_fraction_{e}"] for h in history[-10:]])
                   for e in range(3)]
        validation = trainer.validate()
        fractions[rate] = (trained, [validation[f"val/expert_fraction_{e}"] for e in range(3)])
    assert min(fractions[0.3][0]) >= 0.1 and min(fractions[0.3][1]) >= 0.1, fractions
    assert min(fractions[0.0][1]) < 0.1, fractions


@pytest.mark.parametrize("detector", ["ZN", "ZP"])
def test_positional_generators_start_with_showers_where_the_particles_hit(detector, tmp_path):
    """Before any step, the shower-placement map fitted to training centroids predicts the
    centroids of held-out showers (validation split) to about a fibre."""
    from tests.conftest import simulate_file
    from expertsim.eventfile import EventFile
    from expertsim.models import losses

    n_events = {"ZN": 20000, "ZP": 40000}[detector]  # ZP: ~2 % of its events have light
    path = simulate_file(tmp_path / "events.h5", detector, n_events=n_events, seed=3)
    config = tiny_config(path, tmp_path)
    config = config_from_dict({**config.to_dict(), "model": {
        **config.to_dict()["model"], "conditioning": "positional"}})
    trainer = Trainer(config)
    with EventFile(path) as events:
        rows = events.rows("val", 1, None)
        c = torch.from_numpy(trainer.loader.scaler.transform(events.conditions(rows)))
        real, _ = losses.image_centroid(torch.log1p(torch.from_numpy(
            events.images(rows).astype(np.float32))))
    with torch.no_grad():
        predicted = trainer.generator.centre(c, torch.zeros(len(c), dtype=torch.int64))
    half_size = torch.tensor(trainer.image_shape, dtype=torch.float32) / 2
    distance = ((predicted - real) * half_size).norm(dim=1)  # fibres
    assert len(rows) > 50 and distance.median() < 1.0, distance.median()
    assert trainer.placement_rms * half_size.max() < 3.0  # the fit's residual, fibres


def test_cosine_schedule_runs_from_the_base_rates_to_the_final_fraction(zn_file, tmp_path):
    config = tiny_config(zn_file, tmp_path, max_steps=11)
    config = config_from_dict({**config.to_dict(), "optim": {
        **config.to_dict()["optim"], "schedule": "cosine", "lr_final_fraction": 0.1}})
    trainer = Trainer(config)
    factors = []
    for step in (0, 5, 10, 20):
        trainer.step = step
        factors.append(trainer.learning_rate_factor())
    assert factors == pytest.approx([1.0, 0.55, 0.1, 0.1])
    trainer.step = 5
    trainer._apply_schedule()
    assert trainer.opt_generator.param_groups[0]["lr"] == pytest.approx(
        0.55 * config.optim.lr_generator)
    assert trainer.opt_discriminator.param_groups[0]["lr"] == pytest.approx(
        0.55 * config.optim.lr_discriminator)


def test_a_checkpoint_from_other_networks_is_refused_with_a_clear_error(zn_file, tmp_path):
    """A checkpoint whose weights miss a layer of this version's networks (an older release)
    gets a CheckpointError naming the file and the way out, not torch's traceback."""
    from expertsim.checkpoint import load_checkpoint, save_checkpoint
    from expertsim.errors import CheckpointError

    Trainer(tiny_config(zn_file, tmp_path, max_steps=1)).fit()
    config, state = load_checkpoint(tmp_path / "checkpoint_last.pt")
    state["generator"].pop("conv1.weight")
    save_checkpoint(tmp_path / "old.pt", config=config, state=state)
    with pytest.raises(CheckpointError, match="old.pt.*--no-resume"):
        Trainer(tiny_config(zn_file, tmp_path)).resume_from(tmp_path / "old.pt")
