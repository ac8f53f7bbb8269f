"""Launching multi-process (gloo) runs from tests: one environment and one failure report for all."""

from __future__ import annotations

import os
import socket
import subprocess
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

REPOSITORY = Path(__file__).resolve().parents[1]
LOOPBACK = "127.0.0.1"


def launch_environment() -> dict[str, str]:
    """The environment of every launched process.

    No MASTER_PORT/MASTER_ADDR is passed on: Lightning and torch pick a free port, a fixed one would
    clash with runs in parallel (pytest-xdist). gloo's sockets stay on the loopback interface. One
    OpenMP thread per rank on 2 cores; offline hub and wandb; the repository on PYTHONPATH so worker
    scripts import the project, and tests/ so that runs can name test callbacks
    (`+callbacks.x._target_=ddp_scripts.launch_probes.RankRecord`).
    """
    environment = {key: value for key, value in os.environ.items() if key not in ("MASTER_PORT", "MASTER_ADDR")}
    search_path = [str(REPOSITORY), str(REPOSITORY / "tests"), environment.get("PYTHONPATH", "")]
    environment.update(
        HF_HUB_OFFLINE="1", WANDB_MODE="offline", OMP_NUM_THREADS="1", GLOO_SOCKET_IFNAME="lo",
        PYTHONPATH=os.pathsep.join(search_path),
    )
    return environment


def run_multiprocess_command(command: Sequence[str], cwd: Path, timeout: int = 900) -> str:
    """Run ``command`` (which starts several ranks) and return its stdout + stderr; fail with its tail."""
    result = subprocess.run(
        list(command), cwd=cwd, env=launch_environment(), capture_output=True, text=True, timeout=timeout
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return output


def run_concurrent_commands(commands: Sequence[Sequence[str]], cwd: Path, timeout: int = 900) -> list[str]:
    """Start every command at once (e.g. one torchrun per "node") and wait for all; their outputs.

    Output goes to files, not pipes: a rank blocked on a full pipe would stall the collective the other
    ranks wait in. When one command fails or the time is up, the others are stopped.
    """
    with tempfile.TemporaryDirectory() as folder:
        logs = [Path(folder) / f"command{index}.log" for index in range(len(commands))]
        processes = []
        for command, log in zip(commands, logs):
            with open(log, "w") as stream:
                processes.append(subprocess.Popen(
                    list(command), cwd=cwd, env=launch_environment(), stdout=stream, stderr=subprocess.STDOUT
                ))
        deadline = time.monotonic() + timeout
        while any(process.poll() is None for process in processes):
            failed = any(process.poll() not in (None, 0) for process in processes)
            if failed or time.monotonic() > deadline:
                for process in processes:
                    if process.poll() is None:
                        process.kill()
                        process.wait()
                break
            time.sleep(0.2)
        outputs = [log.read_text() for log in logs]
    report = "\n".join(
        f"--- command {index} exited with {process.returncode}:\n{output[-3000:]}"
        for index, (process, output) in enumerate(zip(processes, outputs))
    )
    assert all(process.returncode == 0 for process in processes), report
    return outputs


def free_loopback_port() -> int:
    """A TCP port free on 127.0.0.1 now, for a rendezvous that must be named up front (torchrun
    --master-port shared by two "nodes"); picked at run time, never fixed."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind((LOOPBACK, 0))
        return int(probe.getsockname()[1])
