"""Helpers for tests that run against a real Slurm (not a test module itself).

Start one with ``slurm/local-slurm start --accounting`` (as root), then::

    from real_slurm import require_real_slurm, jobcomp_lines

    def test_something():
        slurm = require_real_slurm()        # skips (or fails) if no Slurm answers
        slurm.add_qos("short", "00:10:00")  # needs accounting: require_accounting()
        ...
        rows = jobcomp_lines(slurm.jobcomp_log)

With ``SLURPTUNA_REQUIRE_SLURM=1`` in the environment (CI sets it), a missing
Slurm fails the test instead of skipping it. Standard library only.
"""

from __future__ import annotations

import dataclasses
import getpass
import os
import re
import subprocess
import time
from pathlib import Path

import pytest

START_HINT = "start one with slurm/local-slurm start --accounting"
_KV = re.compile(r"(\w+)=(.*?)(?=\s+\w+=|\s*$)")


def _run(args: list[str], timeout: float = 10.0) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, capture_output=True, text=True, timeout=timeout, check=False)


def _unavailable(reason: str) -> None:
    """Skip the test, or fail it if SLURPTUNA_REQUIRE_SLURM=1."""
    if os.environ.get("SLURPTUNA_REQUIRE_SLURM") == "1":
        pytest.fail(f"SLURPTUNA_REQUIRE_SLURM=1 but {reason}", pytrace=False)
    pytest.skip(reason)


def _probe() -> tuple[dict[str, str] | None, str]:
    """(config, "") if a Slurm controller answers, else (None, why not)."""
    try:
        ping = _run(["sinfo", "-h"], timeout=5)
    except FileNotFoundError:
        return None, "sinfo is not installed"
    except subprocess.TimeoutExpired:
        return None, "sinfo -h did not answer within 5 s"
    if ping.returncode != 0:
        return None, f"sinfo -h exited {ping.returncode}: {ping.stderr.strip()[:300]}"
    try:
        show = _run(["scontrol", "show", "config"], timeout=10)
    except (FileNotFoundError, subprocess.TimeoutExpired) as exc:
        return None, f"scontrol show config failed: {exc}"
    if show.returncode != 0:
        return (
            None,
            f"scontrol show config exited {show.returncode}: {show.stderr.strip()[:300]}",
        )
    config = {}
    for line in show.stdout.splitlines():
        key, sep, value = line.partition("=")
        if sep and key.strip() and " " not in key.strip():
            config[key.strip()] = value.strip()
    return config, ""


@dataclasses.dataclass(frozen=True)
class RealSlurm:
    """What the tests need to know about the running Slurm."""

    conf_dir: Path  # the directory of slurm.conf (symlinks resolved)
    jobcomp_log: Path | None  # JobCompLoc when JobCompType is jobcomp/filetxt
    accounting: bool  # slurmdbd accounting: QoS and associations are enforced
    max_array_size: int  # MaxArraySize: array indices must be below it
    config: dict[str, str] = dataclasses.field(repr=False, compare=False, hash=False)

    def require_accounting(self) -> None:
        """Skip (or fail, with SLURPTUNA_REQUIRE_SLURM=1) unless accounting is on."""
        if not self.accounting:
            _unavailable(
                "the real Slurm runs without accounting (QoS is not enforced): "
                "restart it with slurm/local-slurm stop && slurm/local-slurm start --accounting"
            )

    def jobcomp(self) -> list[dict[str, str]]:
        """All lines of the job completion log so far (see jobcomp_lines)."""
        return jobcomp_lines(self.jobcomp_log) if self.jobcomp_log else []

    def has_qos(self, name: str) -> bool:
        out = _run(["sacctmgr", "-n", "-P", "list", "qos", name, "format=name"])
        return out.returncode == 0 and name in out.stdout.split()

    def add_qos(self, name: str, max_wall: str | None = None, user: str | None = None) -> None:
        """Create QoS ``name`` (if missing) and grant it to ``user`` (default: us).

        ``max_wall`` is a Slurm time such as "00:10:00". Returns once
        ``sbatch --test-only --qos=name`` accepts it.
        """
        self.require_accounting()
        user = user or getpass.getuser()
        steps = []
        if not self.has_qos(name):
            steps.append(["sacctmgr", "-i", "add", "qos", name] + ([f"MaxWall={max_wall}"] if max_wall else []))
        elif max_wall:
            steps.append(["sacctmgr", "-i", "modify", "qos", name, "set", f"MaxWall={max_wall}"])
        listed = _run(["sacctmgr", "-n", "-P", "list", "user", user, "format=user"])
        if user not in listed.stdout.split():
            steps.append(["sacctmgr", "-i", "add", "user", user, "account=root"])
        steps.append(["sacctmgr", "-i", "modify", "user", user, "set", f"qos+={name}"])
        for args in steps:
            done = _run(args, timeout=30)
            if done.returncode != 0:
                raise RuntimeError(f"{' '.join(args)} exited {done.returncode}: {done.stderr.strip()}")
        deadline = time.monotonic() + 15
        while True:  # sacctmgr's updates reach slurmctld asynchronously
            probe = _run(
                [
                    "sbatch",
                    "--test-only",
                    f"--qos={name}",
                    "-o",
                    "/dev/null",
                    "--wrap",
                    "true",
                ]
            )
            if probe.returncode == 0:
                return
            if time.monotonic() > deadline:
                raise RuntimeError(f"QoS {name} still refused after adding it: {probe.stderr.strip()}")
            time.sleep(0.2)

    def remove_qos(self, name: str) -> None:
        """Delete QoS ``name`` if it exists (jobs using it should be gone first)."""
        if self.accounting and self.has_qos(name):
            done = _run(["sacctmgr", "-i", "delete", "qos", name], timeout=30)
            if done.returncode != 0:
                raise RuntimeError(f"sacctmgr delete qos {name} exited {done.returncode}: {done.stderr.strip()}")


