"""Distillation: a lighter one-expert student learns a trained model's images."""

import numpy as np
import torch
from click.testing import CliRunner

from expertsim.cli import main
from expertsim.provenance import file_sha256
from expertsim.trained_model import TrainedModel
from tests.test_sampling import make_model


def test_student_learns_the_teachers_images_and_keeps_its_gate(zn_file, tmp_path):
    teacher_path = make_model(zn_file, tmp_path, "radial")
    output = tmp_path / "student.pt"
    result = CliRunner().invoke(main, [
        "distill", "--teacher", str(teacher_path), "--data", str(zn_file), "--channels", "4",
        "--steps", "80", "--batch-size", "64", "--lr", "3e-3", "-o", str(output)])
    assert result.exit_code == 0, result.output
    teacher, student = TrainedModel.load(teacher_path), TrainedModel.load(output)
    assert student.n_experts == 1 and student.config.model.generator_channels == 4
    assert student.config.model.conditioning == "radial"
    assert student.n_parameters < teacher.n_parameters / 2
    np.testing.assert_array_equal(student.scaler.mean, teacher.scaler.mean)
    assert teacher.gate is not None
    for name, value in teacher.gate.state_dict().items():
        assert torch.equal(student.gate.state_dict()[name], value), name
    assert student.provenance["made_by"] == "expertsim distill"
    assert student.provenance["inputs"][0]["sha256"] == file_sha256(teacher_path)
    report = student.provenance["config"]["report"]
    assert report["steps"] == 80 and report["loss_last"] < 0.5 * report["loss_first"]

    # on fresh noise the student is far closer to the teacher than an untrained student of
    # the same size is (test-split particles with light: not the ones it learned on)
    from expertsim.eventfile import EventFile
    from expertsim.trained_model import build_mixture

    with EventFile(zn_file) as events:
        c = teacher.scale(events.conditions(events.rows("test", min_photon_sum=1)[:256]))
    z = torch.randn(len(c), teacher.noise_dim, generator=torch.Generator().manual_seed(4))
    untrained = build_mixture(student.config.model, student.image_shape, student.scaler).eval()
    with torch.no_grad():
        target = teacher.generate(z, c)[0]
        learned = ((student.generate(z, c)[0] - target) ** 2).mean()
        initial = ((untrained.generate(z, c)[0] - target) ** 2).mean()
    assert learned < 0.5 * initial


def test_distill_refuses_another_detectors_file_and_its_own_teacher(zn_file, zp_file,
                                                                     tmp_path):
    teacher_path = make_model(zn_file, tmp_path)
    for data, output, message in ((zp_file, tmp_path / "s.pt", "a ZP file, but the teacher"),
                                  (zn_file, teacher_path, "is the input")):
        result = CliRunner().invoke(main, ["distill", "--teacher", str(teacher_path), "--data",
                                           str(data), "--steps", "2", "-o", str(output)])
        assert result.exit_code == 2, result.output
        assert message in result.output and "Traceback" not in result.output
    assert not (tmp_path / "s.pt").exists()
