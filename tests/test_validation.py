"""The validation suite: the report is complete, and its metrics can fail."""

import json

import numpy as np
import pytest
from click.testing import CliRunner

from expertsim.cli import main
from expertsim.detector import get_detector
from expertsim.eventfile import EventFileWriter
from expertsim.provenance import make_provenance
from expertsim.simulate import simulate_response
from tests.conftest import simulate_file


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    # 3,000 particles simulated twice each: the floor comes from the two halves
    return simulate_file(tmp_path_factory.mktemp("ref") / "mc.h5", "ZN", 6000, seed=4, repeat=2)


def generated_from_simulation(reference, path, seed, scale=1.0):
    """A 'generator' that is the simulator itself (scaled): rows paired with the reference."""
    import h5py

    with h5py.File(reference) as handle:
        conditions, pdg = handle["conditions"][:].astype(float), handle["pdg"][:]
    images = simulate_response(conditions, pdg, get_detector("ZN"), np.random.default_rng(seed))
    images = np.rint(images * scale).astype(np.uint32)
    n = len(images)
    with EventFileWriter(path, "ZN", n, provenance=make_provenance(made_by="test"),
                         image_dtype=np.uint32,
                         extras={"source_row": np.arange(n), "expert": np.zeros(n, np.int8)}
                         ) as writer:
        writer.write(0, images, conditions)
    return path


def run_validate(*args):
    return CliRunner().invoke(main, ["validate", *map(str, args)], catch_exceptions=False)


def assert_complete(report):
    """Every number metrics.json documents is present and finite."""
    assert report["schema_version"] == 4 and report["design"] == "matched"
    headline = report["headline"]
    numbers = [headline["ws_mean"], headline["ws_mean_std"], headline["floor_ws_mean"],
               headline["ratio"], *headline["ws_mean_ci95"], *headline["floor_ci95"],
               *headline["ratio_ci95"], report["floor"]["classifier_auc"],
               *report["uncertainty"]["se"].values(),
               *report["uncertainty"]["disjoint_quarters_se"].values(),
               report["paired"]["centroid_distance"]["model_median"],
               report["paired"]["centroid_distance"]["floor_median"],
               report["paired"]["width_difference"]["ratio"],
               *[entry[key] for entry in report["headline_by_convention"].values()
                 for key in ("ws_mean", "floor_ws_mean", "ratio")],
               *report["headline"]["ws_channels"], report["photon_sum"]["wasserstein"],
               report["photon_sum"]["ks"], report["classifier_auc"],
               report["fraction_empty"]["generated"], report["fraction_empty"]["reference"],
               report["floor"]["ws_mean"], report["floor"]["photon_sum"]["ks"]]
    numbers += [report[key][kind] for key in ("fibres_hit", "brightest_row", "brightest_col",
                                              "centroid_x", "centroid_y", "width_x", "width_y")
                for kind in ("wasserstein", "ks")]
    numbers += [entry["ws_mean"] for entry in report["per_expert"].values()]
    numbers += [entry["ws_mean"] for entry in report["per_group"].values()]
    community = report["community"]
    for who in ("model", "floor"):
        part = community["all"][who]
        numbers += [part["fpd"]["value"], part["fpd"]["error"], part["kpd"]["value"],
                    part["kpd"]["error"], part["classifier"]["auc"], part["classifier"]["jsd"],
                    *part["separation_power"].values()]
    assert all("floor" in entry for entry in community["by_energy"].values())
    assert len(report["headline"]["ws_channels"]) == 5
    assert set(report["headline_by_convention"]) == {"o2-debug", "expertsim-paper", "o2-hits"}
    assert report["headline_by_convention"]["o2-debug"]["ws_mean"] == pytest.approx(
        report["headline"]["ws_mean"])
    assert report["headline_by_convention"]["o2-debug"]["floor_ws_mean"] == pytest.approx(
        report["floor"]["ws_mean"])
    low, high = headline["ws_mean_ci95"]
    assert low < headline["ws_mean"] < high
    assert all(np.isfinite(numbers)), numbers
    assert isinstance(report["passed"], bool)


