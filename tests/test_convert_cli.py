"""`expertsim prepare` / `inspect` through click's CliRunner on real files built here."""

import pickle

import h5py
import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner

from expertsim.cli import main
from expertsim.eventfile import check_event_file, read_columns


def run(*args):
    return CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)


def assert_clean_failure(result, output, *fragments):
    assert result.exit_code != 0
    message = result.output.strip()
    assert message.startswith("Error:") and "\n" not in message, message
    for fragment in fragments:
        assert fragment in message, message
    assert not output.exists()
    assert not list(output.parent.glob(f".{output.name}.*")), "temporary file left behind"


@pytest.fixture()
def arrays(rng):
    images = rng.poisson(0.3, (40, 44, 44)).astype(np.float64)  # flow-matching stores floats
    conditions = rng.normal(size=(40, 9))
    pdg = rng.choice([2112, 22], size=40)
    return images, conditions, pdg


def test_npz_pair_round_trip(tmp_path, arrays):
    images, conditions, pdg = arrays
    np.savez(tmp_path / "data_nonrandom_responses.npz", images)
    np.savez(tmp_path / "data_nonrandom_particles.npz", np.column_stack([conditions, pdg]))
    out = tmp_path / "zn.h5"
    result = run("prepare", "npz-pair", tmp_path / "data_nonrandom_responses.npz",
                 tmp_path / "data_nonrandom_particles.npz", "-o", out, "--seed", 3)
    assert result.exit_code == 0, result.output
    info = check_event_file(out)
    assert info.detector.name == "ZN" and info.n_events == 40
    assert info.provenance["seed"] == 3 and len(info.provenance["inputs"]) == 2
    with h5py.File(out) as handle:
        np.testing.assert_array_equal(handle["images"][:], images)
        assert handle["images"].dtype == np.uint16
        np.testing.assert_allclose(handle["conditions"][:], conditions, rtol=1e-6)
        np.testing.assert_array_equal(handle["pdg"][:], pdg)


def test_generic_npz_round_trip_zp(tmp_path, rng):
    images = rng.poisson(0.2, (30, 56, 30))
    conditions = rng.normal(size=(30, 9))
    np.savez(tmp_path / "in.npz", images=images, conditions=conditions)
    out = tmp_path / "zp.h5"
    assert run("prepare", "npz", tmp_path / "in.npz", "-o", out).exit_code == 0
    with h5py.File(out) as handle:
        assert handle.attrs["detector"] == "ZP"
        np.testing.assert_array_equal(handle["images"][:], images)
    np.testing.assert_allclose(read_columns(out, ("derived/photon_sum",))["derived/photon_sum"],
                               images.sum(axis=(1, 2)))


def write_pickles(tmp_path, images, conditions):
    columns = ["Energy", "Vx", "Vy", "Vz", "Px", "Py", "Pz", "mass", "charge"]
    frame = pd.DataFrame(conditions, columns=columns)
    frame["photon_sum"] = images.sum(axis=(1, 2))  # derived columns are present and ignored
    with open(tmp_path / "images.pkl", "wb") as handle:
        pickle.dump(images, handle)
    frame.to_pickle(tmp_path / "conditions.pkl")
    pd.DataFrame({"max_x": np.zeros(len(images)), "max_y": np.zeros(len(images))}).to_pickle(
        tmp_path / "positions.pkl")


def test_pickle_trio_needs_the_opt_in(tmp_path, arrays):
    images, conditions, _ = arrays
    write_pickles(tmp_path, images, conditions)
    out = tmp_path / "p.h5"
    common = ["prepare", "pickle", "--images", tmp_path / "images.pkl", "--conditions",
              tmp_path / "conditions.pkl", "--positions", tmp_path / "positions.pkl", "-o", out]
    assert_clean_failure(run(*common), out, "--trust-pickle")
    result = run(*common, "--trust-pickle")
    assert result.exit_code == 0, result.output
    with h5py.File(out) as handle:
        np.testing.assert_array_equal(handle["images"][:], images)
        np.testing.assert_allclose(handle["conditions"][:], conditions, rtol=1e-6)


def test_bad_inputs_fail_cleanly(tmp_path, arrays):
    images, conditions, pdg = arrays
    out = tmp_path / "out.h5"
    np.savez(tmp_path / "nokey.npz", pictures=images, conditions=conditions)
    assert_clean_failure(run("prepare", "npz", tmp_path / "nokey.npz", "-o", out), out,
                         "nokey.npz", "missing key 'images'")
    np.savez(tmp_path / "shape.npz", images=images[:, :40], conditions=conditions)
    assert_clean_failure(run("prepare", "npz", tmp_path / "shape.npz", "-o", out), out,
                         "shape.npz", "(40, 44)")
    bad = conditions.copy()
    bad[7, 2] = np.nan
    np.savez(tmp_path / "nan.npz", images=images, conditions=bad)
    assert_clean_failure(run("prepare", "npz", tmp_path / "nan.npz", "-o", out), out,
                         "nan.npz[conditions]", "NaN", "event 7, column 2")
    np.savez(tmp_path / "r.npz", images)
    np.savez(tmp_path / "p.npz", np.column_stack([conditions, pdg])[:, :9])
    assert_clean_failure(run("prepare", "npz-pair", tmp_path / "r.npz", tmp_path / "p.npz",
                             "-o", out), out, "p.npz[arr_0]", "(40, 10)")
    assert_clean_failure(run("prepare", "npz", tmp_path / "in.npz", "--detector", "zp", "-o", out),
                         out, "no such file")


def test_truncated_hdf5_fails_cleanly(tmp_path, zn_file):
    data = zn_file.read_bytes()
    truncated = tmp_path / "truncated.h5"
    truncated.write_bytes(data[: len(data) // 3])
    out = tmp_path / "out.h5"
    assert_clean_failure(run("prepare", "h5", truncated, "-o", out), out, "truncated.h5",
                         "truncated")
    result = run("inspect", truncated)
    assert result.exit_code != 0 and "truncated.h5" in result.output


def test_prepare_h5_rederives_a_raw_file(tmp_path, arrays):
    images, conditions, _ = arrays
    raw = tmp_path / "raw.h5"
    with h5py.File(raw, "w") as handle:
        handle["images"] = images.astype(np.uint16)
        handle["conditions"] = conditions
    out = tmp_path / "full.h5"
    result = run("prepare", "h5", raw, "-o", out, "--split", "0.5,0.25,0.25")
    assert result.exit_code == 0, result.output
    split = read_columns(out, ("split",))["split"]
    np.testing.assert_array_equal(np.bincount(split), [20, 10, 10])


def test_simulate_and_inspect(tmp_path):
    out = tmp_path / "zp.h5"
    result = run("simulate", "--detector", "zp", "-n", 2000, "-o", out, "--seed", 4)
    assert result.exit_code == 0, result.output
    info = check_event_file(out)
    assert info.provenance["config"]["parameters"]["distance_cm"] == 11250.0
    png = tmp_path / "zp.png"
    result = run("inspect", out, "--plot", png)
    assert result.exit_code == 0, result.output
    assert "ZP (56, 30)" in result.output and "photon sum (non-empty)" in result.output
    assert png.stat().st_size > 10_000
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize("command", [[], ["simulate"], ["prepare"], ["prepare", "npz"],
                                     ["prepare", "pickle"], ["inspect"]])
def test_every_command_has_help_with_an_example(command):
    result = run(*command, "--help")
    assert result.exit_code == 0
    assert "expertsim " in result.output and ("Example" in result.output or command == [])
