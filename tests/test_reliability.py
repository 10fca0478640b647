"""The reliability catalogue: bad inputs, bad settings and unlucky runs get the package's
standard answer.

Every case of CASES runs the real command line on real files in a temporary folder and checks
the standard answer: exit status 2, exactly one line starting with "Error:" that names what is
wrong, no traceback, no new file anywhere in the folder, and every existing file (the inputs
included) byte-identical (SHA-256) afterwards.

| case | command |
|---|---|
| sample output = its conditions file | sample --conditions in.h5 -o in.h5 |
| sample output = a link to its conditions | sample -o link (link -> in.h5) |
| inspect plot over its input | inspect in.h5 --plot in.h5 |
| prepare output = its input | prepare npz x.npz -o x.npz |
| validate writing over its reference | validate --reference d/reference.h5 --split test -o d |
| an existing output without --overwrite | simulate -o existing.h5 |
| merge onto one of its shards | merge s0.h5 s1.h5 -o s0.h5 |
| NaN conditions | inspect, validate, train |
| negative float photon counts | inspect, train |
| NaN learning rate | train --set optim.lr_generator=.nan |
| a model with NaN weights | export |
| a corrupted HDF5 chunk | inspect, train |
| a ZN model on ZP conditions | sample, validate --model |
| generated file of other conditions | validate --generated |
| read-only output folder | simulate, sample, validate, export, train, gate, inspect --plot |
| header-only / non-numeric CSV, object npz, 0-byte npz | sample (and prepare npz) |
| a missing --thresholds file | validate |
| an unknown --mlflow-run id | validate |
| train.threads=-1, an infinite memory limit | train |

Separate tests below: two trainings of one folder (lock), a resume with changed settings or
data, a non-finite loss, SIGTERM and kill -9 of sample (no .partial left), the user's umask,
"no thresholds given", sample --threads, a study config name that escapes -o, and the
repository standing alone (no citation of a file outside it).
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
from click.testing import CliRunner

from expertsim.cli import main
from expertsim.eventfile import write_event_file
from expertsim.provenance import make_provenance
from tests.conftest import simulate_file
from tests.test_trainer import tiny_config

REPO = Path(__file__).resolve().parents[1]


# ---------------------------------------------------------------- shared inputs


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    """Small real files every case copies: ZN and ZP event files, a ZN model (with gate)."""
    from tests.test_sampling import make_model

    folder = tmp_path_factory.mktemp("reliability")
    zn = simulate_file(folder / "zn.h5", "ZN", 600, seed=3, repeat=2)
    zp = simulate_file(folder / "zp.h5", "ZP", 300, seed=4)
    other_zn = simulate_file(folder / "other_zn.h5", "ZN", 600, seed=5, repeat=2)
    model = make_model(zn, folder / "model")
    return {"zn": zn, "zp": zp, "other_zn": other_zn, "model": model}


class Workspace:
    """A temporary folder holding copies of the shared inputs, and helpers to make more."""

    def __init__(self, root: Path, inputs: dict[str, Path]) -> None:
        self.root = root
        for name, path in inputs.items():
            target = root / ("model.pt" if name == "model" else path.name)
            shutil.copy(path, target)
            setattr(self, name, target)

    def path(self, name: str) -> Path:
        return self.root / name

    def config(self, data: Path, **train) -> Path:
        """A tiny training config (2 steps, no tracking, no gate) as a YAML file."""
        import yaml

        config = tiny_config(data, self.root / "run", max_steps=2, **train).to_dict()
        config["gate"]["enabled"] = False
        path = self.root / "tiny.yaml"
        path.write_text(yaml.safe_dump(config))
        return path

    def event_file(self, name: str, *, float_images: bool = False, nan_condition: bool = False,
                   negative_count: bool = False, corrupt_chunk: bool = False) -> Path:
        """A copy of the ZN file (float32 images if asked), then damaged as asked in place of a
        user's editing: a NaN condition, a negative count, or garbage inside an image chunk."""
        with h5py.File(self.zn) as handle:
            images, conditions = handle["images"][:], handle["conditions"][:]
        path = self.root / name
        write_event_file(path, images.astype(np.float32) if float_images else images,
                         conditions, detector="ZN", provenance=make_provenance(made_by="tests"))
        with h5py.File(path, "r+") as handle:
            if nan_condition:
                handle["conditions"][7, 2] = np.nan
            if negative_count:
                handle["images"][11, 20, 20] = -3.0
        if corrupt_chunk:
            with h5py.File(path) as handle:
                info = handle["images"].id.get_chunk_info(0)
            with open(path, "r+b") as raw:
                raw.seek(info.byte_offset + info.size // 2)
                raw.write(b"\xff" * 64)
        return path


def snapshot(root: Path) -> dict[str, str]:
    """SHA-256 of every file under root (hidden ones included)."""
    return {str(path.relative_to(root)): hashlib.sha256(path.read_bytes()).hexdigest()
            for path in sorted(root.rglob("*")) if path.is_file() and not path.is_symlink()}


def assert_refused(args: list, root: Path, pattern: str, *, ignore: tuple[str, ...] = ()):
    """Run the command; check the standard answer (module docstring)."""
    before = snapshot(root)
    result = CliRunner().invoke(main, [str(a) for a in args])
    output = result.output
    assert result.exit_code == 2, output
    assert isinstance(result.exception, SystemExit), repr(result.exception)
    assert "Traceback" not in output
    errors = [line for line in output.splitlines() if line.startswith("Error:")]
    assert len(errors) == 1, output
    assert re.search(pattern, errors[0]), errors[0]
    after = snapshot(root)
    for name in ignore:
        before.pop(name, None), after.pop(name, None)
    assert after == before, f"files changed: {set(after.items()) ^ set(before.items())}"
    return errors[0]


# ---------------------------------------------------------------- the table


def _npz(w, name, **arrays):
    path = w.path(name)
    np.savez(path, **arrays)
    return path


def _shards(w):
    from expertsim.sampling import Shard, sample_to_file

    conditions = _npz(w, "particles.npz", conditions=h5py.File(w.zn)["conditions"][:50])
    return [sample_to_file(w.model, conditions, w.path(f"s{k}.h5"), shard=Shard(k, 2))
            for k in range(2)]


def _generated_elsewhere(w):
    from expertsim.sampling import sample_to_file

    return sample_to_file(w.model, w.other_zn, w.path("gen.h5"), gate=False)


def _nan_model(w):
    payload = torch.load(w.model, weights_only=True)
    name = next(iter(payload["generator"]))
    payload["generator"][name] = torch.full_like(payload["generator"][name], float("nan"))
    torch.save(payload, w.path("nan_model.pt"))
    return w.path("nan_model.pt")


def _in_folder(w):
    (w.root / "report").mkdir()
    shutil.copy(w.zn, w.root / "report" / "reference.h5")
    return w.root / "report"


CASES = {
    "sample over its conditions": (
        lambda w: ["sample", "--model", w.model, "--conditions", w.zn, "-o", w.zn],
        r"is the input .*zn\.h5"),
    "sample over a link to its conditions": (
        lambda w: (w.path("link.h5").symlink_to(w.zn),
                   ["sample", "--model", w.model, "--conditions", w.zn, "-o",
                    w.path("link.h5")])[1], r"is the input"),
    "inspect plot over its input": (
        lambda w: ["inspect", w.zn, "--plot", w.zn], r"--plot .*is the input"),
    "prepare over its input": (
        lambda w: (_npz(w, "x.npz", images=np.zeros((4, 44, 44)),
                        conditions=np.ones((4, 9))),
                   ["prepare", "npz", w.path("x.npz"), "-o", w.path("x.npz")])[1],
        r"is the input"),
    "validate reference.h5 over the reference": (
        lambda w: ["validate", "--model", w.model, "--reference",
                   _in_folder(w) / "reference.h5", "--split", "test", "-o", w.root / "report"],
        r"writes reference\.h5 there, which is the input"),
    "existing output without --overwrite": (
        lambda w: ["simulate", "--detector", "zn", "-n", "10", "-o", w.zp],
        r"exists; pass --overwrite"),
    "merge onto one of its shards": (
        lambda w: ["merge", *_shards(w), "-o", w.path("s0.h5")], r"is the input .*s0\.h5"),
    "NaN conditions: inspect": (
        lambda w: ["inspect", w.event_file("nan.h5", nan_condition=True)],
        r"nan\.h5: '/conditions' holds NaN or inf \(first at event 7, column vy\)"),
    "NaN conditions: validate": (
        lambda w: ["validate", "--lookup", w.zn, "--reference",
                   w.event_file("nan.h5", nan_condition=True), "-o", w.path("out")],
        r"nan\.h5: '/conditions' holds NaN"),
    "NaN conditions: train": (
        lambda w: ["train", "--config", w.config(w.event_file("nan.h5", nan_condition=True))],
        r"nan\.h5: '/conditions' holds NaN"),
    "negative float counts: inspect": (
        lambda w: ["inspect", w.event_file("neg.h5", float_images=True, negative_count=True)],
        r"neg\.h5: '/images' holds NaN, inf or negative photon counts \(first at event 11\)"),
    "negative float counts: train": (
        lambda w: ["train", "--config",
                   w.config(w.event_file("neg.h5", float_images=True, negative_count=True))],
        r"neg\.h5: '/images' holds NaN, inf or negative"),
    "NaN learning rate": (
        lambda w: ["train", "--config", w.config(w.zn), "--set", "optim.lr_generator=.nan"],
        r"'optim\.lr_generator' must be a finite number"),
    "model with NaN weights: export": (
        lambda w: ["export", "--model", _nan_model(w), "-o", w.path("onnx")],
        r"nan_model\.pt: weight generator\..* holds NaN or inf"),
    "corrupted chunk: inspect": (
        lambda w: ["inspect", w.event_file("bad.h5", corrupt_chunk=True)],
        r"bad\.h5: damaged HDF5 content in '/images'"),
    "corrupted chunk: train": (
        lambda w: ["train", "--config", w.config(w.event_file("bad.h5", corrupt_chunk=True))],
        r"bad\.h5: damaged HDF5 content in '/images'"),
    "ZN model on ZP conditions: sample": (
        lambda w: ["sample", "--model", w.model, "--conditions", w.zp, "-o", w.path("g.h5")],
        r"zp\.h5: holds ZP events, but the model .* draws ZN"),
    "ZN model against a ZP reference: validate": (
        lambda w: ["validate", "--model", w.model, "--reference", w.zp, "-o", w.path("r")],
        r"draws ZN, but the reference .*zp\.h5 holds ZP"),
    "generated on other conditions: validate": (
        lambda w: ["validate", "--generated", _generated_elsewhere(w), "--reference", w.zn,
                   "-o", w.path("r")],
        r"gen\.h5: row 0 was generated on other conditions than .*zn\.h5's row 0"),
    "header-only CSV: sample": (
        lambda w: (w.path("c.csv").write_text("E,vx,vy,vz,px,py,pz,mass,charge\n"),
                   ["sample", "--model", w.model, "--conditions", w.path("c.csv"), "-o",
                    w.path("g.h5")])[1], r"c\.csv: holds no conditions"),
    "non-numeric CSV: sample": (
        lambda w: (w.path("c.csv").write_text("E,vx,vy,vz,px,py,pz,mass,charge\n"
                                              "1,2,3,4,5,6,seven,8,9\n"),
                   ["sample", "--model", w.model, "--conditions", w.path("c.csv"), "-o",
                    w.path("g.h5")])[1], r"c\.csv: line 2 does not hold a number"),
    "object npz: sample": (
        lambda w: ["sample", "--model", w.model, "--conditions",
                   _npz(w, "o.npz", conditions=np.array([{"E": 1}], dtype=object)),
                   "-o", w.path("g.h5")], r"o\.npz: key 'conditions' holds Python objects"),
    "0-byte npz: sample": (
        lambda w: (w.path("e.npz").write_bytes(b""),
                   ["sample", "--model", w.model, "--conditions", w.path("e.npz"), "-o",
                    w.path("g.h5")])[1], r"e\.npz: not a readable npz archive"),
    "0-byte npz: prepare": (
        lambda w: (w.path("e.npz").write_bytes(b""),
                   ["prepare", "npz", w.path("e.npz"), "-o", w.path("g.h5")])[1],
        r"e\.npz: not a readable npz archive"),
    "missing --thresholds file": (
        lambda w: ["validate", "--lookup", w.zn, "--reference", w.zn, "-o", w.path("r"),
                   "--thresholds", w.path("limits.yaml")],
        r"--thresholds .*limits\.yaml: no such file"),
    "negative train.threads": (
        lambda w: ["train", "--config", w.config(w.zn), "--set", "train.threads=-1"],
        r"train\.threads must be a finite number > 0, got -1"),
    "infinite memory limit": (
        lambda w: ["train", "--config", w.config(w.zn), "--set", "data.memory_limit_mb=.inf"],
        r"'data\.memory_limit_mb' must be a finite number"),
}


@pytest.mark.parametrize("case", list(CASES))
def test_refused(case, inputs, tmp_path):
    w = Workspace(tmp_path, inputs)
    make_args, pattern = CASES[case]
    assert_refused(make_args(w), tmp_path, pattern)


def test_unknown_mlflow_run_is_refused_before_any_work(inputs, tmp_path, monkeypatch):
    import mlflow

    w = Workspace(tmp_path, inputs)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = mlflow.tracking.MlflowClient(tracking_uri=uri)
    client.create_run(client.create_experiment("e"))
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    assert_refused(["validate", "--lookup", w.zn, "--reference", w.zn, "-o", w.path("r"),
                    "--mlflow-run", "0123456789abcdef"], tmp_path,
                   r"--mlflow-run 0123456789abcdef: no such run in the tracking store")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'none.db'}")
    assert_refused(["validate", "--lookup", w.zn, "--reference", w.zn, "-o", w.path("r"),
                    "--mlflow-run", "abc"], tmp_path, r"none\.db does not exist")


