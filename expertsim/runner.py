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
from expertsim.errors import ConfigError

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


def train_run(config: ExperimentConfig, *, resume: bool = True,
              progress: ProgressFactory | None = None,
              data_progress: Callable[[int], ContextManager[Any]] | None = None,
              stop_signals: tuple[int, ...] = STOP_SIGNALS,
              log: Callable[[str], None] = lambda message: None):
    """Train one model as ``config`` says; returns the trainer's FitResult.

    Args:
        resume: continue from OUTPUT_DIR/checkpoint_last.pt when it exists.
        progress: a progress bar for the training steps (rank 0 only).
        data_progress: a progress bar for simulating missing built-in data.
        stop_signals: signals that make the run checkpoint and return "preempted".
        log: receives one line when the run resumes (the CLI echoes it).
    """
    import torch.distributed as dist

    from expertsim.devices import select_device
    from expertsim.distributed import init_from_environment, shutdown
    from expertsim.tracking import make_tracker
    from expertsim.trainer import Trainer

    context = init_from_environment(select_device(config.train.device).type)
    try:
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
            trainer.resume_from(last)
            if context.is_main:
                log(f"resuming from {last} at epoch {trainer.epoch}, step {trainer.step}")
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
    finally:
        shutdown(context)
