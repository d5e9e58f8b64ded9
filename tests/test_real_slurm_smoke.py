"""Fast checks that the real Slurm behaves as slurptuna assumes (a few seconds each).

Skipped when no Slurm answers, failed instead with SLURPTUNA_REQUIRE_SLURM=1.
"""

from __future__ import annotations

import os
import subprocess
import time
from datetime import datetime

try:
    from real_slurm import jobcomp_lines, require_real_slurm
except ImportError:  # tests/ imported as a package
    from tests.real_slurm import jobcomp_lines, require_real_slurm


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(list(args), check=False, capture_output=True, text=True, timeout=30)


def sbatch(*args: str) -> str:
    done = run("sbatch", "--parsable", *args)
    assert done.returncode == 0, f"sbatch {args} failed: {done.stderr}"
    return done.stdout.strip().split(";")[0]


def wait_gone(job_ids: list[str], timeout: float = 60) -> None:
    """Poll plain squeue (one call for all jobs) until none of them is listed."""
    deadline = time.monotonic() + timeout
    while True:
        out = run("squeue", "-h", "-j", ",".join(job_ids), "-o", "%i|%T|%r").stdout.strip()
        if not out:
            return
        assert time.monotonic() < deadline, f"jobs still queued after {timeout}s:\n{out}"
        time.sleep(0.1)


def wait_jobcomp(path, predicate, timeout: float = 10) -> list[dict[str, str]]:
    """The jobcomp rows matching predicate, once there are any (the log may lag squeue)."""
    deadline = time.monotonic() + timeout
    while True:
        rows = [r for r in jobcomp_lines(path) if predicate(r)]
        if rows or time.monotonic() > deadline:
            return rows
        time.sleep(0.1)


def write_script(path, body: str) -> str:
    path.write_text("#!/bin/bash\n" + body)
    path.chmod(0o755)
    return str(path)


def test_array_then_afterok_reduce_round_trip(tmp_path):
    slurm = require_real_slurm()
    task = write_script(
        tmp_path / "task.sh",
        'echo "$SLURM_ARRAY_JOB_ID $SLURM_ARRAY_TASK_ID $1" > "$2/t_$SLURM_ARRAY_TASK_ID"\n',
    )
    reduce = write_script(tmp_path / "reduce.sh", 'ls "$1" | grep -c "^t_" > "$1/reduced"\n')
    t0 = time.monotonic()
    array = sbatch("--array=0-5", "-o", str(tmp_path / "%A_%a.out"), task, "arg one", str(tmp_path))
    dep = sbatch(
        f"--dependency=afterok:{array}",
        "--kill-on-invalid-dep=yes",
        "-o",
        str(tmp_path / "reduce.out"),
        reduce,
        str(tmp_path),
    )
    wait_gone([array, dep])
    elapsed = time.monotonic() - t0
    assert (tmp_path / "reduced").read_text().strip() == "6", (tmp_path / "reduce.out").read_text()
    for i in range(6):  # script arguments (with a space) reach the task
        assert (tmp_path / f"t_{i}").read_text() == f"{array} {i} arg one\n"
    if slurm.jobcomp_log:
        tasks = wait_jobcomp(slurm.jobcomp_log, lambda r: r.get("ArrayJobId") == array)
        assert sorted(int(r["ArrayTaskId"]) for r in tasks) == list(range(6))
        assert {r["JobState"] for r in tasks} == {"COMPLETED"}
        reduced = wait_jobcomp(slurm.jobcomp_log, lambda r: r["JobId"] == dep)
        assert [r["JobState"] for r in reduced] == ["COMPLETED"]
    assert elapsed < 30, f"round trip took {elapsed:.1f}s (local-slurm does it in ~1s)"


def test_array_throttle_is_respected(tmp_path):
    slurm = require_real_slurm()
    assert slurm.jobcomp_log is not None, "this check reads the jobcomp log (JobCompType=jobcomp/filetxt)"
    task = write_script(
        tmp_path / "task.sh",
        'date +%s.%N > "$1/start_$SLURM_ARRAY_TASK_ID"; sleep 2; date +%s.%N > "$1/end_$SLURM_ARRAY_TASK_ID"\n',
    )
    array = sbatch("--array=0-4%2", "-o", "/dev/null", task, str(tmp_path))
    time.sleep(0.5)
    pending = run("squeue", "-h", "-r", "-j", array, "-t", "PD", "-o", "%r").stdout.split()
    wait_gone([array])
    rows = wait_jobcomp(slurm.jobcomp_log, lambda r: r.get("ArrayJobId") == array)
    deadline = time.monotonic() + 10
    while len(rows) < 5 and time.monotonic() < deadline:
        time.sleep(0.2)
        rows = [r for r in jobcomp_lines(slurm.jobcomp_log) if r.get("ArrayJobId") == array]
    assert len(rows) == 5 and {r["JobState"] for r in rows} == {"COMPLETED"}, rows

    def most_at_once(intervals: list[tuple[float, float]]) -> int:
        # half-open [start, end): truncating both ends to whole seconds keeps
        # intervals that did not overlap from overlapping
        events = sorted([(s, 1) for s, _ in intervals] + [(e, -1) for _, e in intervals])
        running = peak = 0
        for _, step in events:
            running += step
            peak = max(peak, running)
        return peak

    def ts(value: str) -> float:
        return datetime.fromisoformat(value).timestamp()

    from_jobcomp = most_at_once([(ts(r["StartTime"]), ts(r["EndTime"])) for r in rows])
    from_tasks = most_at_once(
        [
            (
                float((tmp_path / f"start_{i}").read_text()),
                float((tmp_path / f"end_{i}").read_text()),
            )
            for i in range(5)
        ]
    )
    assert from_jobcomp <= 2, rows
    assert from_tasks <= 2
    assert pending and set(pending) <= {"JobArrayTaskLimit", "None", "Priority", "Resources"}, pending


def test_qos_helper_makes_a_qos_usable(tmp_path):
    slurm = require_real_slurm()
    slurm.require_accounting()
    name = f"smoke{os.getpid()}"
    refused = run("sbatch", "--parsable", f"--qos={name}", "-o", "/dev/null", "--wrap", "true")
    assert refused.returncode != 0 and "Invalid qos specification" in refused.stderr, refused
    try:
        slurm.add_qos(name, max_wall="00:05:00")
        assert slurm.has_qos(name)
        ok = sbatch(f"--qos={name}", "--time=00:01:00", "-o", "/dev/null", "--wrap", "true")
        too_long = sbatch(f"--qos={name}", "--time=00:10:00", "-o", "/dev/null", "--wrap", "true")
        deadline = time.monotonic() + 15
        reason = ""
        while time.monotonic() < deadline:
            reason = run("squeue", "-h", "-j", too_long, "-o", "%r").stdout.strip()
            if reason == "QOSMaxWallDurationPerJobLimit":
                break
            time.sleep(0.2)
        assert reason == "QOSMaxWallDurationPerJobLimit"
        assert run("scancel", too_long).returncode == 0
        wait_gone([ok, too_long])
        if slurm.jobcomp_log:
            row = wait_jobcomp(slurm.jobcomp_log, lambda r: r["JobId"] == ok)
            assert [(r["JobState"], r["QOS"]) for r in row] == [("COMPLETED", name)]
    finally:
        slurm.remove_qos(name)
    assert not slurm.has_qos(name)