# ---------------------------------------------------------------- read-only folders


@pytest.fixture()
def read_only(tmp_path):
    """A folder no file can be created in: chmod for a normal user; for root (who ignores
    permissions) a read-only tmpfs mount, else an immutable folder, else skip."""
    folder = tmp_path / "locked"
    folder.mkdir()
    undo = None
    if os.geteuid() != 0:
        folder.chmod(0o555)
        undo = lambda: folder.chmod(0o755)  # noqa: E731
    elif subprocess.run(["mount", "-t", "tmpfs", "-o", "ro,size=1m", "tmpfs", str(folder)],
                        capture_output=True).returncode == 0:
        undo = lambda: subprocess.run(["umount", str(folder)], check=True)  # noqa: E731
    elif subprocess.run(["chattr", "+i", str(folder)], capture_output=True).returncode == 0:
        undo = lambda: subprocess.run(["chattr", "-i", str(folder)], check=True)  # noqa: E731
    else:
        pytest.skip("running as root without mount or chattr: no folder can be made read-only")
    yield folder
    undo()


READ_ONLY = {
    "simulate": lambda w, ro: ["simulate", "--detector", "zn", "-n", "10", "-o", ro / "x.h5"],
    "sample": lambda w, ro: ["sample", "--model", w.model, "--conditions", w.zn, "-o",
                             ro / "g.h5"],
    "validate": lambda w, ro: ["validate", "--lookup", w.zn, "--reference", w.zn, "-o",
                               ro / "report"],
    "export": lambda w, ro: ["export", "--model", w.model, "-o", ro / "onnx"],
    "train": lambda w, ro: ["train", "--config", w.config(w.zn), "--set",
                            f"train.output_dir={ro / 'run'}"],
    "gate": lambda w, ro: ["gate", "--model", w.model, "--data", w.zn, "-o", ro / "m.pt"],
    "distill": lambda w, ro: ["distill", "--teacher", w.model, "--data", w.zn, "-o",
                              ro / "s.pt"],
    "inspect --plot": lambda w, ro: ["inspect", w.zn, "--plot", ro / "p.png"],
}


