"""Distributed mode through fake_slurm/: the real sbatch/squeue/scancel/sacct calls, faults injected."""

from __future__ import annotations

import json
import logging
import math
import os
import signal
import subprocess
import sys
import textwrap
from collections import Counter
from datetime import timedelta
from pathlib import Path

import losses
import pytest
from conftest import REPO, read_json, start_controller, wait_for

from slurptuna import RunPaths, SlurmError, _task_of_spec, optimize_run


def distributed(definition, run_root, **options):
    options = {"mode": "distributed", "slurm_poll_seconds": 0.2, "run_root": run_root, **options}
    return optimize_run(definition, **options)


def chunk_submissions(fake_slurm) -> list[dict]:
    return [s for s in fake_slurm.submissions() if s.get("job_id") and s["array_tasks"] is not None]


def reduce_submissions(fake_slurm) -> list[dict]:
    return [s for s in fake_slurm.submissions() if s.get("job_id") and s["array_tasks"] is None]


def chunks_of(submission: dict) -> list[tuple[int, int]]:
    """The (trial, chunk) that an array's tasks run, read from its worker command's --tasks."""
    spec = submission["argv"][submission["argv"].index("--tasks") + 1]
    return [_task_of_spec(spec, task) for task in submission["array_tasks"]]


def submitted_chunks(fake_slurm) -> Counter:
    return Counter(pair for array in chunk_submissions(fake_slurm) for pair in chunks_of(array))


def queue_is_empty() -> bool:
    shown = subprocess.run(["squeue", "-h", "-o", "%i|%T"], capture_output=True, text=True, check=True)
    return shown.stdout.strip() == ""


@pytest.mark.compat
def test_distributed_trials_have_the_same_means_as_single_mode(fake_slurm, run_root):
    options = {"n_trials": 3, "n_seeds": 23, "chunk_size": 5, "random_seed": 4, "run_root": run_root}
    remote = optimize_run(
        losses.quadratic, mode="distributed", slurm_poll_seconds=0.2, max_concurrent_trials=2, **options
    )
    local = optimize_run(losses.quadratic, **options)
    assert [t.params for t in remote.study.trials] == [t.params for t in local.study.trials]
    assert [t.value for t in remote.study.trials] == pytest.approx([t.value for t in local.study.trials], rel=1e-15)
    for trial in remote.study.trials:
        direct = math.fsum(losses.quadratic_value(trial.params, s) for s in range(23)) / 23
        assert trial.value == pytest.approx(direct, rel=1e-13)
    assert submitted_chunks(fake_slurm) == Counter((t, c) for t in range(3) for c in range(5))  # each once
    arrays, reduces = chunk_submissions(fake_slurm), reduce_submissions(fake_slurm)
    assert len(arrays) == len(reduces) < 3  # the two trials started together share one array and its reduce job


def test_sbatch_gets_the_documented_options_and_the_reduce_runs_after_the_array(fake_slurm, run_root):
    result = distributed(
        losses.quadratic,
        run_root,
        n_trials=1,
        n_seeds=10,
        chunk_size=3,
        cpus_per_task=2,
        worker_parallelism=2,
        worker_time_limit=timedelta(minutes=90),
        mem_per_cpu="3G",
        slurm_qos="long",
        slurm_partition="debug",
        slurm_account="lab",
        sbatch_args=["--constraint=avx2"],
        array_parallelism_limit=3,
    )
    (chunks,), (reduce,) = chunk_submissions(fake_slurm), reduce_submissions(fake_slurm)
    for expected in (
        "--array=0-3%3",
        "--cpus-per-task=2",
        "--time=0-01:30:00",
        "--mem-per-cpu=3G",
        "--qos=long",
        "--partition=debug",
        "--account=lab",
        "--constraint=avx2",
        "--job-name=quadratic_v0001.a00001.chunks",
    ):
        assert expected in chunks["argv"]
    run = RunPaths(Path(result.run_dir))
    logs = run.array_logs(1)
    assert f"--output={logs}/task_%a.log" in chunks["argv"]  # stdout and stderr in one file per task
    assert f"--dependency=afterany:{chunks['job_id']}" in reduce["argv"]
    assert f"--output={logs}/reduce_%j.log" in reduce["argv"]
    worker = chunks["argv"][chunks["argv"].index("-m") - 1 :]
    relative = str(logs.relative_to(run.dir))
    assert worker[1:] == ["-m", "slurptuna", "worker", "chunk", result.run_dir, "--tasks", "0:0-3", "--logs", relative]
    assert reduce["argv"][-2:] == ["--trials", "0"]
    trial = run.trial(0)
    assert read_json(trial.summary)["n_chunks"] == 4
    merged = [json.loads(line) for line in trial.merged_chunks.read_text().splitlines()]
    assert [r["chunk_index"] for r in merged] == [0, 1, 2, 3] and not trial.chunks_dir.exists()
    assert not list(logs.glob("task_*.log"))  # the tasks succeeded with empty logs: dropped