def test_report_has_every_documented_number(reference, tmp_path, monkeypatch):
    from expertsim import validation

    monkeypatch.setattr(validation, "MIN_SLICE_EVENTS", 100)  # slices of this small file
    gens = [generated_from_simulation(reference, tmp_path / f"g{k}.h5", seed=10 + k)
            for k in range(2)]
    result = run_validate("--reference", reference, "--generated", gens[0], "--generated",
                          gens[1], "-o", tmp_path / "report")
    assert result.exit_code == 0, result.output
    report = json.loads((tmp_path / "report" / "metrics.json").read_text())
    assert_complete(report)
    # matched design: each particle's generation on MC A is scored against MC B
    assert report["n_pairs"] == 3000 and report["per_expert"]["0"]["n"] == 3000
    assert set(report["per_group"]) == {"0", "1", "2"}
    assert len(report["response_vs_energy"]["edges_gev"]) == 9
    for name in ("channels.png", "mean_images.png", "examples.png", "response_energy.png"):
        assert (tmp_path / "report" / name).stat().st_size > 5000
    page = (tmp_path / "report" / "index.html").read_text()
    assert "channels.png" in page and "MC vs MC (floor)" in page
    slices = report["community"]["by_energy"]
    assert len(slices) >= 3 and set(report["community"]["by_species"]) >= {"2112"}
    assert all(np.isfinite(entry[who]["fpd"]["value"]) for entry in slices.values()
               for who in ("model", "floor"))
    assert "Per energy bin and species" in page and "PDG 2112" in page
    # two independent simulations of each particle move their showers as much as MC A and B
    spread = report["paired"]["centroid_spread"]
    assert spread["floor_median"] == report["paired"]["centroid_distance"]["floor_median"]
    assert 0.8 < spread["ratio"] < 1.25 and spread["n"] > 1000
    assert "between two generations" in page
    # ... and scatter their photon sums as much, in every third of the energies
    sums = report["photon_sum_spread"]
    assert set(sums) == {"unit", "energy_edges_gev", "all", "0", "1", "2"}
    assert sums["all"]["n"] == 3000 and sums["0"]["n"] + sums["1"]["n"] + sums["2"]["n"] == 3000
    assert all(0.8 < sums[group]["ratio"] < 1.25 for group in ("all", "1", "2")), sums
    # below ~17 GeV a particle leaves a photon or two: that third's RMS rests on a few events
    assert 0.6 < sums["0"]["ratio"] < 1.6, sums
    assert sums["2"]["floor_std"] > sums["0"]["floor_std"] > 0
    assert "photon-sum scatter of one particle, energy third 2 (E &gt;= " in page


def test_the_spread_between_generations_is_zero_for_a_generator_that_ignores_its_noise():
    from expertsim.validation import _paired

    rng = np.random.default_rng(5)
    features = {key: rng.normal(size=50) for key in
                ("centroid_x", "centroid_y", "width_x", "width_y")}
    mc_a = {key: value + rng.normal(scale=0.5, size=50) for key, value in features.items()}
    mc_b = {key: value + rng.normal(scale=0.5, size=50) for key, value in features.items()}
    paired = _paired(features, mc_b, (mc_a, mc_b), second=dict(features))
    assert paired["centroid_spread"]["model_median"] == 0.0
    assert paired["centroid_spread"]["ratio"] == 0.0
    assert paired["centroid_distance"]["ratio"] > 0.3
    assert "centroid_spread" not in _paired(features, mc_b, (mc_a, mc_b))


def test_photon_sum_scatter_is_the_shower_to_shower_spread_of_one_particle():
    from expertsim.validation import _photon_sum_spread

    rng = np.random.default_rng(6)
    energy = rng.uniform(10, 1000, 6000)
    mean = 2.0 * energy
    draw = {k: {"photon_sum": mean + rng.normal(scale=0.1 * mean), "energy": energy}
            for k in ("a", "b", "wide")}
    draw["wide"]["photon_sum"] = mean + rng.normal(scale=0.2 * mean)
    spread = _photon_sum_spread(draw["wide"], draw["a"], draw["b"], (draw["a"], draw["b"]))
    # the floor estimates the 10 % scatter, the model pair 1/sqrt(2) of 10 % (+) 20 %
    assert spread["energy_edges_gev"] == pytest.approx([340, 670], abs=25)
    top = energy >= spread["energy_edges_gev"][1]
    expected = 0.1 * np.sqrt(np.mean(mean[top] ** 2))
    assert spread["2"]["n"] == top.sum()
    assert spread["2"]["floor_std"] == pytest.approx(expected, rel=0.05)
    assert spread["2"]["ratio"] == pytest.approx(np.sqrt(5 / 2), rel=0.08)
    assert spread["all"]["n"] == 6000 and spread["unit"] == "photons"
    assert _photon_sum_spread(draw["a"], None, draw["b"], None) is None
    assert _photon_sum_spread(draw["a"], draw["b"], draw["b"], None)["all"]["floor_std"] is None


