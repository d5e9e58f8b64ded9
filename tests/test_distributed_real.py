"""Distributed mode against a real one-node Slurm (slurm/local-slurm start --accounting).

Skipped when no Slurm answers; with SLURPTUNA_REQUIRE_SLURM=1 (CI) that is a failure.
"""

from __future__ import annotations

import json
import logging
import math
import signal
import subprocess
import textwrap
import threading
import time
import uuid
from datetime import timedelta
from pathlib import Path

import losses
import pytest
from conftest import read_json, start_controller, wait_for
from real_slurm import require_real_slurm

from slurptuna import RunPaths, optimize_run


@pytest.fixture
def slurm():
    """The running Slurm; afterwards, cancel whatever a failed test left of its runs."""
    found = require_real_slurm()
    names: list[str] = []
    yield found, names
    for name in names:
        queued = subprocess.run(["squeue", "-h", "-o", "%i|%j"], capture_output=True, text=True, check=False)
        ids = [line.split("|")[0].split("_")[0] for line in queued.stdout.splitlines() if f"|{name}." in line]
        if ids:
            subprocess.run(["scancel", *set(ids)], check=False)


def unique_run_name(names: list[str], label: str) -> str:
    name = f"{label}_{uuid.uuid4().hex[:8]}"
    names.append(name)
    return name


def distributed(definition, run_root: Path, run_name: str, **options):
    options = {"mode": "distributed", "slurm_poll_seconds": 0.3, "slurm_qos": None, **options}
    return optimize_run(definition, run_root=run_root, run_name=run_name, **options)


def run_jobs_in_queue(run_name: str) -> list[str]:
    queued = subprocess.run(["squeue", "-h", "-o", "%i|%j|%T"], capture_output=True, text=True, check=True)
    return [line for line in queued.stdout.splitlines() if f"|{run_name}." in line]


def jobcomp_rows(slurm_facts, run_name: str) -> list[dict]:
    return [r for r in slurm_facts.jobcomp() if r.get("Name", "").startswith(f"{run_name}.")]


def test_real_slurm_trials_have_the_same_means_as_single_mode(slurm, run_root):
    facts, names = slurm
    options = {"n_trials": 3, "n_seeds": 23, "chunk_size": 5, "random_seed": 11}
    remote = distributed(
        losses.quadratic, run_root, unique_run_name(names, "means"), max_concurrent_trials=2, **options
    )
    local = optimize_run(losses.quadratic, run_root=run_root, **options)
    assert [t.params for t in remote.study.trials] == [t.params for t in local.study.trials]
    assert [t.value for t in remote.study.trials] == pytest.approx([t.value for t in local.study.trials], rel=1e-15)
    rows = jobcomp_rows(facts, remote.run_name)
    kinds = [r["Name"].rsplit(".", 1)[1] for r in rows]
    arrays = {r["ArrayJobId"] for r in rows if r["Name"].endswith(".chunks")}
    assert kinds.count("chunks") == 15 and kinds.count("reduce") == len(arrays) < 3  # trials started together share
    assert {r["JobState"] for r in rows if r["Name"].endswith(".chunks")} == {"COMPLETED"}
    # a reduce job still pending when the controller reduced the trial itself is cancelled, not waited for
    assert {r["JobState"] for r in rows if r["Name"].endswith(".reduce")} <= {"COMPLETED", "CANCELLED"}


