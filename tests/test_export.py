"""ONNX export for ALICE O2, consumed the way O2 consumes it.

The consumer side here is written from the O2 contract in SOURCES.md alone: plain
onnxruntime, a scales-file parser of our own, raw conditions scaled by hand, channels summed
over the flat row-major index. Nothing of expertsim.export is used to read the files back.
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


def o2_channels(flat_image, rows, cols):
    """The five channel sums of one image as a flat row-major vector (index j + cols * i)."""
    sums = [0.0] * 5
    for i in range(rows):
        for j in range(cols):
            value = flat_image[j + cols * i]
            if i % 2 != j % 2:
                sums[4] += value
            else:
                sums[(i >= rows // 2) * 2 + (j >= cols // 2)] += value
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


@pytest.fixture(scope="module", params=["zn", "zp", "zn-positional"])
def exported(request, tmp_path_factory):
    detector, _, conditioning = request.param.partition("-")
    data = request.getfixturevalue(f"{detector}_file")
    folder = tmp_path_factory.mktemp(f"export_{request.param}")
    model = spread_routing(make_model(data, folder, conditioning or "plain"))
    result = CliRunner().invoke(main, ["export", "--model", str(model), "--format", "onnx",
                                       "-o", str(folder / "onnx"), "--check-events", "300"])
    assert result.exit_code == 0, result.output
    assert "passed" in result.output
    return model, folder / "onnx", data


def test_export_writes_the_o2_files(exported):
    model, folder, _ = exported
    assert sorted(p.name for p in folder.iterdir()) == ["model.json", "model.onnx", "scales.txt"]
    graph = onnx.load(str(folder / "model.onnx"))
    onnx.checker.check_model(graph)
    inputs = [(i.name, [d.dim_param or d.dim_value for d in i.type.tensor_type.shape.dim],
               i.type.tensor_type.elem_type) for i in graph.graph.input]
    trained = TrainedModel.load(model)
    rows, cols = trained.image_shape
    assert inputs == [("noise", ["batch", 10], onnx.TensorProto.FLOAT),
                      ("conditions", ["batch", 9], onnx.TensorProto.FLOAT)]
    output = graph.graph.output[0]
    assert [d.dim_param or d.dim_value for d in output.type.tensor_type.shape.dim] == \
        ["batch", rows, cols]
    metadata = json.loads((folder / "model.json").read_text())
    assert metadata["detector"] == trained.detector.name
    assert metadata["image_shape"] == [rows, cols]
    assert [i["name"] for i in metadata["inputs"]] == ["noise", "conditions"]
    assert metadata["opset"] == graph.opset_import[0].version == 17
    assert metadata["check"]["passed"] and metadata["check"]["n_events"] == 300
    assert metadata["check"]["max_abs_log_difference"] <= 1e-4
    assert len(metadata["model_sha256"]) == 64 and metadata["package_version"]
    means, scales = parse_o2_scales(folder / "scales.txt")
    np.testing.assert_allclose(means, trained.scaler.mean, rtol=1e-15)
    np.testing.assert_allclose(scales, trained.scaler.scale, rtol=1e-15)


def test_o2_style_consumer_reproduces_pytorch(exported):
    """Raw conditions from an event file, scaled as O2 does, one event at a time (O2's shape
    (1, 10)) and as one batch; images and channels against the package's own path."""
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
    batch = session.run(None, {input_names[0]: noise, input_names[1]: scaled})[0]
    singles = np.concatenate([session.run(None, {input_names[0]: noise[k:k + 1],
                                                 input_names[1]: scaled[k:k + 1]})[0]
                              for k in range(0, 40)])
    np.testing.assert_allclose(singles, batch[:40], atol=1e-5)

    trained = TrainedModel.load(model)
    mixture, mean, scale = trained.mixture, trained.scaler.mean, trained.scaler.scale
    with torch.no_grad():
        expected, experts = mixture(torch.from_numpy(noise), torch.from_numpy(
            ((raw.astype(np.float64) - mean) / scale).astype(np.float32)))
    assert len(np.unique(experts.numpy())) >= 2, "the test must exercise several experts"
    np.testing.assert_allclose(batch, expected.numpy(), atol=1e-4)
    assert batch.max() > 0

    rows, cols = trained.image_shape
    photons = np.expm1(batch.astype(np.float64))
    o2 = np.array([o2_channels(image.ravel(), rows, cols) for image in photons[:50]])
    np.testing.assert_allclose(o2, channel_sums(photons[:50]), rtol=1e-9)


def test_failed_check_writes_nothing(exported, tmp_path, monkeypatch):
    import expertsim.export as export

    model, _, _ = exported
    monkeypatch.setattr(export, "LOG_TOLERANCE", -1.0)
    result = CliRunner().invoke(main, ["export", "--model", str(model), "-o",
                                       str(tmp_path / "out"), "--check-events", "20"])
    assert result.exit_code == 2
    assert "differs from PyTorch" in result.output and "nothing was written" in result.output
    assert list((tmp_path / "out").iterdir()) == []


def test_export_of_a_missing_or_foreign_model_is_a_clear_error(tmp_path):
    result = CliRunner().invoke(main, ["export", "--model", str(tmp_path / "none.pt"), "-o",
                                       str(tmp_path / "out")])
    assert result.exit_code == 2 and "no such file" in result.output
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a model")
    result = CliRunner().invoke(main, ["export", "--model", str(bad), "-o", str(tmp_path / "o")])
    assert result.exit_code == 2 and "bad.pt" in result.output
