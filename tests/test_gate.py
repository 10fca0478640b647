"""The empty-response gate: trained on every event, drawn in sampling, required by export."""

import dataclasses

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from expertsim.cli import main
from expertsim.eventfile import EventFile
from expertsim.gate import train_gate
from expertsim.models.counting import N_SPLIT, nonempty_counts
from expertsim.sampling import sample_to_file
from expertsim.photon_counts import poisson_counts
from expertsim.trained_model import TrainedModel
from tests.test_sampling import make_model, read
from tests.test_trainer import tiny_config


def test_the_gate_learns_which_particles_leave_light_with_calibrated_probabilities(zn_file):
    with EventFile(zn_file) as events:
        scaler = events.scaler()
    gate, report = train_gate(zn_file, scaler, steps=600, batch_size=512, lr=3e-3, hidden=32,
                              seed=0)
    val = report["val"]
    assert report["trained"] and 0.4 < val["empty_fraction"] < 0.7  # ZN: about half empty
    assert val["accuracy_threshold"] > 0.93 and val["accuracy_drawn"] > 0.9
    assert abs(val["predicted_empty_fraction"] - val["empty_fraction"]) < 0.03
    assert val["false_empty"] < 0.1 and val["false_non_empty"] < 0.1
    again, _ = train_gate(zn_file, scaler, steps=600, batch_size=512, lr=3e-3, hidden=32,
                          seed=0)
    for ours, theirs in zip(gate.state_dict().values(), again.state_dict().values()):
        assert torch.equal(ours, theirs)  # seeded


def test_no_gate_from_a_file_without_empty_events(zn_file, tmp_path):
    from tests.conftest import simulate_file
    from expertsim.validation import select_reference

    full = simulate_file(tmp_path / "zn.h5", "ZN", 600, seed=4)
    light_only = select_reference(full, tmp_path / "light.h5", min_photon_sum=1)
    with EventFile(light_only) as events:
        scaler = events.scaler()
    gate, report = train_gate(light_only, scaler, steps=10, batch_size=64, lr=1e-3,
                              hidden=8, seed=0)
    assert gate is None and not report["trained"] and "0 empty" in report["reason"]
    first = select_reference(full, tmp_path / "first.h5", min_photon_sum=1, max_events=50)
    with EventFile(first) as head, EventFile(light_only) as whole:
        assert head.n_events == 50
        np.testing.assert_array_equal(head.conditions(), whole.conditions(np.arange(50)))


@pytest.fixture(scope="module")
def gated_model(zn_file, tmp_path_factory):
    return make_model(zn_file, tmp_path_factory.mktemp("gated"))


def test_sampling_draws_the_gate_and_matches_the_empty_fraction(gated_model, zn_file, tmp_path):
    out = sample_to_file(gated_model, zn_file, tmp_path / "gen.h5", seed=2)
    experts, photons = read(out, "expert"), read(out, "derived/photon_sum")
    generated_empty = photons == 0
    mc_empty = read(zn_file, "derived/photon_sum") == 0
    assert np.array_equal(generated_empty, experts < 0)  # stopped <=> empty
    assert abs(generated_empty.mean() - mc_empty.mean()) < 0.03
    assert (generated_empty == mc_empty).mean() > 0.9  # particle by particle
    ungated = sample_to_file(gated_model, zn_file, tmp_path / "all.h5", seed=2, gate=False)
    assert (read(ungated, "derived/photon_sum") > 0).all()  # generators: light only
    # the gate's draws belong to rows, not batches
    small = sample_to_file(gated_model, zn_file, tmp_path / "b.h5", seed=2, batch_size=333)
    assert np.array_equal(read(small, "images"), read(out, "images"))


def test_a_model_without_a_gate_cannot_be_gated_or_exported(zn_file, tmp_path):
    from expertsim.trainer import Trainer

    config = tiny_config(zn_file, tmp_path, max_steps=2)
    config = dataclasses.replace(config, gate=dataclasses.replace(config.gate, enabled=False))
    Trainer(config).fit()
    model = tmp_path / "model.pt"
    assert TrainedModel.load(model).gate is None
    result = CliRunner().invoke(main, ["sample", "--model", str(model), "--conditions",
                                       str(zn_file), "-o", str(tmp_path / "g.h5"), "--gate"])
    assert result.exit_code == 2 and "no empty-response gate" in result.output
    result = CliRunner().invoke(main, ["export", "--model", str(model), "-o",
                                       str(tmp_path / "onnx")])
    assert result.exit_code == 2 and "without a classifier" in result.output


def test_nonempty_draws_follow_the_zero_truncated_poisson_in_numpy_and_torch():
    """Given at least one photon: the total's mean is L / (1 - exp(-L)) and photons fall in
    fibres in proportion to their expectation, in the sampler (numpy) and the exported graph's
    counting (torch) alike."""
    expected = np.zeros((20000, 4), dtype=np.float32)
    expected[:, :2] = [0.6, 0.2]  # L = 0.8: 45 % of plain Poisson draws are empty
    total = 0.8
    mean = total / -np.expm1(-total)
    numpy_counts = poisson_counts(expected.reshape(-1, 2, 2), seed=1, nonempty=True)
    numpy_counts = numpy_counts.reshape(len(expected), -1).astype(float)
    generator = torch.Generator().manual_seed(0)
    rand = lambda *shape: torch.rand(*shape, generator=generator)  # noqa: E731
    torch_counts = nonempty_counts(torch.from_numpy(expected), rand(20000, 4),
                                   torch.zeros(20000, 4), rand(20000), rand(20000, N_SPLIT))
    for counts in (numpy_counts, torch_counts.numpy()):
        sums = counts.sum(axis=1)
        assert sums.min() >= 1 and counts[:, 2:].sum() == 0
        assert abs(sums.mean() - mean) < 4 * sums.std() / np.sqrt(len(sums))
        share = counts[:, 0].sum() / sums.sum()
        assert abs(share - 0.75) < 0.02
    plain = poisson_counts(expected.reshape(-1, 2, 2), seed=1)
    assert abs((plain.reshape(len(expected), -1).sum(axis=1) == 0).mean() - np.exp(-0.8)) < 0.02


def test_validation_on_all_events_scores_the_gate_beside_the_mc_floor(gated_model, zn_file,
                                                                      tmp_path):
    from expertsim.validation import summary_lines, validate_model

    report = validate_model(gated_model, zn_file, tmp_path / "report", generations=2,
                            plots=False)
    gate = report["gate"]
    assert gate["all"]["n"] == report["n_pairs"] == 2000
    assert gate["all"]["accuracy"] > 0.9 and gate["all"]["floor_accuracy"] > 0.95
    assert abs(gate["all"]["generated_empty_fraction"]
               - gate["all"]["reference_empty_fraction"]) < 0.03
    assert sum(b["n"] for b in gate["by_energy"]) == 2000
    assert {"2112", "22"} <= set(gate["by_species"])  # neutrons and photons reach ZN
    non_empty = report["headline_non_empty"]
    assert 0 < non_empty["n_generated"] < 2000 and non_empty["floor_ws_mean"] > 0
    assert any(line.startswith("empty responses: generated") for line in summary_lines(report))
    # on a reference of events with light only the generators are scored alone
    light = validate_model(gated_model, zn_file, tmp_path / "light", generations=1,
                           min_photon_sum=1, plots=False)
    assert light["gate"] is None and light["fraction_empty"]["generated"] == 0
