"""ONNX export for ALICE O2, consumed the way O2 consumes it.

The consumer side here is written from the O2 contract (SOURCES.md) alone: plain
onnxruntime, a scales-file parser of our own, raw conditions scaled by hand, O2's truncation
and its hit channels summed over the flat index pixels[Nx * y + x]. Nothing of
expertsim.export or expertsim.o2 is used to read the files back.
"""

import json

import numpy as np
import onnx
import onnxruntime
import pytest
import torch
from click.testing import CliRunner

from expertsim.cli import main
from expertsim.detector import channel_sums
from expertsim.trained_model import TrainedModel
from tests.test_sampling import make_model


def parse_o2_scales(path):
    """O2's scaler file: '#means', nine numbers one per line, a blank line, '#scales', nine."""
    sections, current = {}, None
    for line in open(path).read().splitlines():
        text = line.strip()
        if text.startswith("#"):
            current = sections.setdefault(text[1:], [])
        elif text:
            current.append(float(text))
    assert set(sections) == {"means", "scales"}, sections.keys()
    return np.array(sections["means"]), np.array(sections["scales"])


def o2_hit_channels(flat_nphe, nx, ny):
    """O2's FastSimToHits channels of one flat array read as pixels[nx * y + x]: (x + y) even
    -> common PMT (channel 5); odd -> ZN quadrant towers (x first), ZP tower int(4 x / nx)."""
    sums = [0] * 5
    for y in range(ny):
        for x in range(nx):
            value = int(flat_nphe[nx * y + x])
            if (x + y) % 2 == 0:
                sums[4] += value
            elif nx == ny:
                sums[(x >= nx // 2) + 2 * (y >= ny // 2)] += value
            else:
                sums[4 * x // nx] += value
    return sums


def spread_routing(model_path):
    """Make the router send events to every expert (a 3-step router often picks one), so
    that the export's per-expert branches are all exercised."""
    payload = torch.load(model_path, weights_only=True)
    generator = torch.Generator().manual_seed(0)
    for key in ("router.net.4.weight", "net.4.weight"):
        if key in payload["router"]:
            weight = payload["router"][key]
            payload["router"][key] = torch.randn(weight.shape, generator=generator) * 3
    torch.save(payload, model_path)
    return model_path


@pytest.fixture(scope="module", params=["zn", "zp", "zn-radial", "zp-radial-intensity"])
def exported(request, tmp_path_factory):
    detector, conditioning, head = (request.param + "--").split("-")[:3]
    data = request.getfixturevalue(f"{detector}_file")
    folder = tmp_path_factory.mktemp(f"export_{request.param}")
    model = spread_routing(make_model(data, folder, conditioning or "plain",
                                      intensity_head=head == "intensity"))
    result = CliRunner().invoke(main, ["export", "--model", str(model), "--format", "onnx",
                                       "-o", str(folder / "onnx"), "--check-events", "300"])
    assert result.exit_code == 0, result.output
    assert "passed" in result.output
    return model, folder / "onnx", data


def test_export_writes_the_o2_files(exported):
    model, folder, _ = exported
    assert sorted(p.name for p in folder.iterdir()) == sorted(
        ["model.json", "model.onnx", "scales.txt", "classifier.onnx", "classifier_scales.txt"])
    trained = TrainedModel.load(model)
    rows, cols = trained.image_shape
    generator = onnx.load(str(folder / "model.onnx"))
    onnx.checker.check_model(generator)
    # each expert behind its own If: a particle runs only the operators of its expert; one
    # more If holds the redraw of empty draws
    assert [n.op_type for n in generator.graph.node].count("If") == trained.n_experts + 1
    assert signature(generator.graph.input) == [
        ("noise", ["batch", 10]), ("conditions", ["batch", 9])]
    # O2 reads the output flat as pixels[Nx * y + x], x along the rows: (batch, Ny, Nx)
    assert signature(generator.graph.output) == [
        ("image", ["batch", cols, rows]), ("expected", ["batch", cols, rows])]
    classifier = onnx.load(str(folder / "classifier.onnx"))
    assert signature(classifier.graph.input) == [("conditions", ["batch", 9])]
    assert signature(classifier.graph.output) == [
        ("leaves_light", ["batch", 1]), ("probability", ["batch", 1])]
    metadata = json.loads((folder / "model.json").read_text())
    assert metadata["detector"] == trained.detector.name
    assert metadata["image_shape"] == [rows, cols]
    particle = "Neutron" if trained.detector.name == "ZN" else "Proton"
    assert metadata["o2_settings"] == {
        f"ZDCFastSimModelPath{particle}": "model.onnx",
        f"ZDCFastSimModelScales{particle}": "scales.txt",
        "ZDCFastSimClassifierPath": "classifier.onnx",
        "ZDCFastSimClassifierScales": "classifier_scales.txt"}
    assert {"pixel_order", "channels", "side", "counting"} <= set(metadata["conventions"])
    assert metadata["opset"] == generator.opset_import[0].version == 17
    check = metadata["check"]
    assert check["passed"] and check["n_events"] == 300
    assert check["max_abs_log_difference"] <= 1e-4 and check["max_channel_difference"] == 0
    assert len(metadata["model_sha256"]) == 64 and metadata["package_version"]
    for name in ("scales.txt", "classifier_scales.txt"):
        means, scales = parse_o2_scales(folder / name)
        np.testing.assert_allclose(means, trained.scaler.mean, rtol=1e-15)
        np.testing.assert_allclose(scales, trained.scaler.scale, rtol=1e-15)


def signature(values):
    return [(v.name, [d.dim_param or d.dim_value for d in v.type.tensor_type.shape.dim])
            for v in values]


def test_o2_style_consumer_reproduces_pytorch(exported):
    """Raw conditions from an event file, scaled as O2 does, one event at a time (O2's shape
    (1, 10)) and as one batch; the expectation against the package's own path, and the drawn
    counts read back with O2's truncation and flat index."""
    model, folder, data = exported
    import h5py

    with h5py.File(data) as handle:
        raw = handle["conditions"][:400].astype(np.float32)
    means, scales = parse_o2_scales(folder / "scales.txt")
    scaled = ((raw - means.astype(np.float32)) / scales.astype(np.float32)).astype(np.float32)
    noise = np.random.default_rng(5).standard_normal((len(raw), 10)).astype(np.float32)
    session = onnxruntime.InferenceSession(str(folder / "model.onnx"),
                                           providers=["CPUExecutionProvider"])
    input_names = [i.name for i in session.get_inputs()]
    image, expected = session.run(None, {input_names[0]: noise, input_names[1]: scaled})
    singles = np.concatenate([session.run(None, {input_names[0]: noise[k:k + 1],
                                                 input_names[1]: scaled[k:k + 1]})[1]
                              for k in range(0, 40)])
    np.testing.assert_allclose(singles, expected[:40], atol=1e-5)

    trained = TrainedModel.load(model)
    mixture, mean, scale = trained.mixture, trained.scaler.mean, trained.scaler.scale
    with torch.no_grad():
        reference, experts = mixture(torch.from_numpy(noise), torch.from_numpy(
            ((raw.astype(np.float64) - mean) / scale).astype(np.float32)))
    assert len(np.unique(experts.numpy())) >= 2, "the test must exercise several experts"
    np.testing.assert_allclose(expected.transpose(0, 2, 1), reference.numpy(), atol=1e-4)

    rows, cols = trained.image_shape
    flat = image.reshape(len(image), -1)
    nphe = np.trunc(np.expm1(flat)).astype(np.int64)  # O2: (int)expm1(pixel), float32
    assert np.abs(np.expm1(flat) - np.where(nphe > 0, nphe + 0.05, 0)).max() < 1e-2
    assert (nphe.sum(axis=1) > 0).all()  # the generators draw responses with light
    expected_sum = np.expm1(reference.numpy().astype(np.float64)).sum(axis=(1, 2))
    assert abs(nphe.sum() / expected_sum.sum() - 1) < 0.05
    counts = nphe.reshape(len(nphe), cols, rows).transpose(0, 2, 1)  # back to (x, y) rows
    o2 = np.array([o2_hit_channels(event, rows, cols) for event in nphe[:50]])
    np.testing.assert_array_equal(o2, channel_sums(counts[:50], "o2-hits"))


def test_o2_truncation_recovers_every_count_from_the_encoding():
    """log(1 + k + 0.05), computed in float32 as the graph computes it, survives O2's
    (int)expm1 for every count up to 50,000 photons in a fibre (the largest published event
    holds 3,360 photons in all); log1p(k) alone does not (the reason for the margin)."""
    k = np.arange(0, 50_001)
    encoded = np.log((np.float32(1) + k.astype(np.float32)
                      + np.float32(0.05) * (k > 0)).astype(np.float32))
    assert np.array_equal(np.trunc(np.expm1(encoded)).astype(np.int64), k)  # float32 expm1
    assert np.array_equal(np.trunc(np.expm1(encoded.astype(np.float64))).astype(np.int64), k)
    plain = np.log1p(k).astype(np.float32)
    assert (np.trunc(np.expm1(plain)).astype(np.int64) == k - 1).any()


def test_failed_check_writes_nothing(exported, tmp_path, monkeypatch):
    import expertsim.export as export

    model, _, _ = exported
    monkeypatch.setattr(export, "LOG_TOLERANCE", -1.0)
    result = CliRunner().invoke(main, ["export", "--model", str(model), "-o",
                                       str(tmp_path / "out"), "--check-events", "20"])
    assert result.exit_code == 2
    assert "does not reproduce PyTorch" in result.output and "nothing was written" in result.output
    assert list((tmp_path / "out").iterdir()) == []


def test_check_compares_the_runtimes_on_equal_inputs_and_checks_the_scales(exported, tmp_path):
    """The runtimes are compared on the same scaled conditions, and the scales files, applied
    as O2 applies them, must reproduce that scaling: a mean off by 1e-3 of its scale in the
    written file fails the check on the scaling alone."""
    import shutil

    from expertsim.export import SCALING_TOLERANCE, check_export, write_scales_file
    from expertsim.scaler import Scaler

    model, folder, _ = exported
    trained = TrainedModel.load(model)
    good = check_export(folder, trained, n_events=50)
    assert good.passed and good.max_scaling_difference <= 1e-6
    broken = tmp_path / "broken"
    shutil.copytree(folder, broken)
    means, scales = parse_o2_scales(broken / "scales.txt")
    means[3] += 1e-3 * scales[3]
    write_scales_file(broken / "scales.txt", Scaler(means, scales))
    bad = check_export(broken, trained, n_events=50)
    assert not bad.passed
    assert bad.max_scaling_difference == pytest.approx(1e-3, rel=1e-2)
    assert bad.max_scaling_difference > SCALING_TOLERANCE
    assert bad.max_abs_log_difference == good.max_abs_log_difference


def test_export_of_a_missing_or_foreign_model_is_a_clear_error(tmp_path):
    result = CliRunner().invoke(main, ["export", "--model", str(tmp_path / "none.pt"), "-o",
                                       str(tmp_path / "out")])
    assert result.exit_code == 2 and "no such file" in result.output
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a model")
    result = CliRunner().invoke(main, ["export", "--model", str(bad), "-o", str(tmp_path / "o")])
    assert result.exit_code == 2 and "bad.pt" in result.output


def test_the_graph_redraws_empty_draws_and_only_those(tmp_path):
    """The counting part of the generator graph alone (6 x 5 fibres), run in plain ONNX
    Runtime: an event with expected photons never comes out empty, one without stays empty,
    and the photon count of a faint event follows the zero-truncated Poisson law."""
    from expertsim.export import _O2Outputs, _scripted, _write_onnx

    shape = (6, 5)
    path = tmp_path / "counts.onnx"
    _write_onnx(_scripted(_O2Outputs(shape)), path, 17, (torch.zeros(2, *shape),),
                ("log_expected",), ("image", "expected"), shape[::-1])
    assert [n.op_type for n in onnx.load(str(path)).graph.node].count("If") == 1
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    total = 0.1  # photons an event: an unconditioned draw is empty 90 % of the time
    expected = np.zeros((4000, *shape), np.float32)
    expected[:3000] = total / (shape[0] * shape[1])
    image, _ = session.run(None, {"log_expected": np.log1p(expected)})
    photons = np.expm1(image.astype(np.float64)).astype(np.int64).reshape(4000, -1).sum(axis=1)
    assert (photons[:3000] >= 1).all() and (photons[3000:] == 0).all()
    truncated_mean = total / (1.0 - np.exp(-total))  # 1.051; standard error ~0.004
    assert abs(photons[:3000].mean() - truncated_mean) < 0.02
    bright = np.full((500, *shape), 2.0, np.float32)  # 60 photons an event: no empty draw
    image, _ = session.run(None, {"log_expected": np.log1p(bright)})
    photons = np.expm1(image.astype(np.float64)).astype(np.int64).reshape(500, -1).sum(axis=1)
    assert abs(photons.mean() - 60.0) < 4 * np.sqrt(60.0 / 500)
