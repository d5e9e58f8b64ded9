"""`python -m slurptuna status RUN_DIR`: run as a user would, from another process, while or after a run goes."""

from __future__ import annotations

import json
import re
import signal
import sqlite3
import subprocess
import sys
import textwrap
from pathlib import Path

import losses
import pytest
from conftest import (
    Points,
    as_sqlite,
    assert_one_error_line,
    chunk_records,
    rewrite_chunk_record,
    read_json,
    script_env,
    slurptuna_command,
    start_controller,
    wait_for,
)
from real_slurm import require_real_slurm

import slurptuna
from slurptuna import RunPaths, optimize_entries, optimize_run


def status(*args: str | Path) -> subprocess.CompletedProcess[str]:
    return slurptuna_command("status", *args, timeout=60)


def single_run(loss, run_root: Path, **options):
    return optimize_run(loss, **{"n_trials": 3, "n_seeds": 20, "chunk_size": 5, "run_root": run_root, **options})


# ---------------------------------------------------------------- finished runs


def test_a_finished_single_mode_run_shows_its_counts_and_best_value_without_calling_squeue(run_root, fake_slurm):
    result = single_run(losses.quadratic, run_root)
    done = status(result.run_dir)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0].startswith(f"run {result.run_name} (single mode, loss quadratic)")
    assert "trials: 3 complete, 0 running, 0 failed, 0 pruned of 3" in lines
    best = next(line for line in lines if line.startswith("best: "))
    assert best.startswith(f"best: {result.best_value:.6g} ± ") and f"x={result.best_params['x']:.6g}" in best
    assert "controller: none, the run is finished" in lines
    assert any(line.startswith("compute: ") and "of chunk compute so far, 60 seeds" in line for line in lines)
    assert fake_slurm.calls("squeue") == []


@pytest.mark.compat
def test_json_status_parses_back_with_the_runs_numbers(run_root):
    result = single_run(losses.quadratic, run_root)
    done = status(result.run_dir, "--json")
    assert done.returncode == 0, done.stderr
    shown = json.loads(done.stdout)
    assert shown["kind"] == "run" and shown["run_name"] == result.run_name
    assert (shown["n_complete"], shown["n_running"], shown["n_failed"], shown["n_pruned"]) == (3, 0, 0, 0)
    assert shown["best_value"] == result.best_value and shown["best_params"] == result.best_params
    summary = read_json(RunPaths(Path(result.run_dir)).trial(shown["best_trial"]).summary)
    assert shown["best_standard_error"] == pytest.approx(summary["std"] / summary["n_seeds"] ** 0.5, rel=1e-12)
    assert shown["seeds_done"] == 60 and shown["core_hours"] > 0
    assert shown["trials_left"] == 0 and shown["needs_resume"] is False and shown["controller_holds_run"] is False


def test_failed_trials_show_the_first_line_of_their_reason_and_their_log(run_root):
    result = single_run(losses.raises_at_seed_7, run_root, n_trials=2)
    done = status(result.run_dir)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert "trials: 0 complete, 0 running, 2 failed, 0 pruned of 2" in lines
    assert "best: -" in lines
    failed = lines[lines.index("failed trials:") + 1 :]
    x = [t.params["x"] for t in result.study.trials]
    for number in (0, 1):
        reason = failed[2 * number]
        assert reason.startswith(f"  trial {number}: loss 'raises_at_seed_7' failed at seed 7 (chunk 1)")
        assert reason.endswith("RuntimeError: model diverged")
        log = failed[2 * number + 1].removeprefix("    log: ")
        assert Path(log).is_file() and f"chunk 1) with params {{'x': {x[number]!r}}}" in Path(log).read_text()


def test_an_entries_directory_shows_one_line_per_entry(run_root):
    result = optimize_entries(
        losses.quadratic, entry_ids=["p1", "p2"], n_trials=2, n_seeds=10, chunk_size=5, run_root=run_root
    )
    done = status(result.run_dir)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0] == f"entries of {result.run_dir}:" and len(lines) == 3
    for line, entry in zip(lines[1:], ["p1", "p2"], strict=True):
        best = result.best_values_by_entry[entry]
        assert line.startswith(f"  {entry}  finished: 2/2 complete, 0 running, 0 failed, 0 pruned; best {best:.6g} ± ")


