"""Distributed mode rides out real cluster events: a submit limit, slurmctld not answering, Ctrl-C in sbatch, requeue.

Against the real one-node Slurm with accounting (slurm/local-slurm start --accounting), as
tests/test_cluster_events.py does against fake_slurm. Skipped when no Slurm answers; with
SLURPTUNA_REQUIRE_SLURM=1 (CI) that is a failure. Each test leaves the cluster as it found it:
QoS removed, slurmctld continued, the run's jobs cancelled.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import shutil
import signal
import subprocess
import textwrap
import threading
import time
from datetime import timedelta
from pathlib import Path

import losses
import pytest
from conftest import read_json, start_controller, wait_for
from real_slurm import slurmctld_pid
from test_distributed_real import distributed, jobcomp_rows, run_jobs_in_queue, slurm, unique_run_name

from slurptuna import RunPaths

__all__ = ["slurm"]  # the fixture, imported for pytest

STOPPED_SECONDS = 18  # longer than sbatch's own timeout (MessageTimeout=10 s in slurm/local-slurm)


def sbatch_wrapper(directory: Path, before_exec: str) -> Path:
    """A directory whose ``sbatch`` runs ``before_exec`` (sh), then the real sbatch.

    Each call first appends a line to ``directory/calls``, so ``$N`` in ``before_exec`` is
    the number of this call (1, 2, ...).
    """
    real = shutil.which("sbatch")
    assert real, "sbatch is not on PATH"
    directory.mkdir(parents=True, exist_ok=True)
    calls = directory / "calls"
    wrapper = directory / "sbatch"
    wrapper.write_text(
        f"#!/bin/sh\necho $$ >> '{calls}'\nN=$(wc -l < '{calls}')\n{before_exec}\nexec '{real}' \"$@\"\n"
    )
    wrapper.chmod(0o755)
    return directory


def sbatch_calls(directory: Path) -> int:
    path = directory / "calls"
    return len(path.read_text().splitlines()) if path.exists() else 0


def direct_mean(x: float, n_seeds: int) -> float:
    return math.fsum(losses.quadratic_value({"x": x}, s) for s in range(n_seeds)) / n_seeds


def chunk_task_rows(rows: list[dict], run_name: str) -> list[dict]:
    """The jobcomp rows of the run's chunk tasks (an array may hold several trials' chunks)."""
    return [r for r in rows if r["Name"].startswith(f"{run_name}.a") and r["Name"].endswith(".chunks")]


@contextlib.contextmanager
def interrupted_after(seconds: float):
    """Bound an in-process run: after ``seconds``, a SIGINT (the run cancels its jobs and exits 130)."""
    timer = threading.Timer(seconds, os.kill, (os.getpid(), signal.SIGINT))
    timer.start()
    try:
        yield
    finally:
        timer.cancel()


def squeue(job: str, fields: str) -> str:
    return subprocess.run(["squeue", "-h", "-j", job, "-o", fields], capture_output=True, text=True).stdout.strip()


def sacctmgr(*args: str) -> None:
    subprocess.run(["sacctmgr", "-i", *args], capture_output=True, text=True, timeout=30, check=True)


def test_real_slurm_submit_limit_keeps_the_qos_and_the_run_completes(slurm, run_root, caplog):
    facts, names = slurm
    facts.require_accounting()
    qos = "slurptuna_capped"
    run_name = unique_run_name(names, "limit")
    facts.add_qos(qos, "00:30:00")
    # Each array task counts as a job: 3 trials of 2 chunk tasks and their reduce jobs would be 7 or more.
    sacctmgr("modify", "qos", qos, "set", "MaxSubmitJobsPerUser=4")
    try:
        with caplog.at_level(logging.WARNING, logger="slurptuna"), interrupted_after(240):
            result = distributed(
                losses.quadratic,
                run_root,
                run_name,
                n_trials=3,
                max_concurrent_trials=3,
                n_seeds=4,
                chunk_size=2,
                slurm_qos=qos,
                worker_time_limit=timedelta(minutes=20),
            )
        assert result.n_complete == 3
        for trial in result.study.trials:
            assert trial.value == pytest.approx(direct_mean(trial.params["x"], 4), rel=1e-12)
        wait_for(lambda: len(chunk_task_rows(jobcomp_rows(facts, run_name), run_name)) == 6, timeout=30)
        rows = jobcomp_rows(facts, run_name)
        assert {r["QOS"] for r in rows} == {qos}  # never dropped
        arrays = {r["ArrayJobId"] for r in chunk_task_rows(rows, run_name)}
        assert len(arrays) >= 2  # the limit (read from sacctmgr) split the 6 tasks: at most 3 + a reduce at once
        messages = [r.getMessage() for r in caplog.records]
        assert not [m for m in messages if "without a QoS" in m]
        assert not [m for m in messages if "QOSMaxSubmitJobPerUserLimit" in m], messages  # never refused
        limit_lines = [m for m in messages if "under a Slurm limit" in m]
        assert len(limit_lines) == 1 and "may queue 4 tasks" in limit_lines[0], messages
    finally:
        for line in run_jobs_in_queue(run_name):
            subprocess.run(["scancel", line.split("|")[0].split("_")[0]], check=False)
        wait_for(lambda: not run_jobs_in_queue(run_name), timeout=30)
        sacctmgr("modify", "qos", qos, "set", "MaxSubmitJobsPerUser=-1")
        facts.remove_qos(qos)


def test_real_slurm_stopped_slurmctld_is_waited_for_and_no_chunk_is_queued_twice(
    slurm, run_root, seed_counter, caplog, tmp_path, monkeypatch
):
    facts, names = slurm
    pid = slurmctld_pid()
    run_name = unique_run_name(names, "outage")
    # The third sbatch (trial 1's array, trial 0's jobs queued) stops slurmctld first: it times out
    # after MessageTimeout while slurmctld still holds its request and queues the job once continued.
    marker = tmp_path / "stopped"
    wrapper = sbatch_wrapper(tmp_path / "bin", f"if [ $N = 3 ]; then kill -STOP {pid}; touch '{marker}'; fi")
    monkeypatch.setenv("PATH", f"{wrapper}{os.pathsep}{os.environ['PATH']}")
    resumed = threading.Event()

    def continue_later() -> None:
        deadline = time.monotonic() + 240
        while not marker.exists() and time.monotonic() < deadline and not resumed.is_set():
            time.sleep(0.05)
        resumed.wait(STOPPED_SECONDS if marker.exists() else 0)
        os.kill(pid, signal.SIGCONT)

    waker = threading.Thread(target=continue_later, daemon=True)
    waker.start()
    try:
        with caplog.at_level(logging.WARNING, logger="slurptuna"), interrupted_after(240):
            result = distributed(
                losses.quadratic, run_root, run_name, n_trials=3, max_concurrent_trials=1, n_seeds=6, chunk_size=2
            )
    finally:
        resumed.set()
        waker.join()
        os.kill(pid, signal.SIGCONT)  # whatever happened above
    assert marker.exists(), "slurmctld was never stopped: the run made fewer than 3 sbatch calls"
    assert result.n_complete == 3
    for trial in result.study.trials:
        assert trial.value == pytest.approx(direct_mean(trial.params["x"], 6), rel=1e-12)
    assert sorted(seed_counter.evaluations().values()) == [1] * 18  # every seed of every trial evaluated once
    messages = [r.getMessage() for r in caplog.records]
    # the outage is met either as a wait (logged once) or by finding the job the failed sbatch queued anyway
    waited = (
        sum("Slurm does not answer" in m for m in messages) == 1 == sum("Slurm answers again" in m for m in messages)
    )
    found = any("queued job" in m and "all the same" in m for m in messages)
    assert waited or found, messages
    run = RunPaths(run_root / run_name)
    for t in range(3):
        arrays = [j for j in read_json(run.trial(t).jobs)["jobs"] if j["kind"] == "tasks"]
        assert len(arrays) == 1 and arrays[0]["chunks"] == [0, 1, 2]
    wait_for(lambda: {r["Name"].rsplit(".", 1)[1] for r in jobcomp_rows(facts, run_name)} >= {"chunks"}, timeout=30)
    wait_for(lambda: sum(r["Name"].endswith(".chunks") for r in jobcomp_rows(facts, run_name)) >= 9, timeout=30)
    rows = jobcomp_rows(facts, run_name)
    tasks = chunk_task_rows(rows, run_name)
    assert len(tasks) == 9 and len({r["ArrayJobId"] for r in tasks}) == 3  # none queued twice, also not by Slurm


SLOW_SBATCH_CONTROLLER = textwrap.dedent("""
    import sys
    import losses
    from slurptuna import optimize_run
    optimize_run(losses.slow_quadratic, mode="distributed", n_trials=4, max_concurrent_trials=2, n_seeds=4,
                 chunk_size=2, run_root=sys.argv[1], run_name=sys.argv[2], slurm_poll_seconds=0.3, slurm_qos=None)
