"""The exported pair run as ALICE O2 runs it (expertsim.o2): batch 1, one thread, the gate,
the truncation and O2's pixel order, against the package's own sampler; and exports with a
broken gate, counting or pixel order are caught."""

import numpy as np
import pytest
import torch

import expertsim.export as export
from expertsim.detector import channel_sums
from expertsim.errors import DataSchemaError
from expertsim.eventfile import EventFile
from expertsim.o2 import O2Replica, flat_to_image, read_o2_scales
from expertsim.sampling import _noise_rows, sample_to_file
from expertsim.trained_model import TrainedModel
from expertsim.validation import compare_with_package, validate_export, validate_model
from tests.test_sampling import make_model


@pytest.fixture(scope="module", params=["zn", "zp"])
def exported_pair(request, tmp_path_factory):
    data = request.getfixturevalue(f"{request.param}_file")
    folder = tmp_path_factory.mktemp(f"o2_{request.param}")
    model = make_model(data, folder)
    export.export_onnx(model, folder / "onnx", check_events=200)
    return model, folder / "onnx", data


def replica_agreement(model_path, export_dir, data, tmp_path, n_paired=30):
    """Measures of how the replica's output of an export agrees with the package sampler."""
    model = TrainedModel.load(model_path)
    with EventFile(data) as events:
        conditions = events.conditions()
    replica = O2Replica(export_dir, threads=1, seed=3)
    # particle by particle, the same noise: O2's reading of the expectation is the package's
    noise = _noise_rows(0, 0, n_paired, model.noise_dim)
    package, _ = model.expected_photons(noise, model.scale(conditions[:n_paired]))
    replica_expected = np.stack([replica.generate(raw, z)[1]
                                 for raw, z in zip(conditions[:n_paired], noise.numpy())])
    replica_expected = flat_to_image(replica_expected, replica.detector)
    # the whole file, particle by particle, against the package sampler on the same conditions
    images, channels, side = replica.run(conditions)
    sampled = tmp_path / "package.h5"
    sample_to_file(model_path, data, sampled, seed=4)
    with EventFile(sampled) as events:
        package_sums = events.derived("photon_sum")
    replica_sums = images.sum(axis=(1, 2)).astype(float)
    light, package_light = replica_sums[replica_sums > 0], package_sums[package_sums > 0]
    se = np.hypot(light.std() / np.sqrt(len(light)),
                  package_light.std() / np.sqrt(len(package_light)))
    return {
        "expected_difference": float(np.abs(replica_expected - package).max()
                                     / max(package.max(), 1.0)),
        "empty_fraction_difference": float(abs((replica_sums == 0).mean()
                                               - (package_sums == 0).mean())),
        "mean_light_z": float((light.mean() - package_light.mean()) / se),
        "channels_consistent": bool(np.array_equal(channels,
                                                   channel_sums(images, "o2-hits"))),
        "sides": set(side.tolist()),
    }


def test_the_replica_runs_the_export_as_the_package_samples(exported_pair, tmp_path):
    model, folder, data = exported_pair
    agreement = replica_agreement(model, folder, data, tmp_path)
    assert agreement["expected_difference"] < 1e-4  # O2's pixel order = the package's image
    assert agreement["empty_fraction_difference"] < 0.03  # the gate, drawn in the graph
    assert abs(agreement["mean_light_z"]) < 4  # the counting: the sampler's photon sums
    assert agreement["channels_consistent"]  # FastSimToHits = the package's o2-hits channels
    assert agreement["sides"] == {"A", "C"}


def test_the_replica_reads_scales_as_o2_does(exported_pair, tmp_path):
    model, folder, _ = exported_pair
    means, scales = read_o2_scales(folder / "scales.txt")
    assert means.dtype == np.float32 and len(scales) == 9
    np.testing.assert_allclose(means, TrainedModel.load(model).scaler.mean, rtol=1e-6)
    broken = tmp_path / "scales.txt"
    broken.write_text("#means\n" + "1\n" * 8 + "\n#scales\n" + "1\n" * 9)
    with pytest.raises(DataSchemaError, match="8 numbers under #means"):
        read_o2_scales(broken)
    broken.write_text("#scales\n" + "1\n" * 9)
    with pytest.raises(DataSchemaError, match="no line '#means'"):
        read_o2_scales(broken)


def always_light(self, conditions):
    probability = self.gate.probability(conditions)[:, None]
    return torch.ones_like(probability), probability


@pytest.mark.parametrize("broken", ["counting", "gate", "pixel order"])
def test_a_broken_export_is_caught(broken, zn_file, tmp_path, monkeypatch):
    model = make_model(zn_file, tmp_path)
    if broken == "gate":
        monkeypatch.setattr(export._O2Classifier, "forward", always_light)
    if broken == "pixel order":
        monkeypatch.setattr(export, "to_o2_order", lambda image: image)
    export.export_onnx(model, tmp_path / "onnx", check=False, counts=broken != "counting")
    agreement = replica_agreement(model, tmp_path / "onnx", zn_file, tmp_path)
    if broken == "counting":  # O2's truncation empties the expected photons
        assert agreement["mean_light_z"] < -10
    if broken == "gate":
        assert agreement["empty_fraction_difference"] > 0.3
    if broken == "pixel order":
        assert agreement["expected_difference"] > 0.01


@pytest.mark.parametrize("exported_pair", ["zn"], indirect=True)  # ZP: too few with light
def test_validate_scores_an_export_through_the_replica_like_the_package(exported_pair,
                                                                        tmp_path):
    model, folder, data = exported_pair
    package = validate_model(model, data, tmp_path / "package", generations=1, plots=False)
    replica = validate_export(folder, data, tmp_path / "o2", generations=1, plots=False)
    assert replica["gate"] is not None and replica["headline_non_empty"] is not None
    agreement = compare_with_package(replica, package)
    assert set(agreement["checks"]) == {"empty_fraction", "ws_all", "ws_non_empty",
                                        "mean_photon_sum_all", "mean_photon_sum_non_empty"}
    # a tiny model and 2,000 particles: well inside the statistical spread, not the 1 % bar
    assert agreement["checks"]["empty_fraction"]["passed"]
    assert abs(agreement["checks"]["mean_photon_sum_non_empty"]["standard_errors"]) < 4
    assert abs(agreement["checks"]["ws_all"]["relative"]) < 0.5


def test_the_replica_without_its_classifier_gives_every_particle_light(exported_pair):
    """gate=False (the generator scored alone, as on a reference of particles with light):
    no particle is dropped, and each draws at least one photon."""
    _, folder, data = exported_pair
    with EventFile(data) as events:
        conditions = events.conditions()[:60]
    images, _, _ = O2Replica(folder, seed=1).run(conditions, gate=False)
    assert (images.sum(axis=(1, 2)) > 0).all()
    gated, _, _ = O2Replica(folder, seed=1).run(conditions)
    assert (gated.sum(axis=(1, 2)) == 0).any()  # the classifier does stop some of them
