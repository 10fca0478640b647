"""One training run from a config: the library behind ``expertsim train`` and the study.

:func:`train_run` joins torch.distributed when torchrun launched it, simulates the built-in
data a config names when its file is missing, builds the trainer with its tracker, resumes
from ``checkpoint_last.pt``, installs the stop-signal handlers (a SIGTERM or SIGUSR1 makes
the run checkpoint and return with status "preempted") and restores them, fits, and always
finishes the tracker and leaves the process group.
"""

from __future__ import annotations

import contextlib
import signal
import threading
from pathlib import Path
from typing import Any, Callable, ContextManager

from expertsim.config import ExperimentConfig
from expertsim.errors import ConfigError, OutputError, TrainingError
from expertsim.fileio import check_writable

STOP_SIGNALS = (signal.SIGTERM, signal.SIGUSR1)

# (total steps, steps already done) -> a context manager with update(n_steps), e.g. tqdm
ProgressFactory = Callable[[int, int], ContextManager[Any]]


class _NoProgress:
    def update(self, n: int = 1) -> None:
        pass


def ensure_data(config: ExperimentConfig,
                progress: Callable[[int], ContextManager[Any]] | None = None) -> Path:
    """The training file: simulated first with the built-in Monte Carlo when it is missing and
    the config has a data.simulate section. ``progress(n_events)`` gives a progress bar."""
    from expertsim.simulate import simulate_to_file

    path, spec = Path(config.data.path), config.data.simulate
    if path.exists():
        return path
    if spec is None:
        raise ConfigError(f"{path}: no such data file (and no data.simulate section to make it)")
    bar = progress(spec.n_events) if progress else contextlib.nullcontext(_NoProgress())
    with bar as bar:
        simulate_to_file(path, spec.detector, spec.n_events, seed=spec.seed,
                         repeat=spec.repeat, progress=bar.update)
    return path


@contextlib.contextmanager
def _stop_handlers(trainer, signals: tuple[int, ...]):
    """While the block runs, ``signals`` ask the trainer to stop (main thread only: Python
    delivers signals there); the previous handlers are restored afterwards."""
    previous = {}
    if threading.current_thread() is threading.main_thread():
        previous = {signum: signal.signal(signum, lambda *_: trainer.request_stop())
                    for signum in signals}
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


RUN_FILES = ("model.pt", "checkpoint_last.pt", "checkpoint_best.pt")
LOCK_NAME = "train.lock"


@contextlib.contextmanager
def run_lock(folder: Path):
    """Hold OUTPUT_DIR/train.lock while the block runs: a second training of the same folder
    is refused with the holder's pid, host and start time. An advisory flock: released by
    the kernel when the holder dies (kill -9 included); the file stays, naming the last run
    that held it (a run that fails restores what it found)."""
    import datetime
    import fcntl
    import os
    import socket

    check_writable(folder, option="train.output_dir")
    created = [parent for parent in (folder, *folder.parents) if not parent.exists()]
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / LOCK_NAME
    new_lock = not path.exists()
    with open(path, "a+") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            handle.seek(0)
            holder = handle.read().strip() or "another process"
            raise TrainingError(f"{folder} is being trained by {holder} (lock {path}): wait "
                                "for that run to end, or set train.output_dir to another "
                                "folder") from None
        handle.seek(0)
        previous_holder = handle.read()
        handle.seek(0)
        handle.truncate()
        started = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M:%SZ")
        handle.write(f"pid {os.getpid()} on {socket.gethostname()} since {started}\n")
        handle.flush()
        try:
            yield
        except BaseException:
            # a failed run leaves the lock as it found it: a run that fails before writing
            # anything (bad data, bad settings) leaves no trace at all
            if new_lock and [p.name for p in folder.iterdir()] == [LOCK_NAME]:
                path.unlink()
                for made in created:
                    with contextlib.suppress(OSError):
                        made.rmdir()
            elif not new_lock:
                handle.seek(0)
                handle.truncate()
                handle.write(previous_holder)
            raise
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _check_outputs(config: ExperimentConfig, resume: bool, overwrite: bool) -> None:
    """A run writes model.pt and checkpoints into train.output_dir: a folder holding another
    run's files is refused unless the run resumes it or ``overwrite``."""
    folder = Path(config.train.output_dir)
    if folder.exists() and not folder.is_dir():
        raise OutputError(f"train.output_dir {folder} is a file; give a folder")
    existing = [name for name in RUN_FILES if (folder / name).exists()]
    resuming = resume and (folder / "checkpoint_last.pt").exists()
    if existing and not resuming and not overwrite:
        raise OutputError(
            f"train.output_dir {folder} holds {', '.join(existing)} of another run"
            + ("" if resume else " and --no-resume was given")
            + ": pass --overwrite to replace them, or set train.output_dir to another folder")


