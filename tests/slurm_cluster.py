"""A real single-node SLURM for tests (Debian 12 slurm-wlm + munge, daemons run as root).

Needs root and Debian's slurm-wlm + munge (``make test`` installs them where it can). The
daemons run from a configuration written into a temporary folder and are stopped afterwards.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from pathlib import Path

SLURM_CONF = """\
ClusterName=expertsim-test
SlurmctldHost={host}(127.0.0.1)
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=cred_expire=5
MpiDefault=none
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
SchedulerType=sched/backfill
SchedulerParameters=batch_sched_delay=0,sched_interval=2
ReturnToService=2
MinJobAge=3600
KillWait=30
StateSaveLocation={root}/state
SlurmdSpoolDir={root}/spool
SlurmctldPidFile={root}/slurmctld.pid
SlurmdPidFile={root}/slurmd.pid
SlurmctldLogFile={root}/slurmctld.log
SlurmdLogFile={root}/slurmd.log
SlurmctldPort=16817
SlurmdPort=16818
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
NodeName={host} NodeAddr=127.0.0.1 CPUs=2 RealMemory=4000 State=UNKNOWN
PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP
"""


def slurm_available() -> str | None:
    """None if a test SLURM can be started here, else the reason it cannot."""
    if os.geteuid() != 0:
        return "needs root to start slurmctld/slurmd"
    for tool in ("slurmctld", "slurmd", "munged", "sbatch", "scontrol"):
        if shutil.which(tool) is None and not Path(f"/usr/sbin/{tool}").exists():
            return f"{tool} not installed (apt-get install slurm-wlm munge)"
    return None


class SlurmCluster:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.host = socket.gethostname()
        self.conf = root / "slurm.conf"
        self.env = {**os.environ, "SLURM_CONF": str(self.conf)}

    def start(self, timeout: float = 60.0) -> None:
        for folder in ("state", "spool"):
            (self.root / folder).mkdir(parents=True, exist_ok=True)
        self.conf.write_text(SLURM_CONF.format(host=self.host, root=self.root))
        Path("/run/munge").mkdir(parents=True, exist_ok=True)
        shutil.chown("/run/munge", "munge", "munge")
        if subprocess.run(["pgrep", "-x", "munged"], capture_output=True).returncode != 0:
            subprocess.run(["runuser", "-u", "munge", "--", "/usr/sbin/munged"], check=True)
        subprocess.run(["/usr/sbin/slurmctld"], env=self.env, check=True)
        subprocess.run(["/usr/sbin/slurmd"], env=self.env, check=True)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            state = self.run("sinfo", "-h", "-o", "%T", check=False).stdout.strip()
            if state == "idle":
                return
            time.sleep(0.5)
        raise RuntimeError(f"SLURM node not idle after {timeout} s: {self.logs()}")

    def stop(self) -> None:
        for name in ("slurmd", "slurmctld"):
            pid_file = self.root / f"{name}.pid"
            if pid_file.exists():
                try:
                    os.kill(int(pid_file.read_text().strip()), 15)
                except (ProcessLookupError, ValueError):
                    pass
        time.sleep(1)

    def run(self, *command: str, check: bool = True) -> subprocess.CompletedProcess:
        return subprocess.run(command, env=self.env, capture_output=True, text=True,
                              check=check, timeout=60)

    def submit(self, *arguments: str, env: dict | None = None) -> int:
        result = subprocess.run(["sbatch", "--parsable", *arguments],
                                env={**self.env, **(env or {})}, capture_output=True, text=True,
                                check=True, timeout=60)
        return int(result.stdout.strip().split(";")[0])

    def job(self, job_id: int) -> dict[str, str]:
        text = self.run("scontrol", "show", "job", str(job_id)).stdout
        fields = {}
        for token in text.split():
            if "=" in token:
                key, value = token.split("=", 1)
                fields.setdefault(key, value)
        return fields

    def wait(self, job_id: int, states: tuple[str, ...], timeout: float = 300.0) -> dict:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            info = self.job(job_id)
            if info.get("JobState") in states:
                return info
            time.sleep(0.5)
        raise TimeoutError(f"job {job_id} not in {states} after {timeout} s: {self.job(job_id)}")

    def logs(self) -> str:
        return "\n".join((self.root / f"{n}.log").read_text()[-2000:]
                         for n in ("slurmctld", "slurmd") if (self.root / f"{n}.log").exists())
