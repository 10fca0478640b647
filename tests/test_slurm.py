"""The job scripts in slurm/ against a real single-node SLURM started here."""

import sys
import time

import h5py
import numpy as np
from pathlib import Path

import pytest

from expertsim.checkpoint import load_checkpoint
from tests.slurm_cluster import SlurmCluster, slurm_available

REPO = Path(__file__).resolve().parents[1]
pytestmark = [pytest.mark.slurm, pytest.mark.slow]


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    reason = slurm_available()
    if reason:
        pytest.skip(reason)
    cluster = SlurmCluster(tmp_path_factory.mktemp("slurm"))
    cluster.start()
    yield cluster
    cluster.stop()


def write_config(path, data, output, max_steps):
    path.write_text(
        f"name: slurm-test\n"
        f"data: {{path: {data}, batch_size: 64, val_max_events: 200}}\n"
        "model: {generator_channels: 8, discriminator_channels: 4, discriminator_features: 16}\n"
        f"train: {{epochs: 20, max_steps: {max_steps}, threads: 1, output_dir: {output}}}\n"
        "gate: {steps: 300}\n"
        "tracking: {enabled: false}\n")
    return path


def job_env():
    return {"EXPERTSIM_ROOT": str(REPO), "EXPERTSIM_PYTHON": sys.executable}


def test_training_job_runs_to_completion(cluster, zn_file, tmp_path):
    config = write_config(tmp_path / "c.yaml", zn_file, tmp_path / "out", max_steps=5)
    log = tmp_path / "job.out"
    job = cluster.submit(f"--output={log}", str(REPO / "slurm" / "train.sbatch"), str(config),
                         env=job_env())
    info = cluster.wait(job, ("COMPLETED", "FAILED", "CANCELLED"))
    assert info["JobState"] == "COMPLETED", log.read_text()[-3000:]
    assert "stopped at epoch 0, step 5" in log.read_text()
    assert load_checkpoint(tmp_path / "out" / "checkpoint_last.pt")[1]["step"] == 5
    assert (tmp_path / "out" / "model.pt").exists()


def test_signalled_job_checkpoints_requeues_and_finishes(cluster, zn_file, tmp_path):
    config = write_config(tmp_path / "c.yaml", zn_file, tmp_path / "out", max_steps=300)
    log = tmp_path / "job.out"
    job = cluster.submit(f"--output={log}", str(REPO / "slurm" / "train.sbatch"), str(config),
                         env=job_env())
    deadline = time.monotonic() + 120
    while "step/s" not in (log.read_text() if log.exists() else "") and "s/step" not in (
            log.read_text() if log.exists() else ""):
        assert time.monotonic() < deadline, f"training never started: {cluster.job(job)}"
        time.sleep(0.5)
    cluster.run("scancel", "--signal=USR1", "--batch", str(job))
    info = cluster.wait(job, ("COMPLETED", "FAILED", "CANCELLED"), timeout=300)
    text = log.read_text()
    assert info["JobState"] == "COMPLETED", text[-3000:]
    assert int(info["Restarts"]) == 1
    assert "requeueing job" in text and "resuming from" in text
    assert "stopped at epoch" in text and ", step 300;" in text
    assert load_checkpoint(tmp_path / "out" / "checkpoint_last.pt")[1]["step"] == 300


def test_array_sampling_job_matches_one_unsharded_run(cluster, zn_file, tmp_path):
    from expertsim.sampling import merge_shards, sample_to_file
    from tests.test_sampling import make_model

    model = make_model(zn_file, tmp_path / "model")
    job = cluster.submit("--array=0-2", f"--output={tmp_path}/sample-%a.out",
                         str(REPO / "slurm" / "sample_array.sbatch"), str(model), str(zn_file),
                         str(tmp_path / "shards"), "--seed", "11", "--device", "cpu",
                         env=job_env())
    for task in range(3):
        info = cluster.wait(f"{job}_{task}", ("COMPLETED", "FAILED", "CANCELLED"))
        assert info["JobState"] == "COMPLETED", (tmp_path / f"sample-{task}.out").read_text()
    shards = sorted((tmp_path / "shards").glob("shard_*.h5"))
    assert len(shards) == 3
    merge_shards(shards, tmp_path / "merged.h5")
    sample_to_file(model, zn_file, tmp_path / "single.h5", seed=11)
    with h5py.File(tmp_path / "merged.h5") as merged, h5py.File(tmp_path / "single.h5") as single:
        assert merged["images"][:].sum() > 0
        for key in ("images", "expert", "conditions"):
            assert np.array_equal(merged[key][:], single[key][:]), key