@pytest.mark.slow
def test_a_faithful_generator_sits_at_the_floor_and_a_wrong_one_fails(reference, tmp_path):
    good = generated_from_simulation(reference, tmp_path / "good.h5", seed=21)
    wrong = generated_from_simulation(reference, tmp_path / "wrong.h5", seed=21, scale=2.0)
    limits = tmp_path / "limits.yaml"
    limits.write_text("headline.ws_mean: 5.0\nclassifier_auc: 0.6\n")
    ok = run_validate("--reference", reference, "--generated", good, "-o", tmp_path / "ok",
                      "--thresholds", limits)
    bad = run_validate("--reference", reference, "--generated", wrong, "-o", tmp_path / "bad",
                       "--thresholds", limits)
    good_report = json.loads((tmp_path / "ok" / "metrics.json").read_text())
    bad_report = json.loads((tmp_path / "bad" / "metrics.json").read_text())
    floor = good_report["floor"]["ws_mean"]
    assert good_report["headline"]["ws_mean"] < 2 * floor + 1.0
    # an independent simulation is as good as the floor: on matched terms its ratio interval
    # holds 1 (the old N-vs-N against N/2-vs-N/2 comparison gave ~0.7), and it puts showers
    # where the MC does
    low, high = good_report["headline"]["ratio_ci95"]
    assert low < 1.0 < high, good_report["headline"]
    assert 0.8 < good_report["paired"]["centroid_distance"]["ratio"] < 1.25
    assert bad_report["headline"]["ratio"] > 3
    assert bad_report["headline"]["ws_mean"] > 5 * good_report["headline"]["ws_mean"]
    assert bad_report["classifier_auc"] > 0.75 > good_report["classifier_auc"]
    # the community's metrics agree: the faithful generator within errors of its floor, the
    # wrong one far off
    faithful, wrong_one = good_report["community"]["all"], bad_report["community"]["all"]
    for name in ("fpd", "kpd"):
        ours, floor_value = faithful["model"][name], faithful["floor"][name]
        assert abs(ours["value"] - floor_value["value"]) < 5 * (ours["error"]
                                                                + floor_value["error"]) + 1e-3
        assert wrong_one["model"][name]["value"] > 5 * wrong_one["model"][name]["error"] > 0
    assert faithful["model"]["classifier"]["jsd"] < 0.05 < wrong_one["model"]["classifier"]["jsd"]
    worst_bad = max(wrong_one["model"]["separation_power"].values())
    worst_good = max(faithful["model"]["separation_power"].values())
    assert worst_bad > 3 * worst_good, (worst_bad, worst_good)
    assert ok.exit_code == 0, ok.output
    assert bad.exit_code == 3 and "headline.ws_mean" in bad.output


def test_validate_with_a_model_generates_first(reference, tmp_path):
    from tests.test_sampling import make_model

    model = make_model(reference, tmp_path / "model")
    result = run_validate("--model", model, "--reference", reference, "--generations", 2,
                          "--split", "test", "--min-photon-sum", 1, "-o", tmp_path / "report",
                          "--pbpb", 30)
    assert result.exit_code == 0, result.output
    report = json.loads((tmp_path / "report" / "metrics.json").read_text())
    assert len(report["generated"]) == 2 and report["headline"]["ws_mean_std"] > 0
    assert_complete(report)
    for name in ("channels.png", "mean_images.png", "examples.png", "response_energy.png",
                 "pbpb_linearity.png", "pbpb_centrality.png"):
        assert (tmp_path / "report" / name).stat().st_size > 5000
    # Pb-Pb: 30 collisions, summed per side, per centrality class, in the page and the summary
    pbpb = report["pbpb"]
    assert pbpb["n_collisions"] == 30 and pbpb["n_particles"] > 0
    assert sum(row["entries"] for row in pbpb["by_centrality"]) == 60
    assert pbpb["linearity"]["mc"]["photons_per_nucleon"] > 0
    assert "Pb-Pb (30 collisions" in result.output
    assert "free neutrons mean (rms)" in (tmp_path / "report" / "index.html").read_text()
    import h5py
    with h5py.File(reference) as handle:
        expected = ((handle["split"][:] == 2) & (handle["derived/photon_sum"][:] >= 1)).sum()
    assert report["n_reference"] == expected and report["fraction_empty"]["reference"] == 0