@pytest.mark.parametrize("command", list(READ_ONLY))
def test_read_only_output_folder_is_refused_before_any_work(command, inputs, tmp_path,
                                                              read_only):
    w = Workspace(tmp_path, inputs)
    started = time.perf_counter()
    assert_refused(READ_ONLY[command](w, read_only), tmp_path,
                   r"cannot write in .*locked|locked.*cannot be written")
    assert time.perf_counter() - started < 20  # refused up front, not after the work


# ---------------------------------------------------------------- training runs


def _train(w, *extra):
    return CliRunner().invoke(main, ["train", "--config", str(w.config(w.zn)), *extra])


def test_a_second_training_of_one_folder_is_refused(inputs, tmp_path):
    import fcntl

    w = Workspace(tmp_path, inputs)
    w.config(w.zn)
    (tmp_path / "run").mkdir()
    lock = tmp_path / "run" / "train.lock"
    with open(lock, "w") as handle:  # what a running `expertsim train` holds
        handle.write("pid 4242 on node7 since 2026-11-24 08:00:00Z\n")
        handle.flush()
        fcntl.flock(handle, fcntl.LOCK_EX)
        assert_refused(["train", "--config", w.path("tiny.yaml")], tmp_path,
                       r"run is being trained by pid 4242 on node7 since 2026-11-24")
    result = _train(w)  # the lock is free again: it runs
    assert result.exit_code == 0, result.output
    assert "pid" in lock.read_text() and str(os.getpid()) in lock.read_text()