def test_chunks_computed_by_other_loss_code_are_not_counted_and_not_warned_of(run_root):
    result = single_run(losses.quadratic, run_root)
    trial = RunPaths(Path(result.run_dir)).trial(0)
    record = chunk_records(trial)[1]
    rewrite_chunk_record(trial, 1, code_id="another loss")  # as the controller would, it is skipped
    RunPaths(Path(result.run_dir)).trials_index.unlink()  # status reads every record (a run begun without it)
    done = status(result.run_dir, "--json")
    assert done.returncode == 0 and done.stderr == ""
    assert json.loads(done.stdout)["seeds_done"] == 60 - record["stats"]["count"]


# ---------------------------------------------------------------- live and interrupted runs

CONTROLLER = textwrap.dedent("""
    import sys
    import losses
    from slurptuna import optimize_run
    optimize_run(losses.slow_quadratic, mode=sys.argv[2], n_trials=1, n_seeds=8, chunk_size=2, run_root=sys.argv[1],
                 run_name="live", slurm_poll_seconds=0.2, array_parallelism_limit=1)
""")


def start_live_run(tmp_path: Path, mode: str, sleep: str) -> tuple[subprocess.Popen, RunPaths]:
    runs = tmp_path / "runs"
    return start_controller(tmp_path, CONTROLLER, runs, mode, SLURPTUNA_TEST_SLEEP=sleep), RunPaths(runs / "live")


def test_a_live_distributed_run_shows_its_jobs_states_and_pending_reasons_from_one_squeue_call(fake_slurm, tmp_path):
    process, run = start_live_run(tmp_path, "distributed", sleep="1.0")  # chunks of 2 s, one at a time
    try:
        wait_for(lambda: len((read_json(run.trial(0).jobs) if run.trial(0).jobs.exists() else {}).get("jobs", [])) == 2)
        array, reduce = (job["job_id"] for job in read_json(run.trial(0).jobs)["jobs"])
        done = status(run.dir)
        ours = [c for c in fake_slurm.calls("squeue") if "%i|%T|%r" in c["argv"]]
    finally:
        process.send_signal(signal.SIGINT)
        process.communicate(timeout=60)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert "trials: 0 complete, 1 running, 0 failed, 0 pruned of 1" in lines
    assert f"controller: running (pid {process.pid})" in lines
    assert re.match(r"  trial 0: chunks [0-3]/4, ", lines[lines.index("running trials:") + 1])  # a chunk may be done
    array_line = next(line for line in lines if line.startswith(f"    array job {array} (chunks 0-3): "))
    assert "PENDING (JobArrayTaskLimit)" in array_line
    assert f"    reduce job {reduce}: PENDING (Dependency)" in lines
    assert len(ours) == 1 and ours[0]["argv"][ours[0]["argv"].index("-j") + 1] == f"{array},{reduce}"


def test_on_the_real_slurm_status_shows_queued_jobs_with_their_states_and_pending_reasons(tmp_path):
    require_real_slurm()
    process, run = start_live_run(tmp_path, "distributed", sleep="1.0")  # chunks of 2 s, one at a time
    try:
        wait_for(lambda: len((read_json(run.trial(0).jobs) if run.trial(0).jobs.exists() else {}).get("jobs", [])) == 2)
        array, reduce = (job["job_id"] for job in read_json(run.trial(0).jobs)["jobs"])

        def throttled() -> subprocess.CompletedProcess | None:
            shown = status(run.dir)
            return shown if "PENDING (JobArrayTaskLimit)" in shown.stdout else None

        done = wait_for(throttled, timeout=30)  # Slurm gives the reason once it has looked at the array
    finally:
        process.send_signal(signal.SIGINT)
        process.communicate(timeout=60)
    lines = done.stdout.splitlines()
    assert "trials: 0 complete, 1 running, 0 failed, 0 pruned of 1" in lines
    array_line = next(line for line in lines if line.startswith(f"    array job {array} (chunks 0-3): "))
    assert "PENDING (JobArrayTaskLimit)" in array_line
    assert f"    reduce job {reduce}: PENDING (Dependency)" in lines