def test_mlflow_logging_into_an_existing_run(reference, tmp_path, monkeypatch):
    import mlflow

    # an absolute store: MLflow caches stores by URI, so a relative sqlite:///mlflow.db used
    # by an earlier test in this process would point at that test's folder
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    good = generated_from_simulation(reference, tmp_path / "good.h5", seed=3)
    mlflow.set_tracking_uri(uri)
    mlflow.set_experiment("validate-logging")  # not the active experiment of another store
    with mlflow.start_run() as run:
        pass
    result = run_validate("--reference", reference, "--generated", good, "-o", tmp_path / "r",
                          "--mlflow-run", run.info.run_id)
    assert result.exit_code == 0, result.output
    logged = mlflow.MlflowClient(uri).get_run(run.info.run_id)
    assert logged.data.metrics["validate/ws_mean"] > 0


@pytest.mark.slow
def test_end_to_end_simulate_train_smoke_validate(tmp_path, monkeypatch):
    """The main job at test size: smoke model on built-in data, validated on an independent
    Monte Carlo sample with repeats (so the floor exists)."""
    import os

    monkeypatch.chdir(tmp_path)
    smoke = os.path.join(os.path.dirname(__file__), "..", "training", "smoke.yaml")
    steps = [
        ["train", "--config", smoke, "--set", "data.simulate.n_events=4000",
         "--set", "data.batch_size=64", "--set", "train.epochs=1",
         "--set", "tracking.enabled=false", "--set", "gate.steps=300"],
        ["simulate", "--detector", "zn", "-n", "3000", "--repeat", "2", "--seed", "99",
         "-o", "mc.h5"],
        ["validate", "--model", "runs/smoke/model.pt", "--reference", "mc.h5",
         "--min-photon-sum", "1", "--generations", "2", "-o", "report"],
    ]
    for step in steps:
        result = CliRunner().invoke(main, step, catch_exceptions=False)
        assert result.exit_code == 0, result.output
    assert "MC floor" in result.output
    report = json.loads((tmp_path / "report" / "metrics.json").read_text())
    assert_complete(report)
    for name in ("channels.png", "mean_images.png", "examples.png", "response_energy.png",
                 "index.html"):
        assert (tmp_path / "report" / name).stat().st_size > 1000


def test_the_lookup_table_finds_the_nearest_training_event_of_the_same_species(reference,
                                                                                 tmp_path):
    from expertsim.eventfile import EventFile
    from expertsim.lookup import nearest_training_rows

    with EventFile(reference) as events:
        train = events.rows("train")
        conditions, pdg = events.conditions(), events.pdg()
        split = events.split_labels()
    # a training particle finds itself (or its repeat, with identical conditions)
    found = nearest_training_rows(reference, conditions[train[:50]], pdg[train[:50]])
    np.testing.assert_array_equal(conditions[found], conditions[train[:50]])
    # a test particle finds a training event of its own species
    test = np.flatnonzero(split == 2)[:200]
    found = nearest_training_rows(reference, conditions[test], pdg[test])
    assert (split[found] == 0).all() and np.array_equal(pdg[found], pdg[test])

    result = run_validate("--lookup", reference, "--reference", reference, "--split", "test",
                          "--min-photon-sum", 1, "-o", tmp_path / "lookup")
    assert result.exit_code == 0, result.output
    report = json.loads((tmp_path / "lookup" / "metrics.json").read_text())
    assert report["design"] == "matched" and len(report["generated"]) == 1
    assert report["headline"]["ratio"] > 0 and "MC floor" in result.output


def test_features_are_computed_block_by_block_without_holding_the_images(reference,
                                                                          monkeypatch):
    from expertsim import metrics, plots, validation
    from expertsim.eventfile import EventFile

    monkeypatch.setattr(validation, "READ_BLOCK", 333)  # blocks that do not divide the file
    features = validation._read(reference)
    assert "images" not in features
    with EventFile(reference) as events:
        images = events.images()
    whole = metrics.event_features(images)
    for key in ("photon_sum", "channels", "fibres_hit", "centroid_x", "width_y"):
        np.testing.assert_allclose(features[key], whole[key], rtol=1e-12)  # summation order
    np.testing.assert_array_equal(features["row"], np.arange(len(images)))
    rows = np.array([5, 5, 7, 1000, 5999])  # repeats count as often as they appear
    np.testing.assert_allclose(plots.mean_image(features["path"], rows, block=64),
                               images[rows].astype(float).mean(axis=0))
