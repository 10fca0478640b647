"""Experiment tracking behind one small interface; MLflow is imported only when used.

Only rank 0 tracks; other ranks (and ``tracking.enabled: false``) get :class:`NullTracker`.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from expertsim.provenance import git_commit


class NullTracker:
    """Tracks nothing."""

    run_id: str | None = None

    def start(self, params: dict[str, Any], run_id: str | None = None) -> None:
        pass

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        pass

    def log_artifact(self, path: str | os.PathLike) -> None:
        pass

    def finish(self, status: str = "FINISHED") -> None:
        pass


class MlflowTracker(NullTracker):
    """An MLflow run: parameters, metrics per step, artifacts, git commit and SLURM job tags."""

    def __init__(self, uri: str, experiment: str, run_name: str | None = None) -> None:
        import mlflow

        self._mlflow = mlflow
        self.uri, self.experiment, self.run_name = uri, experiment, run_name
        self.run_id = None

    def start(self, params: dict[str, Any], run_id: str | None = None) -> None:
        mlflow = self._mlflow
        user_uri = os.environ.get("MLFLOW_TRACKING_URI")
        mlflow.set_tracking_uri(self.uri)
        # MLflow also exports the URI to the environment, where make_tracker would take it for
        # the user's override in the next run of this process (a study trains many): undo that
        if user_uri is None:
            os.environ.pop("MLFLOW_TRACKING_URI", None)
        else:
            os.environ["MLFLOW_TRACKING_URI"] = user_uri
        if run_id is None:
            mlflow.set_experiment(self.experiment)
            run = mlflow.start_run(run_name=self.run_name)
            mlflow.log_params({k: ("None" if v is None else v) for k, v in params.items()})
        else:  # resuming: continue the same run
            run = mlflow.start_run(run_id=run_id)
        self.run_id = run.info.run_id
        tags = {"git_commit": git_commit(), "slurm_job_id": os.environ.get("SLURM_JOB_ID"),
                "slurm_array_task_id": os.environ.get("SLURM_ARRAY_TASK_ID")}
        mlflow.set_tags({k: v for k, v in tags.items() if v})

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        self._mlflow.log_metrics(metrics, step=step)

    def log_artifact(self, path: str | os.PathLike) -> None:
        self._mlflow.log_artifact(str(Path(path)))

    def finish(self, status: str = "FINISHED") -> None:
        self._mlflow.end_run(status=status)


def make_tracker(enabled: bool, uri: str, experiment: str, run_name: str | None,
                 rank: int = 0) -> NullTracker:
    """The tracker for this process; ``MLFLOW_TRACKING_URI``, when set, replaces ``uri``."""
    if not enabled or rank != 0:
        return NullTracker()
    return MlflowTracker(os.environ.get("MLFLOW_TRACKING_URI", uri), experiment, run_name)


def log_to_run(uri: str, run_id: str, metrics: dict[str, float], *, step: int = 0,
               artifacts: tuple[str | os.PathLike, ...] = ()) -> None:
    """Add metrics (and artifact files) to an existing MLflow run, e.g. a validation made
    after training; ``MLFLOW_TRACKING_URI``, when set, replaces ``uri``."""
    tracker = make_tracker(True, uri, "expertsim", None)
    tracker.start({}, run_id=run_id)
    try:
        tracker.log_metrics(metrics, step=step)
        for path in artifacts:
            tracker.log_artifact(path)
    finally:
        tracker.finish()


def check_run(uri: str, run_id: str) -> None:
    """Refuse (ConfigError), before any work, a run id that the tracking store lacks; a local
    store that does not exist is not created."""
    from expertsim.errors import ConfigError

    uri = os.environ.get("MLFLOW_TRACKING_URI", uri)
    if uri.startswith("sqlite:///") and not Path(uri[len("sqlite:///"):]).exists():
        raise ConfigError(f"--mlflow-run {run_id}: the tracking store {uri} does not exist "
                          "(run from the folder you trained in, or set MLFLOW_TRACKING_URI)")
    import mlflow
    from mlflow.exceptions import MlflowException

    try:
        mlflow.tracking.MlflowClient(tracking_uri=uri).get_run(run_id)
    except MlflowException:
        raise ConfigError(f"--mlflow-run {run_id}: no such run in the tracking store {uri} "
                          "(expertsim train prints its run id)") from None