def test_a_failing_squeue_is_one_note_and_the_rest_is_shown(fake_slurm, tmp_path, monkeypatch):
    process, run = start_live_run(tmp_path, "distributed", sleep="1.0")
    try:
        wait_for(lambda: run.trial(0).jobs.exists())
        monkeypatch.setenv("FAKE_SLURM_SQUEUE_FAIL", "1000")
        done = status(run.dir)
    finally:
        process.send_signal(signal.SIGINT)
        process.communicate(timeout=60)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert "trials: 0 complete, 1 running, 0 failed, 0 pruned of 1" in lines
    notes = [line for line in lines if line.startswith("note: ")]
    assert len(notes) == 1 and "Socket timed out" in notes[0] and "Slurm's queue is not shown" in notes[0]


def test_an_interrupted_run_says_to_resume_with_its_run_name(tmp_path):
    process, run = start_live_run(tmp_path, "single", sleep="0.2")
    wait_for(lambda: chunk_records(run.trial(0)))
    process.send_signal(signal.SIGINT)
    process.communicate(timeout=60)
    assert process.returncode == 130
    done = status(run.dir)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert f"controller: none; 1 trial(s) left: resume with run_name='live' (run_root='{run.dir.parent}')" in lines
    assert "interrupted trials (no controller):" in lines


# ---------------------------------------------------------------- --watch


def test_watch_redraws_until_ctrl_c_and_exits_0(run_root, tmp_path):
    result = single_run(losses.quadratic, run_root, n_trials=1)
    shown = tmp_path / "watch.out"
    with open(shown, "w") as out:
        watch = subprocess.Popen(
            [sys.executable, "-m", "slurptuna", "status", result.run_dir, "--watch", "0.1"],
            env=script_env(),
            stdout=out,
            stderr=subprocess.PIPE,
            text=True,
        )
        wait_for(lambda: shown.read_text().count("trials: 1 complete") >= 2)
        watch.send_signal(signal.SIGINT)
        _, stderr = watch.communicate(timeout=30)
    assert watch.returncode == 0 and "Traceback" not in stderr


# ---------------------------------------------------------------- errors: one line, exit code 2


def test_a_directory_that_is_not_a_run_is_one_line_and_exit_code_2(tmp_path):
    assert_one_error_line(status(tmp_path), "status", "is not a slurptuna run", "no meta.json")
    assert_one_error_line(status(tmp_path / "nowhere"), "status", "is not a directory")


def test_a_meta_json_of_an_unknown_format_is_one_line_and_exit_code_2(tmp_path):
    (tmp_path / "meta.json").write_text(json.dumps({"format": 99, "slurptuna_version": "9.0"}))
    assert_one_error_line(status(tmp_path), "status", "meta.json has a format", "slurptuna 9.0")


def test_an_older_runs_optuna_db_that_stays_locked_is_one_line_and_exit_code_2(run_root):
    result = single_run(losses.quadratic, run_root, n_trials=1)
    as_sqlite(RunPaths(Path(result.run_dir)))  # a run made before optuna.journal keeps its optuna.db
    writer = sqlite3.connect(RunPaths(Path(result.run_dir)).optuna_db, isolation_level=None)
    writer.execute("BEGIN EXCLUSIVE")  # as a controller's commit does, but for longer than status waits
    try:
        assert_one_error_line(status(result.run_dir), "status", "optuna.db stayed locked")
    finally:
        writer.execute("ROLLBACK")
        writer.close()


# ---------------------------------------------------------------- the pieces, with recorded texts


def test_squeue_rows_count_the_array_tasks_squeue_collapses():
    shown = (
        "1012_[2-5%1]|PENDING|JobArrayTaskLimit\n1012_1|RUNNING|None\n1012_0|COMPLETED|None\n1013|PENDING|Dependency\n"
    )
    Line = slurptuna._QueueLine
    assert slurptuna._parse_squeue(shown) == {
        "1012": [
            Line("PENDING", "JobArrayTaskLimit", (2, 3, 4, 5)),
            Line("RUNNING", "None", (1,)),
            Line("COMPLETED", "None", (0,)),
        ],
        "1013": [Line("PENDING", "Dependency", (None,))],
    }
    assert len(slurptuna._array_task_ids("[0-9:2,12%4]")) == 6


