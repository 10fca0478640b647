"""expertsim study: a two-model, one-seed study end to end, its resumption and determinism."""

import json
import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner

from expertsim.cli import main
from expertsim.errors import ConfigError
from expertsim.study import plan

pytestmark = pytest.mark.slow  # every test here trains two models

STUDY_CONFIGS = Path(__file__).resolve().parents[1] / "training" / "study"
TINY = ["--set", "train.max_steps=4", "--set", "data.val_max_events=300",
        "--set", "train.router_warm_start_steps=2", "--set", "train.log_every=1",
        "--set", "gate.steps=300"]


def run(data, output, *configs):
    args = ["study", "--data", str(data), "--seeds", "1", "-o", str(output),
            "--generations", "2", *TINY]
    for config in configs:
        args += ["--configs", str(STUDY_CONFIGS / config)]
    result = CliRunner().invoke(main, args, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return result.output


@pytest.fixture(scope="module")
def study(zn_file, tmp_path_factory):
    output = tmp_path_factory.mktemp("study")
    log = run(zn_file, output, "3_cgan.yaml", "1_expertsim3.yaml")
    return output, log


def test_study_writes_the_table_plots_and_runs(study):
    output, log = study
    summary = json.loads((output / "study.json").read_text())
    assert [row["model"] for row in summary["rows"]] == ["cgan", "expertsim-3", "nn-lookup"]
    for row, experts in zip(summary["rows"], (1, 3)):
        assert row["ratio_to_floor"] == pytest.approx(row["ws_mean"] / row["floor_ws"], rel=0.05)
        assert row["ws_se"] > 0 and row["centroid_ratio"] > 0
        assert row["n_experts"] == experts
        assert row["ws_mean"] > 0 and len(row["ws_channels"]) == 5
        assert 0 <= row["classifier_auc"] <= 1
        assert row["floor_ws"] is not None and row["floor_ws"] > 0  # the file repeats conditions
        assert row["sample_events_per_s"] > 0 and row["parameters"] > 0
        assert row["steps"] == 4 and row["train_minutes"] > 0
        assert len(row["mlflow_runs"]) == 1 and row["mlflow_runs"][0].startswith("runs:/")
    assert summary["rows"][1]["parameters"] > summary["rows"][0]["parameters"]
    lookup = summary["rows"][2]
    assert lookup["n_experts"] == 0 and lookup["ratio_to_floor"] > 0
    assert lookup["floor_ws"] == pytest.approx(summary["rows"][0]["floor_ws"])  # same particles
    mixture = summary["rows"][1]
    assert len(mixture["expert_fractions_per_seed"][0]) >= 1
    assert mixture["vs_best_single_gan"]["best"] == "cgan"
    assert mixture["vs_best_single_gan"]["delta"] == pytest.approx(
        mixture["ws_mean"] - summary["rows"][0]["ws_mean"])
    assert mixture["vs_best_single_gan"]["significant"] is None  # one seed: spread unknown
    # the difference's interval is paired: both models half-sampled on the same particles
    versus = mixture["vs_best_single_gan"]
    assert versus["interval"] == "paired half-sampling" and versus["se"] > 0
    assert versus["interval_half_width"] == pytest.approx(1.96 * versus["se"])
    assert summary["n_test_pairs"] >= 16
    table = (output / "table.md").read_text()
    assert "| cgan | 1 |" in table and "| expertsim-3 | 3 |" in table
    assert "| nn-lookup | 0 |" in table
    for name in ("channels_overlay.png", "experts_expertsim-3.png"):
        assert (output / name).read_bytes()[:4] == b"\x89PNG"
    assert not (output / "experts_cgan.png").exists()  # one expert: nothing to analyse
    result = json.loads((output / "runs/expertsim-3/seed0/result.json").read_text())
    analysis = result["analysis"]
    assert sum(e["n"] for e in analysis["experts"]) == len(analysis["expert_of_event"])
    assert sum(sum(e.get("group_counts", [0])) for e in analysis["experts"]) == \
        len(analysis["expert_of_event"])
    assert result["utilisation"] and "expert_fraction_0" in result["utilisation"][0]
    # the MLflow run holds the study's numbers
    import mlflow

    client = mlflow.MlflowClient(summary["tracking_uri"])
    logged = client.get_run(result["run_id"]).data.metrics
    assert logged["study/ws_mean"] == pytest.approx(result["headline"]["ws_mean"])


def test_a_killed_study_continues_and_reproduces(study, zn_file):
    output, _ = study
    before = json.loads((output / "study.json").read_text())["rows"]
    done = output / "runs/cgan/seed0/result.json"
    stamp = done.stat().st_mtime_ns
    # as if killed while training the second model, before its first checkpoint: no result,
    # no checkpoint_last.pt, a stale model file that must not be taken for the new one
    second = output / "runs/expertsim-3/seed0"
    (second / "result.json").unlink()
    (second / "checkpoint_last.pt").unlink()
    (second / "model.pt").write_bytes(b"left over from the killed run")
    shutil.rmtree(second / "report")
    log = run(zn_file, output, "3_cgan.yaml", "1_expertsim3.yaml")
    assert "cgan seed 0: done before, reused" in log
    assert "expertsim-3 seed 0: training" in log
    assert done.stat().st_mtime_ns == stamp
    after = json.loads((output / "study.json").read_text())["rows"]
    for old, new in zip(before, after):
        assert new["ws_per_seed"] == old["ws_per_seed"]  # deterministic on the CPU
        assert new["classifier_auc"] == old["classifier_auc"]
        assert new["ws_channels"] == old["ws_channels"]


def test_a_finished_run_is_not_reused_under_other_settings(study, zn_file):
    output, _ = study
    args = ["study", "--data", str(zn_file), "--seeds", "1", "-o", str(output),
            "--generations", "2", *TINY, "--set", "optim.lr_generator=0.01",
            "--configs", str(STUDY_CONFIGS / "3_cgan.yaml")]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 2
    assert "runs/cgan/seed0/result.json: this finished run was made with other settings" in \
        result.output
    assert "optim.lr_generator: 0.00033 then, 0.01 now" in result.output


def test_a_renamed_config_reuses_its_runs_under_the_new_name(study, zn_file, tmp_path):
    """Only the name changed: the copied runs are reused and tabulated under the new name;
    a setting changed as well: refused as before."""
    output = tmp_path / "study"
    shutil.copytree(study[0], output)
    shutil.move(output / "runs/cgan", output / "runs/renamed")
    renamed = tmp_path / "renamed.yaml"
    renamed.write_text((STUDY_CONFIGS / "3_cgan.yaml").read_text().replace(
        "name: cgan", "name: renamed"))
    args = ["study", "--data", str(zn_file), "--seeds", "1", "-o", str(output),
            "--generations", "2", *TINY, "--configs", str(renamed)]
    result = CliRunner().invoke(main, args, catch_exceptions=False)
    assert result.exit_code == 0 and "renamed seed 0: done before, reused" in result.output
    rows = json.loads((output / "study.json").read_text())["rows"]
    assert [row["model"] for row in rows] == ["renamed", "nn-lookup"]
    assert "| renamed | 1 |" in (output / "table.md").read_text()
    refused = CliRunner().invoke(main, [*args, "--set", "optim.lr_generator=0.01"])
    assert refused.exit_code == 2 and "made with other settings" in refused.output


def test_study_configs_need_distinct_names(tmp_path):
    with pytest.raises(ConfigError, match="share the name"):
        plan([STUDY_CONFIGS / "3_cgan.yaml", STUDY_CONFIGS / "3_cgan.yaml"], 1, tmp_path)
    with pytest.raises(ConfigError, match="seeds"):
        plan([STUDY_CONFIGS / "3_cgan.yaml"], 0, tmp_path)


def test_a_signalled_study_checkpoints_and_resumes_to_the_same_numbers(study, zn_file,
                                                                        tmp_path):
    """SIGUSR1 during the second model's training: checkpoint, StudyStopped; the rerun resumes
    from the checkpoint and gives the uninterrupted study's numbers."""
    import os
    import signal

    from expertsim.study import StudyStopped, run_study

    reference = json.loads((study[0] / "study.json").read_text())["rows"]
    overrides = [item for item in TINY if item != "--set"]
    configs = [STUDY_CONFIGS / "3_cgan.yaml", STUDY_CONFIGS / "1_expertsim3.yaml"]

    class SignalAtStep:
        def __init__(self, total, name):
            self.name, self.steps = name, 0

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return False

        def update(self, n):
            self.steps += n
            if self.name.startswith("expertsim-3") and self.steps == 2:
                os.kill(os.getpid(), signal.SIGUSR1)

    handler_before = signal.getsignal(signal.SIGUSR1)
    with pytest.raises(StudyStopped, match="expertsim-3 seed 0 stopped at step 2"):
        run_study(zn_file, configs, tmp_path, seeds=1, overrides=overrides, generations=2,
                  progress_factory=SignalAtStep, stop_signals=(signal.SIGUSR1,))
    second = tmp_path / "runs/expertsim-3/seed0"
    assert (second / "checkpoint_last.pt").exists() and not (second / "result.json").exists()
    assert signal.getsignal(signal.SIGUSR1) is handler_before  # restored after training
    messages = []
    rows = run_study(zn_file, configs, tmp_path, seeds=1, overrides=overrides, generations=2,
                     log=messages.append)["rows"]
    assert any("cgan seed 0: done before, reused" in m for m in messages)
    for old, new in zip(reference, rows):
        assert new["ws_per_seed"] == old["ws_per_seed"]
        assert new["classifier_auc"] == old["classifier_auc"]


def test_heldout_file_gets_its_own_table_and_reuses_reports(study, zn_file, tmp_path):
    """--heldout: every model and the lookup validated on an independent file, a second table,
    reports reused for the same model file, and a selection from another file refused."""
    from tests.conftest import simulate_file

    output = tmp_path / "study"
    shutil.copytree(study[0], output)
    heldout = simulate_file(tmp_path / "heldout.h5", "ZN", 3200, seed=31, repeat=2)
    args = ["study", "--data", str(zn_file), "--seeds", "1", "-o", str(output),
            "--generations", "2", *TINY, "--heldout", str(heldout)]
    for config in ("3_cgan.yaml", "1_expertsim3.yaml"):
        args += ["--configs", str(STUDY_CONFIGS / config)]
    log = CliRunner().invoke(main, args, catch_exceptions=False).output
    assert "held out: validating cgan seed 0" in log and "validating expertsim-3 seed 0" in log
    held = json.loads((output / "study.json").read_text())["heldout"]
    assert [row["model"] for row in held["rows"]] == ["cgan", "expertsim-3", "nn-lookup"]
    assert held["n_events"] < 3200  # events with light only
    for row in held["rows"]:
        assert row["ratio_to_floor"] == pytest.approx(row["ws_mean"] / row["floor_ws"], rel=0.05)
        assert row["ws_se"] > 0 and 0 <= row["classifier_auc"] <= 1
    assert held["rows"][1]["vs_best_single_gan"]["best"] == "cgan"
    assert held["rows"][1]["vs_best_single_gan"]["interval"] == "paired half-sampling"
    # the test split's intervals checked on disjoint held-out subsets of its size
    check = held["test_size_check"]
    n_test = json.loads((output / "study.json").read_text())["n_test_pairs"]
    assert check["size"] == n_test and check["n_subsets"] >= 3
    assert check["std"]["expertsim-3"] > 0 and "nn-lookup" not in check["std"]
    table = (output / "table.md").read_text()
    assert "Held out: the same models on `heldout.h5`" in table
    assert f"disjoint subsets of {n_test:,} held-out particles" in table
    assert table.count("| expertsim-3 | 3 |") == 2
    # a second run reuses the reports; one whose generations are gone is made again
    (output / "heldout/cgan/seed0/generated_0.h5").unlink()
    log = CliRunner().invoke(main, args, catch_exceptions=False).output
    assert "validating cgan seed 0" in log and "validating expertsim-3" not in log
    assert json.loads((output / "study.json").read_text())["heldout"]["rows"][1] == \
        held["rows"][1]
    # a complete report made for another model file is not taken for this one's
    shutil.rmtree(output / "heldout/cgan/seed0")
    shutil.copytree(output / "heldout/expertsim-3/seed0", output / "heldout/cgan/seed0")
    log = CliRunner().invoke(main, args, catch_exceptions=False).output
    assert "validating cgan seed 0" in log and "validating expertsim-3" not in log
    assert json.loads((output / "study.json").read_text())["heldout"]["rows"][0] == \
        held["rows"][0]
    other = simulate_file(tmp_path / "other.h5", "ZN", 600, seed=32, repeat=2)
    args[args.index(str(heldout))] = str(other)
    refused = CliRunner().invoke(main, args)
    assert refused.exit_code == 2 and "give the same --heldout file" in refused.output