def test_a_resume_with_other_settings_or_data_is_refused_unless_asked(inputs, tmp_path):
    w = Workspace(tmp_path, inputs)
    assert _train(w).exit_code == 0
    assert_refused(["train", "--config", w.path("tiny.yaml"), "--set", "loss.diversity=0.5",
                    "--set", "train.max_steps=4"], tmp_path,
                   r"differ from the checkpoint's \(loss\.diversity: 0\.1 -> 0\.5\)")
    assert_refused(["train", "--config", w.path("tiny.yaml"), "--set",
                    "optim.lr_generator=0.01", "--set", "train.max_steps=4"], tmp_path,
                   r"optim\.lr_generator: 0\.0001 -> 0\.01.*--resume-changed")
    assert_refused(["train", "--config", w.path("tiny.yaml"), "--set",
                    f"data.path={w.other_zn}", "--set", "train.max_steps=4"], tmp_path,
                   r"training data: .*other_zn\.h5 holds other events")
    # the run length may change; other settings only when asked for
    result = _train(w, "--set", "train.max_steps=3")
    assert result.exit_code == 0 and "resuming" in result.output, result.output
    result = _train(w, "--set", "train.max_steps=4", "--set", "loss.diversity=0.5",
                    "--resume-changed")
    assert result.exit_code == 0, result.output
    assert "with changed settings: loss.diversity: 0.1 -> 0.5" in result.output
    # --no-resume onto a finished run's folder needs --overwrite
    assert_refused(["train", "--config", w.path("tiny.yaml"), "--no-resume"], tmp_path,
                   r"holds model\.pt, checkpoint_last\.pt.* --no-resume was given: pass "
                   r"--overwrite")


