"""What made an artifact: package version, time, command, configuration, seed, inputs."""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import os
import subprocess
from pathlib import Path
from typing import Any

from expertsim import __version__


def file_sha256(path: str | os.PathLike, block_bytes: int = 1 << 20) -> str:
    """Hex SHA-256 of a file, read in blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(block_bytes):
            digest.update(block)
    return digest.hexdigest()


def git_commit(directory: str | os.PathLike | None = None) -> str | None:
    """Commit of the git checkout holding ``directory`` (default: this package), if any."""
    directory = Path(directory or Path(__file__).resolve().parent)
    try:
        result = subprocess.run(
            ["git", "-C", str(directory), "rev-parse", "HEAD"],
            capture_output=True, text=True, timeout=5, check=False,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return result.stdout.strip() or None if result.returncode == 0 else None


def make_provenance(
    *,
    made_by: str,
    seed: int | None = None,
    config: dict[str, Any] | None = None,
    inputs: list[str | os.PathLike] | None = None,
    hash_inputs: bool = True,
) -> dict[str, Any]:
    """A JSON-serialisable record of what made an artifact.

    Args:
        made_by: the command or function that made it, e.g. "expertsim simulate".
        seed: the random seed, if randomness entered.
        config: the resolved parameters.
        inputs: files it was made from; their sizes and SHA-256 are recorded.
        hash_inputs: set False to skip hashing very large inputs (only path and size kept).
    """
    records = []
    for path in inputs or []:
        record = {"path": str(Path(path).resolve()), "bytes": os.path.getsize(path)}
        if hash_inputs:
            record["sha256"] = file_sha256(path)
        records.append(record)
    return {
        "package": "expertsim",
        "version": __version__,
        "made_by": made_by,
        "created_utc": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "git_commit": git_commit(),
        "seed": seed,
        "config": config or {},
        "inputs": records,
        "slurm_job_id": os.environ.get("SLURM_JOB_ID"),
    }


def to_json(provenance: dict[str, Any]) -> str:
    return json.dumps(provenance, sort_keys=True, default=str)