def test_real_slurm_respects_the_array_throttle(slurm, run_root, seed_counter, monkeypatch):
    facts, names = slurm
    monkeypatch.setenv("SLURPTUNA_TEST_BUSY", "0.3")  # tasks long enough for squeue to see them
    run_name = unique_run_name(names, "throttle")
    seen: list[tuple[int, bool]] = []  # (tasks RUNNING, some task held back by JobArrayTaskLimit) per look
    done = threading.Event()

    def watch_squeue() -> None:
        while not done.is_set():
            shown = subprocess.run(
                ["squeue", "-h", "-n", f"{run_name}.a00001.chunks", "-o", "%i|%T|%r"],
                capture_output=True,
                text=True,
                check=False,
            ).stdout.splitlines()
            running = sum("|RUNNING|" in line for line in shown)
            seen.append((running, any("JobArrayTaskLimit" in line for line in shown)))
            time.sleep(0.05)

    watcher = threading.Thread(target=watch_squeue)
    watcher.start()
    try:
        result = distributed(
            losses.records_busy_intervals,
            run_root,
            run_name,
            n_trials=1,
            n_seeds=8,
            chunk_size=1,
            array_parallelism_limit=2,
        )
    finally:
        done.set()
        watcher.join()
    assert max(running for running, _ in seen) == 2 and any(limited for _, limited in seen)
    intervals = sorted(
        (float(s), float(e))
        for p in seed_counter.directory.glob("busy.*")
        for _, s, e in (line.split() for line in p.read_text().splitlines())
    )
    assert len(intervals) == 8
    assert max(sum(1 for s, e in intervals if s <= start < e) for start, _ in intervals) <= 2
    (array,) = [j for j in read_json(RunPaths(Path(result.run_dir)).trial(0).jobs)["jobs"] if j["kind"] == "tasks"]
    tasks = [r for r in jobcomp_rows(facts, result.run_name) if r.get("ArrayJobId") == array["job_id"]]
    assert sorted(int(r["ArrayTaskId"]) for r in tasks) == list(range(8))


def test_real_slurm_refused_qos_falls_back_with_the_real_error_text(slurm, run_root, caplog):
    facts, names = slurm
    facts.require_accounting()
    with caplog.at_level(logging.WARNING, logger="slurptuna"):
        result = distributed(
            losses.quadratic,
            run_root,
            unique_run_name(names, "badqos"),
            n_trials=1,
            n_seeds=4,
            chunk_size=2,
            slurm_qos="slurptuna_no_such_qos",
        )
    assert result.n_complete == 1
    warnings = [r.getMessage() for r in caplog.records if "--qos=slurptuna_no_such_qos" in r.getMessage()]
    assert len(warnings) == 1 and "Invalid qos specification" in warnings[0]


def test_real_slurm_uses_a_qos_that_exists_as_it_is(slurm, run_root, caplog):
    facts, names = slurm
    facts.add_qos("slurptuna_test", "00:30:00")
    with caplog.at_level(logging.WARNING, logger="slurptuna"):
        result = distributed(
            losses.quadratic,
            run_root,
            unique_run_name(names, "goodqos"),
            n_trials=1,
            n_seeds=4,
            chunk_size=2,
            slurm_qos="slurptuna_test",
            worker_time_limit=timedelta(minutes=20),
        )
    assert result.n_complete == 1 and not [r for r in caplog.records if "qos" in r.getMessage().lower()]
    wait_for(lambda: len(jobcomp_rows(facts, result.run_name)) == 3)
    assert {r["QOS"] for r in jobcomp_rows(facts, result.run_name)} == {"slurptuna_test"}


def test_real_slurm_a_raising_loss_fails_its_trial_and_the_reduce_job_is_cancelled(slurm, run_root):
    facts, names = slurm
    result = distributed(
        losses.raises_at_seed_7, run_root, unique_run_name(names, "raises"), n_trials=1, n_seeds=10, chunk_size=2
    )
    trial = result.study.trials[0]
    assert trial.state.name == "FAIL"
    reason = trial.user_attrs["fail_reason"]
    assert "seed 7" in reason and "RuntimeError: model diverged" in reason
    (reduce,) = [j for j in read_json(RunPaths(Path(result.run_dir)).trial(0).jobs)["jobs"] if j["kind"] == "reduce"]
    wait_for(lambda: any(r["JobId"] == reduce["job_id"] for r in facts.jobcomp()))  # none left pending
    assert [r["JobState"] for r in facts.jobcomp() if r["JobId"] == reduce["job_id"]] in (["CANCELLED"], ["COMPLETED"])
    wait_for(lambda: not run_jobs_in_queue(result.run_name), timeout=30)  # cancelled tasks may be COMPLETING