def test_a_non_finite_loss_stops_training_naming_step_and_term(inputs, tmp_path, monkeypatch):
    from expertsim.errors import TrainingError
    from expertsim.trainer import Trainer

    w = Workspace(tmp_path, inputs)
    config = tiny_config(w.zn, tmp_path / "run", max_steps=5)
    config = dataclasses.replace(config, gate=dataclasses.replace(config.gate, enabled=False))
    trainer = Trainer(config)
    original = trainer.aux_step

    def aux_step(events):  # the auxiliary regressor diverges at the third step
        loss = original(events)
        return loss * float("inf") if trainer.step == 2 else loss

    monkeypatch.setattr(trainer, "aux_step", aux_step)
    with pytest.raises(TrainingError, match=r"at step 3: the loss term aux_loss is inf"):
        trainer.fit()
    assert not (tmp_path / "run" / "model.pt").exists()
    assert not (tmp_path / "run" / "checkpoint_last.pt").exists()


# ---------------------------------------------------------------- files


def test_sigterm_and_kill_of_sample_leave_no_partial_file(inputs, tmp_path):
    w = Workspace(tmp_path, inputs)
    conditions = _npz(w, "many.npz", conditions=np.repeat(
        h5py.File(w.zn)["conditions"][:50], 400, axis=0))
    command = [sys.executable, "-m", "expertsim", "sample", "--model", str(w.model),
               "--conditions", str(conditions), "-o", str(w.path("g.h5")), "--batch-size",
               "64", "--no-gate", "--repeat", "50"]  # a million events: minutes, never done
    # SIGTERM three times: the signal can land inside a weakref callback, where Python drops
    # the exception it raises; the CLI raises it again (expertsim.cli._unraisable)
    for signum in (signal.SIGTERM, signal.SIGTERM, signal.SIGTERM, signal.SIGKILL):
        process = subprocess.Popen(command, cwd=REPO, stdout=subprocess.PIPE,
                                   stderr=subprocess.PIPE, text=True)
        deadline = time.time() + 120
        while not list(tmp_path.glob(".g.h5.*.partial")) and time.time() < deadline:
            time.sleep(0.1)
        assert list(tmp_path.glob(".g.h5.*.partial")), "sampling never started"
        time.sleep(0.5)
        process.send_signal(signum)
        _, stderr = process.communicate(timeout=60)
        assert not w.path("g.h5").exists()
        if signum == signal.SIGTERM:
            assert process.returncode == 143, stderr
            assert "Error: terminated (SIGTERM)" in stderr and "Traceback" not in stderr
            assert not list(tmp_path.glob(".g.h5.*")), "SIGTERM left a temporary file"
        else:
            left = list(tmp_path.glob(".g.h5.*.partial"))
            assert left, "kill -9 cannot be cleaned up by the process itself"
    # the next write of the same output removes what the killed process left
    result = CliRunner().invoke(main, ["sample", "--model", str(w.model), "--conditions",
                                       str(w.zn), "-o", str(w.path("g.h5"))])
    assert result.exit_code == 0, result.output
    assert not list(tmp_path.glob(".g.h5.*"))