_NO_SLURM: list[str] = []  # why the first probe failed: later tests don't wait again


def require_real_slurm() -> RealSlurm:
    """Return the running Slurm's facts, or skip/fail the calling test if none answers."""
    config, why = (None, _NO_SLURM[0]) if _NO_SLURM else _probe()
    if config is None:
        _NO_SLURM[:1] = [why]
        _unavailable(f"no real Slurm answers: {START_HINT} ({why})")
        raise AssertionError("unreachable")  # pytest.skip/fail raise
    conf = config.get("SLURM_CONF") or os.environ.get("SLURM_CONF") or "/etc/slurm/slurm.conf"
    jobcomp = None
    if config.get("JobCompType", "").endswith("filetxt") and config.get("JobCompLoc", "").startswith("/"):
        jobcomp = Path(config["JobCompLoc"])
    try:
        max_array = int(config.get("MaxArraySize", "1001"))
    except ValueError:
        max_array = 1001
    return RealSlurm(
        conf_dir=Path(conf).resolve().parent,
        jobcomp_log=jobcomp,
        accounting=config.get("AccountingStorageType", "").endswith("slurmdbd"),
        max_array_size=max_array,
        config=config,
    )


def jobcomp_lines(path: str | os.PathLike[str] | None) -> list[dict[str, str]]:
    """Parse a jobcomp/filetxt log: one dict of its ``Key=Value`` fields per line.

    Fields include JobId, JobState (COMPLETED, FAILED, TIMEOUT, CANCELLED, ...),
    ExitCode ("1:0"), StartTime/EndTime (ISO, whole seconds), Name, and for array
    tasks ArrayJobId and ArrayTaskId. Values are strings; a missing file gives [].
    """
    if path is None:
        return []
    try:
        text = Path(path).read_text(errors="replace")
    except FileNotFoundError:
        return []
    rows = []
    for line in text.splitlines():
        fields = dict(_KV.findall(line.strip()))
        if "JobId" in fields:
            rows.append(fields)
    return rows


def slurmctld_pid() -> int:
    """The pid of this cluster's slurmctld, from ``$SLURPTUNA_SLURM_DIR/pids/slurmctld.pid``.

    ``slurm/local-slurm`` writes that file (``local-slurm env`` and CI export the directory).
    Skips (or fails, with SLURPTUNA_REQUIRE_SLURM=1) if there is none, or if that pid is not a
    running slurmctld: a test must never stop a process it does not know.
    """
    directory = os.environ.get("SLURPTUNA_SLURM_DIR")
    if not directory:
        _unavailable('SLURPTUNA_SLURM_DIR is not set: cannot find slurmctld\'s pid (eval "$(local-slurm env)")')
    path = Path(directory) / "pids" / "slurmctld.pid"
    try:
        pid = int(path.read_text().strip())
        comm = Path(f"/proc/{pid}/comm").read_text().strip()
    except (OSError, ValueError) as exc:
        _unavailable(f"no running slurmctld recorded in {path}: {exc}")
        raise AssertionError("unreachable") from None
    if comm != "slurmctld":
        _unavailable(f"{path} names pid {pid}, which is {comm!r}, not slurmctld")
    return pid