def test_real_slurm_timeout_is_retried_with_only_the_missing_chunks(slurm, run_root, seed_counter, caplog):
    facts, names = slurm
    with caplog.at_level(logging.WARNING, logger="slurptuna"):
        result = distributed(
            losses.sleeps_at_seed_0,
            run_root,
            unique_run_name(names, "timeout"),
            n_trials=1,
            n_seeds=6,
            chunk_size=2,
            worker_time_limit=timedelta(minutes=1),
            trial_retry_attempts=1,
        )
    trial = result.study.trials[0]
    assert trial.state.name == "COMPLETE" and trial.user_attrs["attempts"] == 2
    assert trial.value == pytest.approx(trial.params["x"] + 2.5)
    retry = [r.getMessage() for r in caplog.records if "retry 1 of 1" in r.getMessage()]
    assert len(retry) == 1 and "starting chunks 0 again" in retry[0] and "TIMEOUT" in retry[0]
    jobs = read_json(RunPaths(Path(result.run_dir)).trial(0).jobs)
    assert [j["chunks"] for j in jobs["jobs"] if j["kind"] == "tasks"] == [[0]]
    assert {seed: n for (_, seed), n in seed_counter.evaluations().items()} == {0: 2, 1: 1, 2: 1, 3: 1, 4: 1, 5: 1}
    states = sorted(r["JobState"] for r in jobcomp_rows(facts, result.run_name) if r.get("ArrayTaskId") == "0")
    assert states == ["COMPLETED", "TIMEOUT"]


CONTROLLER = textwrap.dedent("""
    import json
    import sys
    import losses
    from slurptuna import optimize_run
    result = optimize_run(losses.slow_quadratic, mode="distributed", n_trials=2, n_seeds=12, chunk_size=2,
                          run_root=sys.argv[1], run_name=sys.argv[2], random_seed=3, slurm_poll_seconds=0.3,
                          array_parallelism_limit=2, slurm_qos=None)
    print("VALUES", json.dumps([t.value for t in result.study.trials]))
""")


def _start_controller(tmp_path: Path, run_name: str) -> tuple[subprocess.Popen, Path]:
    runs = tmp_path / "runs"
    return start_controller(tmp_path, CONTROLLER, runs, run_name, SLURPTUNA_TEST_SLEEP="0.1"), runs


def test_real_slurm_ctrl_c_leaves_no_job_of_the_run_in_the_queue(slurm, tmp_path):
    _, names = slurm
    run_name = unique_run_name(names, "ctrlc")
    process, runs = _start_controller(tmp_path, run_name)
    trial0 = RunPaths(runs / run_name).trial(0)
    wait_for(lambda: trial0.chunks_dir.is_dir() and any(trial0.chunks_dir.iterdir()))
    assert run_jobs_in_queue(run_name)
    process.send_signal(signal.SIGINT)
    _, stderr = process.communicate(timeout=60)
    assert process.returncode == 130 and f"Resume with run_name='{run_name}'" in stderr
    wait_for(lambda: not run_jobs_in_queue(run_name), timeout=30)


def test_real_slurm_sigkilled_controller_is_relaunched_and_adopts_its_queued_jobs(slurm, tmp_path, seed_counter):
    facts, names = slurm
    run_name = unique_run_name(names, "adopt")
    process, runs = _start_controller(tmp_path, run_name)
    trial0 = RunPaths(runs / run_name).trial(0)
    wait_for(lambda: trial0.chunks_dir.is_dir() and len(list(trial0.chunks_dir.iterdir())) >= 2)
    process.kill()
    process.wait()
    assert run_jobs_in_queue(run_name)  # still queued or running without a controller
    resumed, _ = _start_controller(tmp_path, run_name)
    stdout, stderr = resumed.communicate(timeout=300)
    assert resumed.returncode == 0, stderr
    values = json.loads(stdout.split("VALUES")[1])
    assert len(values) == 2 and None not in values
    x0 = read_json(trial0.params)["params"]["x"]
    assert values[0] == pytest.approx(math.fsum(losses.quadratic_value({"x": x0}, s) for s in range(12)) / 12)
    assert all(n == 1 for n in seed_counter.evaluations().values())  # no chunk computed twice

    def chunk_rows() -> list[dict]:
        return [r for r in jobcomp_rows(facts, run_name) if r["Name"].endswith(".chunks")]

    wait_for(lambda: len(chunk_rows()) >= 12)
    time.sleep(1)
    assert len(chunk_rows()) == 12  # 2 trials x 6 chunks, each task once: none submitted twice