@pytest.mark.parametrize("umask", [0o022, 0o002])
def test_outputs_get_the_users_umask(umask, tmp_path):
    previous = os.umask(umask)
    try:
        result = CliRunner().invoke(main, ["simulate", "--detector", "zp", "-n", "20", "-o",
                                           str(tmp_path / "x.h5")])
    finally:
        os.umask(previous)
    assert result.exit_code == 0, result.output
    assert (tmp_path / "x.h5").stat().st_mode & 0o777 == 0o666 & ~umask


def test_overwrite_replaces_an_output_only_when_asked(inputs, tmp_path):
    w = Workspace(tmp_path, inputs)
    args = ["simulate", "--detector", "zn", "-n", "10", "--seed", "9", "-o", str(w.zp)]
    result = CliRunner().invoke(main, [*args, "--overwrite"])
    assert result.exit_code == 0, result.output
    with h5py.File(w.zp) as handle:
        assert handle.attrs["detector"] == "ZN" and handle["images"].shape[0] == 10


def test_a_report_without_thresholds_does_not_say_passed(inputs, tmp_path):
    w = Workspace(tmp_path, inputs)
    result = CliRunner().invoke(main, ["validate", "--lookup", str(w.zn), "--reference",
                                       str(w.zn), "--split", "test", "-o", str(w.path("r"))])
    assert result.exit_code == 0, result.output
    assert "thresholds: no thresholds given (nothing was checked)" in result.output
    html = w.path("r/index.html").read_text()
    assert "no thresholds given" in html and "PASSED" not in html


def test_sample_threads_give_the_same_events(inputs, tmp_path):
    w = Workspace(tmp_path, inputs)
    threads = torch.get_num_threads()
    try:
        for n in (1, 2):
            result = CliRunner().invoke(main, ["sample", "--model", str(w.model), "--conditions",
                                               str(w.zn), "-o", str(w.path(f"g{n}.h5")),
                                               "--threads", str(n)])
            assert result.exit_code == 0, result.output
            assert torch.get_num_threads() == n
    finally:
        torch.set_num_threads(threads)
    with h5py.File(w.path("g1.h5")) as one, h5py.File(w.path("g2.h5")) as two:
        assert np.array_equal(one["images"][:], two["images"][:])


def test_conditions_outside_the_training_range_are_counted_and_warned(inputs, tmp_path):
    w = Workspace(tmp_path, inputs)
    conditions = h5py.File(w.zn)["conditions"][:20].astype(np.float64)
    conditions[:3, 0] *= 1e3  # three particles far above the trained energies
    path = _npz(w, "hot.npz", conditions=conditions)
    result = CliRunner().invoke(main, ["sample", "--model", str(w.model), "--conditions",
                                       str(path), "-o", str(w.path("g.h5"))])
    assert result.exit_code == 0, result.output
    assert re.search(r"Warning: .*hot\.npz: 3 of 20 particles lie outside the range",
                     result.output)


def test_a_study_name_cannot_escape_the_study_folder(inputs, tmp_path):
    import yaml

    w = Workspace(tmp_path, inputs)
    victim = tmp_path / "victim"
    victim.mkdir()
    (victim / "keep.txt").write_text("precious")
    for name in ("../../victim", "a/b", ".."):
        config = yaml.safe_load(w.config(w.zn).read_text())
        config["name"] = name
        w.path("tiny.yaml").write_text(yaml.safe_dump(config))
        assert_refused(["study", "--data", w.zn, "--configs", w.path("tiny.yaml"), "--seeds",
                        "1", "-o", tmp_path / "studies" / "s"], tmp_path,
                       r"tiny\.yaml: name .* names the run's folder.*no '/' and no '\.\.'")
        assert not (tmp_path / "studies").exists()
    assert (victim / "keep.txt").read_text() == "precious"


def test_the_repository_cites_no_file_outside_it():
    name = "PHYSICS" + ".md"
    tracked = subprocess.run(["git", "ls-files"], cwd=REPO, capture_output=True, text=True)
    if tracked.returncode != 0:
        pytest.skip("not a git checkout")
    hits = [path for path in tracked.stdout.split()
            if (REPO / path).is_file() and name in (REPO / path).read_text(errors="ignore")]
    assert hits == []
