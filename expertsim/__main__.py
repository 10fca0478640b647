"""``python -m expertsim`` (and ``torchrun -m expertsim train ...``)."""

import os
import sys

from expertsim.cli import main


def _main_distributed() -> None:
    """Under torchrun (WORLD_SIZE > 1): run the command, flush, and leave with os._exit, so
    that no C++ static destructor runs after the process group is gone. A rank that had
    finished every step cleanly still aborted at interpreter exit now and then ("terminate
    called without an active exception", SIGABRT; CI twice, also after a barrier before
    leaving), which failed the run. Files are written and renamed, and the tracker finished,
    before the command returns, so nothing is lost by skipping the interpreter's teardown."""
    code = 0
    try:
        main()
    except SystemExit as leaving:
        code = leaving.code if isinstance(leaving.code, int) else (0 if leaving.code is None
                                                                   else 1)
        if not isinstance(leaving.code, (int, type(None))):
            print(leaving.code, file=sys.stderr)
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


if __name__ == "__main__":
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        _main_distributed()
    else:
        main()