""")


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_real_slurm_a_signal_to_the_process_group_during_a_slow_sbatch_leaves_no_job(slurm, tmp_path, signum):
    _, names = slurm
    run_name = unique_run_name(names, "slowsbatch")
    wrapper = sbatch_wrapper(tmp_path / "bin", "sleep 3")
    process = start_controller(
        tmp_path,
        SLOW_SBATCH_CONTROLLER,
        tmp_path / "runs",
        run_name,
        start_new_session=True,  # as a terminal's foreground job
        SLURPTUNA_TEST_SLEEP="5",
        PATH=f"{wrapper}{os.pathsep}{os.environ['PATH']}",
    )
    try:
        wait_for(lambda: sbatch_calls(wrapper) == 2 or process.poll() is not None)  # trial 0's reduce job
        time.sleep(1)  # its sbatch sleeps; trial 0's array is queued
        (array,) = read_json(RunPaths(tmp_path / "runs" / run_name).trial(0).jobs)["jobs"]  # saved before the reduce
        assert process.poll() is None and {line.split("_")[0] for line in run_jobs_in_queue(run_name)} == {
            array["job_id"]
        }
        os.killpg(process.pid, signum)  # what a terminal's Ctrl-C does: the controller and its children alike
        _, stderr = process.communicate(timeout=60)
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()
    assert process.returncode == (130 if signum == signal.SIGINT else 143), stderr
    assert "cancelled 2 job(s)" in stderr, stderr
    assert f"Resume with run_name='{run_name}'" in stderr.strip().splitlines()[-1]
    assert sbatch_calls(wrapper) == 2  # no new trial was started after the signal
    wait_for(lambda: not run_jobs_in_queue(run_name), timeout=30)


def test_real_slurm_a_requeued_task_is_waited_for_and_the_trial_completes(slurm, run_root, monkeypatch, caplog):
    facts, names = slurm
    monkeypatch.setenv("SLURPTUNA_TEST_SLEEP", "1")  # 3 s per chunk: long enough to requeue it while it runs
    run_name = unique_run_name(names, "requeue")
    jobs_path = RunPaths(run_root / run_name).trial(0).jobs
    requeued: list[str] = []
    done = threading.Event()

    def requeue_task_0() -> None:
        while not done.is_set() and not jobs_path.exists():
            time.sleep(0.05)
        if done.is_set():
            return
        (array,) = [j["job_id"] for j in read_json(jobs_path)["jobs"] if j["kind"] == "tasks"]
        task = f"{array}_0"
        while not done.is_set() and squeue(task, "%T") != "RUNNING":
            time.sleep(0.1)
        time.sleep(1)  # a seed or so into the chunk
        if not done.is_set():
            subprocess.run(["scontrol", "requeue", task], check=True, capture_output=True, text=True)
            requeued.append(task)
            # Slurm holds a requeued task back for ~2 minutes (its BeginTime): let it start sooner, but not
            # at once: started while the node still cleans up its first run, it fails without running.
            wait_for(lambda: squeue(task, "%T|%r") == "PENDING|BeginTime", timeout=30)
            subprocess.run(["scontrol", "update", f"JobId={task}", "StartTime=now+3"], check=True, capture_output=True)

    watcher = threading.Thread(target=requeue_task_0, daemon=True)
    watcher.start()
    try:
        with caplog.at_level(logging.WARNING, logger="slurptuna"), interrupted_after(180):
            result = distributed(losses.slow_quadratic, run_root, run_name, n_trials=1, n_seeds=6, chunk_size=3)
    finally:
        done.set()
        watcher.join()
    assert requeued, "the task was not requeued while it ran"
    (trial,) = result.study.trials
    assert trial.state.name == "COMPLETE", trial.user_attrs.get("fail_reason")
    assert "attempts" not in trial.user_attrs  # waited for, not retried
    assert trial.value == pytest.approx(direct_mean(trial.params["x"], 6), rel=1e-12)
    assert not [r.getMessage() for r in caplog.records if "retry" in r.getMessage()]
    array = requeued[0].split("_")[0]

    def task_0_states() -> list[str]:
        rows = jobcomp_rows(facts, run_name)
        return sorted(r["JobState"] for r in rows if r.get("ArrayJobId") == array and r["ArrayTaskId"] == "0")

    wait_for(lambda: len(task_0_states()) == 2, timeout=30)
    assert task_0_states() == ["COMPLETED", "PENDING"]  # requeued while it ran (a row then), then ran once more
    wait_for(lambda: not run_jobs_in_queue(run_name), timeout=30)  # a reduce job may still be COMPLETING