def test_the_array_throttle_is_respected(fake_slurm, run_root, seed_counter):
    distributed(
        losses.records_busy_intervals, run_root, n_trials=1, n_seeds=12, chunk_size=1, array_parallelism_limit=2
    )
    intervals = sorted(
        (float(s), float(e))
        for p in seed_counter.directory.glob("busy.*")
        for _, s, e in (line.split() for line in p.read_text().splitlines())
    )
    assert len(intervals) == 12
    overlaps = [sum(1 for s, e in intervals if s <= start < e) for start, _ in intervals]
    assert max(overlaps) <= 2


def test_arrays_longer_than_max_array_size_are_split_each_with_its_reduce_job(fake_slurm, run_root, monkeypatch):
    monkeypatch.setenv("FAKE_SLURM_MAX_ARRAY_SIZE", "4")
    result = distributed(losses.quadratic, run_root, n_trials=1, n_seeds=10, chunk_size=1)
    arrays = chunk_submissions(fake_slurm)
    assert [a["array_tasks"] for a in arrays] == [[0, 1, 2, 3], [0, 1, 2, 3], [0, 1]]
    assert [o for a in arrays for o in a["argv"] if o.startswith("--array")] == ["--array=0-3"] * 2 + ["--array=0-1"]
    assert [chunks_of(a) for a in arrays] == [
        [(0, c) for c in range(4)],
        [(0, c) for c in range(4, 8)],
        [(0, 8), (0, 9)],
    ]
    reduces = reduce_submissions(fake_slurm)
    after = [f"--dependency=afterany:{a['job_id']}" in r["argv"] for r, a in zip(reduces, arrays, strict=True)]
    assert after == [True, True, True]
    trial = result.study.trials[0]
    assert trial.value == pytest.approx(sum(losses.quadratic_value(trial.params, s) for s in range(10)) / 10)


def test_a_refused_qos_is_dropped_once_with_a_warning(fake_slurm, run_root, monkeypatch, caplog):
    monkeypatch.setenv("FAKE_SLURM_REJECT_QOS", "short")
    with caplog.at_level(logging.WARNING, logger="slurptuna"):
        result = distributed(losses.quadratic, run_root, n_trials=2, n_seeds=4, chunk_size=2)
    assert result.n_complete == 2
    warnings = [r.getMessage() for r in caplog.records if "--qos=short" in r.getMessage()]
    assert len(warnings) == 1 and "Invalid qos specification" in warnings[0]
    submitted = fake_slurm.submissions()
    assert [bool(s.get("rejected")) for s in submitted] == [True, False, False, False, False]
    assert len(submitted[1:]) == 4 and not any(a.startswith("--qos") for s in submitted[1:] for a in s["argv"])


def test_no_qos_option_when_slurm_qos_is_none(fake_slurm, run_root):
    distributed(losses.quadratic, run_root, n_trials=1, n_seeds=2, chunk_size=2, slurm_qos=None)
    assert len(fake_slurm.submissions()) == 2
    assert not any(a.startswith("--qos") for s in fake_slurm.submissions() for a in s["argv"])


def test_other_sbatch_errors_are_reported_with_sbatchs_message_and_not_retried(fake_slurm, run_root, monkeypatch):
    monkeypatch.setenv("FAKE_SLURM_SBATCH_FAIL", "Invalid partition name specified")
    with pytest.raises(SlurmError, match="Invalid partition name specified"):
        distributed(losses.quadratic, run_root, n_trials=1, n_seeds=2, chunk_size=2)
    assert len(fake_slurm.submissions()) == 1