def test_the_standard_error_is_the_recorded_one_and_std_over_root_n_only_for_older_records():
    summary = {"n_seeds": 4, "std": 2.0, "standard_error": 0.9}
    assert slurptuna._standard_error_of(summary, {"standard_error": 0.5}) == 0.9
    assert slurptuna._standard_error_of({"n_seeds": 4, "std": 2.0}) == 1.0  # a run from before it was kept
    assert slurptuna._standard_error_of(None, {"standard_error": 0.5}) == 0.5  # no summary.json: Optuna's
    assert slurptuna._standard_error_of({}, {"std": 1.0}) is None


def test_the_pace_counts_pauses_up_to_the_gap_and_not_longer_ones():
    intervals = [(0.0, 10.0), (5.0, 20.0), (25.0, 30.0), (1000.0, 1010.0)]
    assert slurptuna._active_seconds(intervals, now=None, max_gap=10) == 30 + 10
    assert slurptuna._active_seconds(intervals, now=1015.0, max_gap=10) == 30 + 15
    assert slurptuna._active_seconds([], now=5.0, max_gap=10) == 0


# ---------------------------------------------------------------- trials.jsonl: what status reads at 10,000 trials


def status_json(run_dir) -> dict:
    shown = slurptuna.read_status(Path(run_dir), now=2e9).to_json()
    return {k: v for k, v in shown.items() if k != "checked_at"}


def test_status_from_the_trials_index_shows_what_replaying_the_study_and_every_record_shows(run_root):
    result = single_run(losses.nan_when_x_high, run_root, n_trials=4, sampler=Points([0.2, 0.9, 0.5, 0.1]))
    run = RunPaths(Path(result.run_dir))
    assert sorted(json.loads(line)["number"] for line in run.trials_index.read_text().splitlines()) == [0, 1, 2, 3]
    from_index = status_json(run.dir)
    run.trials_index.unlink()
    replayed = status_json(run.dir)
    assert (replayed["n_complete"], replayed["n_failed"]) == (3, 1)
    assert replayed["seeds_done"] == 60 and "returned nan" in replayed["failed"][0]["reason"]
    sums = ("core_hours", "seeds_per_second", "hours_left", "core_hours_left")  # summed in another order
    assert {k: from_index.pop(k) for k in sums} == pytest.approx({k: replayed.pop(k) for k in sums}, rel=1e-9)
    assert from_index == replayed


def test_a_trial_told_to_optuna_but_left_out_of_the_index_is_added_on_resume_and_a_cut_line_ignored(run_root):
    result = single_run(losses.quadratic, run_root, n_trials=2, run_name="cut")
    run = RunPaths(Path(result.run_dir))
    first = run.trials_index.read_text().splitlines()[0]
    run.trials_index.write_text(first + '\n{"number": 1, "state": "COMP')  # killed mid-append of trial 1
    assert status_json(run.dir)["n_complete"] == 1  # the cut line is no trial
    single_run(losses.quadratic, run_root, n_trials=3, run_name="cut")
    numbers = [json.loads(line)["number"] for line in run.trials_index.read_text().splitlines()]
    assert sorted(numbers) == [0, 1, 2]
    shown = status_json(run.dir)
    assert (shown["n_complete"], shown["n_running"], shown["seeds_done"]) == (3, 0, 60)


def test_a_cut_first_line_of_the_index_is_dropped_before_the_next_append(run_root):
    result = single_run(losses.quadratic, run_root, n_trials=1, run_name="cut_first")
    run = RunPaths(Path(result.run_dir))
    run.trials_index.write_text('{"number": 0, "state": "COMP')  # killed mid-append of the run's first trial
    single_run(losses.quadratic, run_root, n_trials=2, run_name="cut_first")
    numbers = [json.loads(line)["number"] for line in run.trials_index.read_text().splitlines()]
    assert sorted(numbers) == [0, 1]  # trial 0 again from the study, whole, and no line glued to the cut one


def test_a_run_begun_without_the_index_keeps_reading_its_study_after_a_resume(run_root):
    result = single_run(losses.quadratic, run_root, n_trials=2, run_name="old")
    run = RunPaths(Path(result.run_dir))
    run.trials_index.unlink()  # as a run made before trials.jsonl
    single_run(losses.quadratic, run_root, n_trials=3, run_name="old")
    assert not run.trials_index.exists()
    shown = status_json(run.dir)
    assert (shown["n_complete"], shown["seeds_done"], shown["trials_left"]) == (3, 60, 0)