def train_run(config: ExperimentConfig, *, resume: bool = True, overwrite: bool = False,
              resume_changed: bool = False, progress: ProgressFactory | None = None,
              data_progress: Callable[[int], ContextManager[Any]] | None = None,
              stop_signals: tuple[int, ...] = STOP_SIGNALS,
              log: Callable[[str], None] = lambda message: None):
    """Train one model as ``config`` says; returns the trainer's FitResult.

    Args:
        resume: continue from OUTPUT_DIR/checkpoint_last.pt when it exists.
        overwrite: replace another run's files in OUTPUT_DIR (refused otherwise).
        resume_changed: resume even when settings or data differ from the checkpoint's.
        progress: a progress bar for the training steps (rank 0 only).
        data_progress: a progress bar for simulating missing built-in data.
        stop_signals: signals that make the run checkpoint and return "preempted".
        log: receives one line when the run resumes (the CLI echoes it).
    """
    from expertsim.devices import select_device
    from expertsim.distributed import init_from_environment, shutdown

    context = init_from_environment(select_device(config.train.device).type)
    try:
        with run_lock(Path(config.train.output_dir)) if context.is_main \
                else contextlib.nullcontext():
            if context.is_main:
                _check_outputs(config, resume, overwrite)
            return _train(config, context, resume, resume_changed, progress, data_progress,
                          stop_signals, log)
    finally:
        shutdown(context)


def _train(config, context, resume, resume_changed, progress, data_progress, stop_signals,
           log):
    """The body of :func:`train_run`, inside its lock and process group."""
    import torch.distributed as dist

    from expertsim.tracking import make_tracker
    from expertsim.trainer import Trainer

    if context.is_main:
        ensure_data(config, data_progress)
    if context.enabled:
        dist.barrier()
    tracking = config.tracking
    tracker = make_tracker(tracking.enabled, tracking.uri, tracking.experiment,
                           tracking.run_name or config.name, context.rank)
    trainer = Trainer(config, context=context, tracker=tracker)
    last = Path(config.train.output_dir) / "checkpoint_last.pt"
    if resume and last.exists():
        changes = trainer.resume_from(last, allow_changes=resume_changed)
        if context.is_main:
            log(f"resuming from {last} at epoch {trainer.epoch}, step {trainer.step}"
                + (f" with changed settings: {'; '.join(changes)}" if changes else ""))
    total = config.train.max_steps or config.train.epochs * len(trainer.loader)
    shown = (progress(total, trainer.step) if progress and context.is_main
             else contextlib.nullcontext())
    try:
        with _stop_handlers(trainer, stop_signals), shown as bar:
            result = trainer.fit(progress=None if bar is None else lambda _: bar.update(1))
    except BaseException:
        tracker.finish("FAILED")
        raise
    tracker.finish("KILLED" if result.status == "preempted" else "FINISHED")
    if context.enabled:
        # rank 0 validates and writes files after the last step while the others are done:
        # leave together, or a rank that tears its process group down early can abort
        # ("terminate called without an active exception", seen once in CI)
        dist.barrier()
    return result