def test_a_timeout_is_retried_submitting_only_the_missing_chunks(fake_slurm, run_root, monkeypatch):
    monkeypatch.setenv("FAKE_SLURM_TIMEOUT_TASKS", "2")
    # 1 minute lasts 4.8 s: long enough for a worker on a loaded machine, short for a test
    monkeypatch.setenv("FAKE_SLURM_TIME_SCALE", "0.08")
    result = distributed(
        losses.quadratic,
        run_root,
        n_trials=1,
        n_seeds=8,
        chunk_size=2,
        worker_time_limit=timedelta(minutes=1),
        trial_retry_attempts=1,
    )
    trial = result.study.trials[0]
    assert trial.state.name == "COMPLETE" and trial.user_attrs["attempts"] == 2
    assert [chunks_of(a) for a in chunk_submissions(fake_slurm)] == [[(0, 0), (0, 1), (0, 2), (0, 3)], [(0, 2)]]
    assert len(reduce_submissions(fake_slurm)) == 2
    assert trial.value == pytest.approx(sum(losses.quadratic_value(trial.params, s) for s in range(8)) / 8)


def test_timeouts_beyond_the_retries_fail_the_trial_saying_timeout(fake_slurm, run_root, monkeypatch):
    monkeypatch.setenv("FAKE_SLURM_TIMEOUT_TASKS", "0,1")  # task ids: every chunk, in each attempt
    monkeypatch.setenv("FAKE_SLURM_FAULTS_REPEAT", "1")
    monkeypatch.setenv("FAKE_SLURM_TIME_SCALE", "0.08")
    result = distributed(
        losses.quadratic,
        run_root,
        n_trials=1,
        n_seeds=4,
        chunk_size=2,
        worker_time_limit=timedelta(minutes=1),
        trial_retry_attempts=1,
    )
    trial = result.study.trials[0]
    assert trial.state.name == "FAIL"
    reason = trial.user_attrs["fail_reason"]
    assert "after 2 attempt(s)" in reason and "chunks 0-1: TIMEOUT" in reason and "DUE TO TIME LIMIT" in reason
    assert [chunks_of(a) for a in chunk_submissions(fake_slurm)] == [[(0, 0), (0, 1)], [(0, 0), (0, 1)]]
    assert queue_is_empty()


def test_an_attempt_over_slurm_timeout_minutes_is_cancelled_and_retried(fake_slurm, run_root, seed_counter):
    result = distributed(
        losses.sleeps_at_seed_0,
        run_root,
        n_trials=1,
        n_seeds=4,
        chunk_size=2,
        slurm_timeout_minutes=0.1,
        trial_retry_attempts=1,
    )
    trial = result.study.trials[0]
    assert trial.state.name == "COMPLETE" and trial.user_attrs["attempts"] == 2
    assert [chunks_of(a) for a in chunk_submissions(fake_slurm)] == [[(0, 0), (0, 1)], [(0, 0)]]
    overdue, *later = [set(c["argv"]) for c in fake_slurm.calls("scancel")]
    array, reduce = (str(s["job_id"]) for s in fake_slurm.submissions()[:2])
    assert overdue in ({f"{array}_[0-1]", reduce}, {f"{array}_[0]", reduce})  # its tasks still queued, its reduce
    reduce_jobs = {str(s["job_id"]) for s in reduce_submissions(fake_slurm)}
    assert all(ids <= reduce_jobs for ids in later)  # then at most the retry's reduce job, no longer needed


def test_a_task_killed_by_slurm_is_judged_from_the_logs_when_sacct_does_not_work(fake_slurm, run_root, monkeypatch):
    monkeypatch.setenv("FAKE_SLURM_FAIL_TASKS", "0")
    monkeypatch.setenv("FAKE_SLURM_FAULTS_REPEAT", "1")
    monkeypatch.setenv("FAKE_SLURM_NO_ACCOUNTING", "1")
    result = distributed(losses.quadratic, run_root, n_trials=1, n_seeds=4, chunk_size=2, trial_retry_attempts=0)
    reason = result.study.trials[0].user_attrs["fail_reason"]
    assert "chunks 0: ended without a result" in reason and "fake_slurm: injected failure" in reason
    assert queue_is_empty()  # the reduce job that could never run was cancelled


