"""A real one-node Slurm cluster for the tests: munge, slurmctld and slurmd on this machine.

    python tests/slurm_cluster.py --install     # CI: apt-get install the daemons when missing

`SlurmCluster(folder).start()` writes a slurm.conf for this node (proctrack/linuxproc,
task/none, the machine's CPUs and memory), starts munged, slurmctld and slurmd, waits until
`srun hostname` answers, and points SLURM_CONF at it for the client commands (sbatch, squeue,
scancel) that submitit runs. `stop()` ends the daemons it started. Starting needs root (the
daemons run as root here) and the Debian packages; `unavailable()` says in one sentence why
not where they are missing.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

PACKAGES = ("munge", "slurmctld", "slurmd", "slurm-client")
BINARIES = ("munged", "slurmctld", "slurmd", "sbatch", "squeue", "scancel", "srun")


def missing_binaries() -> list[str]:
    search = os.environ.get("PATH", "") + ":/usr/sbin:/sbin"
    return [b for b in BINARIES if shutil.which(b, path=search) is None]


def install() -> None:
    """apt-get install the daemons when any is missing (CI machines start without them)."""
    if not missing_binaries():
        return
    env = os.environ | {"DEBIAN_FRONTEND": "noninteractive"}
    subprocess.run(["apt-get", "update", "-qq"], check=True, env=env)
    subprocess.run(["apt-get", "install", "-y", "-qq", *PACKAGES], check=True, env=env,
                   stdout=subprocess.DEVNULL)


def unavailable() -> str | None:
    """Why a cluster cannot start here, or None."""
    if os.name != "posix" or os.geteuid() != 0:
        return "the Slurm daemons need root to start (run the tests as root, as CI does)"
    missing = missing_binaries()
    if missing:
        return f"Slurm is not installed ({', '.join(missing)} missing; `python tests/slurm_cluster.py --install`)"
    return None


def _memory_mb() -> int:
    kb = int(Path("/proc/meminfo").read_text().split("MemTotal:")[1].split()[0])
    return kb // 1024 - 512  # leave the system some room, or slurmd marks the node invalid


def _config(folder: Path, host: str, cpus: int) -> str:
    return f"""ClusterName=hybridtest
SlurmctldHost={host}
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
# cred_expire also sets how long a requeued job waits before it starts again (default 120 s)
AuthInfo=socket={folder}/munge/munge.socket,cred_expire=10
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
MpiDefault=none
SchedulerType=sched/backfill
# schedule every 2 s (defaults: 60 s main loop, 30 s backfill): a requeued job starts once its
# begin time passes, not a minute later
SchedulerParameters=bf_interval=2,sched_interval=2
SelectType=select/cons_tres
# cores only: with memory consumable and no per-job request, each job would hold the whole node
SelectTypeParameters=CR_Core
ReturnToService=2
SlurmctldPort=16817
SlurmdPort=16818
StateSaveLocation={folder}/state
SlurmdSpoolDir={folder}/spool
SlurmctldPidFile={folder}/slurmctld.pid
SlurmdPidFile={folder}/slurmd.pid
SlurmctldLogFile={folder}/slurmctld.log
SlurmdLogFile={folder}/slurmd.log
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
KillWait=5
MinJobAge=30
InactiveLimit=0
NodeName={host} CPUs={cpus} RealMemory={_memory_mb()} State=UNKNOWN
PartitionName=debug Nodes={host} Default=YES MaxTime=INFINITE State=UP OverSubscribe=NO
"""


class SlurmCluster:
    def __init__(self, folder: Path):
        self.folder = Path(folder)
        self.conf = self.folder / "slurm.conf"
        self.processes: list[subprocess.Popen] = []
        self._old_conf = None

    def start(self, timeout: float = 60.0) -> "SlurmCluster":
        reason = unavailable()
        if reason:
            raise RuntimeError(reason)
        host = socket.gethostname().split(".")[0]
        for sub in ("state", "spool", "munge"):
            (self.folder / sub).mkdir(parents=True, exist_ok=True)
        self.conf.write_text(_config(self.folder, host, os.cpu_count() or 1))
        self._old_conf = os.environ.get("SLURM_CONF")
        os.environ["SLURM_CONF"] = str(self.conf)
        self._start_munge()
        # -D: in the foreground, so stop() can end exactly the processes started here
        self._spawn(["slurmctld", "-D", "-i", "-f", str(self.conf)], "slurmctld.out")
        self._spawn(["slurmd", "-D", "-f", str(self.conf)], "slurmd.out")
        self._wait_ready(timeout)
        return self

    def _start_munge(self) -> None:
        socket_path = self.folder / "munge" / "munge.socket"
        os.environ["MUNGE_SOCKET"] = str(socket_path)  # our own socket: never clash with a system munged
        self._spawn(["munged", "-F", "--force", f"--socket={socket_path}",
                     f"--pid-file={self.folder / 'munge' / 'munged.pid'}",
                     f"--seed-file={self.folder / 'munge' / 'munged.seed'}",
                     f"--log-file={self.folder / 'munge' / 'munged.log'}"], "munged.out")
        deadline = time.time() + 15
        while not socket_path.exists():
            if time.time() > deadline:
                raise RuntimeError(f"munged did not start; see {self.folder / 'munged.out'}")
            time.sleep(0.2)

    def _spawn(self, cmd: list[str], log_name: str) -> None:
        binary = shutil.which(cmd[0], path=os.environ.get("PATH", "") + ":/usr/sbin:/sbin")
        log = open(self.folder / log_name, "ab")
        env = os.environ | {"SLURM_CONF": str(self.conf)}
        self.processes.append(subprocess.Popen([binary, *cmd[1:]], stdout=log, stderr=subprocess.STDOUT, env=env,
                                               start_new_session=True))

    def _wait_ready(self, timeout: float) -> None:
        deadline = time.time() + timeout
        while time.time() < deadline:
            dead = [p.args[0] for p in self.processes if p.poll() is not None]
            if dead:
                raise RuntimeError(f"{dead[0]} exited; see the logs in {self.folder}")
            probe = subprocess.run(["srun", "-N1", "-t", "1", "hostname"], capture_output=True, text=True,
                                   timeout=timeout)
            if probe.returncode == 0:
                return
            time.sleep(1.0)
        raise RuntimeError(f"`srun hostname` did not answer within {timeout:.0f} s; see the logs in {self.folder}")

    def stop(self) -> None:
        subprocess.run(["scancel", "--full", "--user=root"], capture_output=True, timeout=30)
        for p in reversed(self.processes):
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGTERM)
        for p in self.processes:
            try:
                p.wait(timeout=5)
            except subprocess.TimeoutExpired:
                os.killpg(p.pid, signal.SIGKILL)
        self.processes.clear()
        if self._old_conf is None:
            os.environ.pop("SLURM_CONF", None)
        else:
            os.environ["SLURM_CONF"] = self._old_conf


if __name__ == "__main__":
    if "--install" in sys.argv:
        install()
        print("slurm:", "ready to start" if not unavailable() else unavailable())
