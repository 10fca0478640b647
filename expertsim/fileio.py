"""Writing files safely: every output appears complete under its final name, or not at all,
never replaces an input, and never replaces an existing file unless the user asked.

Commands call :func:`check_output` (a file they write) or :func:`check_output_folder` (a
folder they write into) before any work: an output that is one of the inputs (compared by
resolved path and by inode, so links and ``./`` spellings are caught), an existing output
without ``--overwrite``, and a folder that cannot be written are refused there, with a
one-line error. The inputs given to those checks stay protected for the rest of the process:
:func:`atomic_path`, through which every file of the package is written, refuses to rename
onto them whatever the command's logic does.

Temporary files are named ``.<name>.<host>.<pid>.<random>.partial`` beside the target and get
the user's umask (as ``open`` would), not mkstemp's 0600. They are deleted when the block
fails or the process is interrupted (the CLI turns SIGTERM into an exception), and a later
write of the same target removes those left by a killed process of this host (kill -9).
"""

from __future__ import annotations

import contextlib
import os
import socket
import tempfile
from pathlib import Path
from typing import Iterable, Iterator

from expertsim.errors import OutputError

_PROTECTED: set[tuple[int, int]] = set()  # (device, inode) of the inputs of this process


def _identity(path: Path) -> tuple[int, int] | None:
    try:
        status = path.stat()
    except OSError:
        return None
    return status.st_dev, status.st_ino


def protect(*paths: str | os.PathLike | None) -> None:
    """Mark existing files as inputs: :func:`atomic_path` refuses to replace them."""
    for path in paths:
        identity = None if path is None else _identity(Path(path))
        if identity is not None:
            _PROTECTED.add(identity)


def unprotect_all() -> None:
    """Forget the protected inputs (the CLI calls it when a command starts and ends)."""
    _PROTECTED.clear()


def _is_input(target: Path, inputs: Iterable[str | os.PathLike | None]) -> Path | None:
    """The input that ``target`` names (same resolved path or same inode), or None."""
    identity = _identity(target)
    for source in inputs:
        if source is None:
            continue
        source = Path(source)
        if source.resolve() == target.resolve() or (
                identity is not None and identity == _identity(source)):
            return source
    return None


def check_output(path: str | os.PathLike, *, inputs: Iterable[str | os.PathLike | None] = (),
                 overwrite: bool = False, option: str = "-o") -> Path:
    """Check before any work that the command may write the file ``path``.

    Refuses (OutputError) an output that is one of ``inputs``, an existing output unless
    ``overwrite``, a folder in its place, and a location that cannot be written. Protects
    ``inputs`` for the rest of the process (see :func:`protect`).
    """
    target = Path(path)
    inputs = [source for source in inputs if source is not None]
    protect(*inputs)
    source = _is_input(target, inputs)
    if source is not None:
        raise OutputError(f"{option} {target} is the input {source}: an output never replaces "
                          "an input; write to another file")
    if target.is_dir():
        raise OutputError(f"{option} {target} is a folder; give a file name")
    if target.exists() and not overwrite:
        raise OutputError(f"{option} {target} exists; pass --overwrite to replace it, or "
                          "choose another name")
    check_writable(target.parent, option=option)
    return target


def check_output_folder(folder: str | os.PathLike, *,
                        inputs: Iterable[str | os.PathLike | None] = (),
                        writes: Iterable[str] = (), overwrite: bool = False,
                        option: str = "-o") -> Path:
    """Check before any work that the command may write the files ``writes`` (names, or
    glob patterns) into ``folder``.

    Refuses an input that lies where the command writes (the folder itself, or a file it
    would write), existing outputs unless ``overwrite``, a file in the folder's place, and a
    folder that cannot be written. Protects ``inputs`` for the rest of the process.
    """
    folder = Path(folder)
    inputs = [source for source in inputs if source is not None]
    protect(*inputs)
    if folder.exists() and not folder.is_dir():
        raise OutputError(f"{option} {folder} is a file; give a folder")
    source = _is_input(folder, inputs)
    if source is not None:
        raise OutputError(f"{option} {folder} is the input {source}; write to another folder")
    existing = sorted({path for pattern in writes for path in folder.glob(pattern)})
    for path in existing:
        source = _is_input(path, inputs)
        if source is not None:
            raise OutputError(f"{option} {folder}: the command writes {path.name} there, which "
                              f"is the input {source}; write the output to another folder")
    if existing and not overwrite:
        names = ", ".join(path.name for path in existing[:3])
        more = f" and {len(existing) - 3} more" if len(existing) > 3 else ""
        raise OutputError(f"{option} {folder} holds outputs already ({names}{more}); pass "
                          "--overwrite to replace them, or choose another folder")
    check_writable(folder, option=option)
    return folder


def check_writable(folder: str | os.PathLike, *, option: str = "-o") -> None:
    """Refuse (OutputError) a folder in which no file can be created, by creating and
    deleting a probe in it, or in its nearest existing parent (nothing is left behind)."""
    folder = Path(folder).absolute()
    probe_in = folder
    while not probe_in.exists():
        probe_in = probe_in.parent
    if not probe_in.is_dir():
        raise OutputError(f"{option}: {probe_in} is a file, so {folder} cannot be created")
    try:
        handle, probe = tempfile.mkstemp(prefix=".expertsim-probe.", dir=probe_in)
    except OSError as error:
        raise OutputError(f"{option}: cannot write in {probe_in} ({error.strerror}); choose a "
                          "folder you can write to") from None
    os.close(handle)
    os.unlink(probe)


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _remove_stale_partials(target: Path) -> None:
    """Delete temporary files of ``target`` left by processes of this host that are gone."""
    host = _host()
    for stale in target.parent.glob(f".{glob_escape(target.name)}.*.partial"):
        parts = stale.name[len(target.name) + 2:].split(".")
        if len(parts) < 4 or parts[0] != host or not parts[1].isdigit():
            continue
        if not _process_alive(int(parts[1])):
            with contextlib.suppress(OSError):
                stale.unlink()


def _host() -> str:
    return socket.gethostname().replace(".", "_") or "host"


def glob_escape(name: str) -> str:
    return "".join(f"[{c}]" if c in "*?[" else c for c in name)


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it to ``path`` only if the block succeeds.

    The temporary file lies in the target's folder (a rename within one file system is atomic),
    gets the permissions ``open`` would give, and is deleted when the block raises (an
    interrupt included). Refuses (OutputError) to replace a protected input.
    """
    target = Path(path)
    if _identity(target) in _PROTECTED:
        raise OutputError(f"{target} is an input of this command: an output never replaces an "
                          "input; write to another file")
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        _remove_stale_partials(target)
        handle, temporary = tempfile.mkstemp(
            prefix=f".{target.name}.{_host()}.{os.getpid()}.", suffix=".partial",
            dir=target.parent)
    except OSError as error:
        raise OutputError(f"{target}: cannot be written ({error.strerror}); choose a folder "
                          "you can write to") from None
    os.close(handle)
    try:
        os.chmod(temporary, 0o666 & ~_umask())
        yield Path(temporary)
        os.replace(temporary, target)
    finally:
        if os.path.exists(temporary):
            os.unlink(temporary)


def write_text(path: str | os.PathLike, text: str) -> Path:
    """Write ``text`` to ``path`` atomically."""
    with atomic_path(path) as temporary:
        temporary.write_text(text)
    return Path(path)