@pytest.mark.compat
def test_a_loss_that_raises_fails_its_trial_with_the_traceback_and_cancels_the_rest(fake_slurm, run_root):
    result = distributed(losses.raises_at_seed_7, run_root, n_trials=2, n_seeds=10, chunk_size=2)
    assert [t.state.name for t in result.study.trials] == ["FAIL", "FAIL"]
    reason = result.study.trials[0].user_attrs["fail_reason"]
    assert "seed 7" in reason and "RuntimeError: model diverged" in reason and "Traceback" in reason
    assert "/slurm_logs/arrays_00000-00999/array_00001/task_" in reason
    assert len(chunk_submissions(fake_slurm)) == 2  # not retried
    assert queue_is_empty()


def test_transient_squeue_failures_are_retried_and_logged_once_per_outage(fake_slurm, run_root, monkeypatch, caplog):
    monkeypatch.setenv("FAKE_SLURM_SQUEUE_FAIL", "3")
    with caplog.at_level(logging.WARNING, logger="slurptuna"):
        result = distributed(losses.quadratic, run_root, n_trials=1, n_seeds=4, chunk_size=2)
    assert result.n_complete == 1
    assert len(fake_slurm.calls("squeue")) >= 4  # three failed, then answers
    messages = [r.getMessage() for r in caplog.records]
    assert sum("Slurm does not answer squeue" in m for m in messages) == 1
    assert sum("Slurm answers again" in m for m in messages) == 1


def test_one_squeue_call_covers_every_trial_in_flight(fake_slurm, run_root):
    monkeypatch_sleep = {"SLURPTUNA_TEST_SLEEP": "0.05"}
    os.environ.update(monkeypatch_sleep)
    try:
        distributed(losses.slow_quadratic, run_root, n_trials=3, n_seeds=4, chunk_size=2, max_concurrent_trials=3)
    finally:
        del os.environ["SLURPTUNA_TEST_SLEEP"]
    polls = [c["argv"] for c in fake_slurm.calls("squeue")]
    assert polls and all(argv == ["-h", "--me", "-o", "%i|%T"] for argv in polls)  # the user's whole queue, at once
    assert submitted_chunks(fake_slurm) == Counter((t, c) for t in range(3) for c in range(2))


CONTROLLER = textwrap.dedent("""
    import json
    import sys
    import losses
    from slurptuna import optimize_run
    result = optimize_run(losses.slow_quadratic, mode="distributed", n_trials=2, n_seeds=12, chunk_size=2,
                          run_root=sys.argv[1], run_name="cluster", random_seed=3, slurm_poll_seconds=0.2,
                          array_parallelism_limit=2)
    print("VALUES", json.dumps([t.value for t in result.study.trials]))
""")


def _start_controller(tmp_path: Path, runs_dir: str = "runs", **env: str) -> tuple[subprocess.Popen, Path]:
    runs = tmp_path / runs_dir
    return start_controller(tmp_path, CONTROLLER, runs, **{"SLURPTUNA_TEST_SLEEP": "0.05", **env}), runs


def test_ctrl_c_cancels_every_job_of_the_run_in_one_scancel(fake_slurm, tmp_path):
    process, runs = _start_controller(tmp_path)
    trial0 = RunPaths(runs / "cluster").trial(0)
    wait_for(lambda: trial0.chunks_dir.is_dir() and any(trial0.chunks_dir.iterdir()))
    process.send_signal(signal.SIGINT)
    _, stderr = process.communicate(timeout=60)
    assert process.returncode == 130
    assert stderr.strip().splitlines()[-1].startswith("slurptuna: interrupted by signal 2; cancelled 2 job(s)")
    assert "Resume with run_name='cluster'" in stderr
    assert len(fake_slurm.calls("scancel")) == 1
    wait_for(queue_is_empty, timeout=10)


def test_a_sigkilled_controller_resumes_adopting_queued_jobs_without_submitting_twice(
    fake_slurm, tmp_path, seed_counter
):
    process, runs = _start_controller(tmp_path)
    trial0 = RunPaths(runs / "cluster").trial(0)
    wait_for(lambda: trial0.chunks_dir.is_dir() and len(list(trial0.chunks_dir.iterdir())) >= 2)
    process.kill()
    process.wait()
    assert not queue_is_empty()  # the array job goes on without its controller
    resumed, _ = _start_controller(tmp_path)
    stdout, stderr = resumed.communicate(timeout=120)
    assert resumed.returncode == 0, stderr
    values = json.loads(stdout.split("VALUES")[1])
    assert len(values) == 2 and None not in values
    assert submitted_chunks(fake_slurm) == Counter((t, c) for t in range(2) for c in range(6))  # each once
    assert len(reduce_submissions(fake_slurm)) == len(chunk_submissions(fake_slurm))
    assert all(n == 1 for n in seed_counter.evaluations().values())  # no chunk computed twice
    x0 = read_json(trial0.params)["params"]["x"]
    assert values[0] == pytest.approx(sum(losses.quadratic_value({"x": x0}, s) for s in range(12)) / 12)
    reference, _ = _start_controller(tmp_path, runs_dir="uninterrupted")
    stdout, stderr = reference.communicate(timeout=120)
    assert reference.returncode == 0, stderr
    assert json.loads(stdout.split("VALUES")[1])[0] == values[0]  # the interrupted trial's result is unchanged


def test_a_job_queued_while_the_controller_died_in_sbatch_is_cancelled_on_resume(fake_slurm, tmp_path, caplog):
    process, runs = _start_controller(
        tmp_path, FAKE_SLURM_SBATCH_HANG="60", FAKE_SLURM_SBATCH_HANG_CALLS="1", SLURPTUNA_TEST_SLEEP="1.0"
    )  # the stray job is still queued at resume
    wait_for(lambda: len(fake_slurm.submissions()) == 1)  # queued, but sbatch has not answered yet
    process.kill()
    process.wait()
    stray = str(fake_slurm.submissions()[0]["job_id"])
    assert not RunPaths(runs / "cluster").trial(0).jobs.exists()
    resumed, _ = _start_controller(tmp_path)
    stdout, stderr = resumed.communicate(timeout=120)
    assert resumed.returncode == 0, stderr
    assert f"cancelling job(s) {stray} of this run that a crash left out of jobs.json" in stderr
    cancelled = [c["argv"][-1] for c in fake_slurm.calls("scancel")]
    assert cancelled[0] == stray  # then only reduce jobs, left pending when the controller reduced first
    assert set(cancelled[1:]) <= {str(s["job_id"]) for s in reduce_submissions(fake_slurm)}
    assert len(json.loads(stdout.split("VALUES")[1])) == 2
    wait_for(queue_is_empty, timeout=10)


def test_dynamic_loss_names_from_argv_work_in_slurm_workers(fake_slurm, tmp_path):
    script = tmp_path / "fit.py"
    script.write_text(
        textwrap.dedent("""
        import sys
        from slurptuna import execution_mode, loss, optimize_run
        TASK = sys.argv[1]
        TARGET = {"easy": 0.25, "hard": 0.75}[TASK]

        @loss(name=f"argv_model_{TASK}", parameter_space={"x": (0.0, 1.0)})
        def model(params, seed):
            return abs(params["x"] - TARGET)

        if __name__ == "__main__":
            result = optimize_run(model, mode=execution_mode("distributed"), n_trials=2, n_seeds=4, chunk_size=2,
                                  run_root=sys.argv[2], slurm_poll_seconds=0.2)
            print("RESULT", result.run_name, result.n_complete, result.best_value, result.best_params["x"])
    """)
    )
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    for task, target in (("hard", 0.75), ("easy", 0.25)):
        done = subprocess.run(
            [sys.executable, str(script), task, str(tmp_path / "runs")],
            capture_output=True,
            text=True,
            env=env,
            timeout=120,
            check=False,
        )
        assert done.returncode == 0, done.stderr
        name, complete, best, x = done.stdout.split("RESULT")[1].split()
        assert (name, complete) == (f"argv_model_{task}_v0001", "2")
        assert float(best) == pytest.approx(abs(float(x) - target))
