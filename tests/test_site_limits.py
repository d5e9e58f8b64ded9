"""Inside a site's limits: arrays of several trials, the user's queued tasks under MaxSubmitJobs, paced calls."""

from __future__ import annotations

import itertools
import subprocess
import threading
from collections import Counter
from types import SimpleNamespace

import losses
import pytest

import slurptuna
from slurptuna import _CallBudget, _parse_active_tasks, _task_of_spec, _tasks_spec, optimize_run


def distributed(run_root, **options):
    options = {"mode": "distributed", "slurm_poll_seconds": 0.2, "run_root": run_root, **options}
    return optimize_run(losses.quadratic, **options)


def test_the_users_queued_tasks_stay_under_max_submit_jobs_and_nothing_is_refused(fake_slurm, run_root, monkeypatch):
    monkeypatch.setenv("FAKE_SLURM_MAX_SUBMIT_JOBS", "10")  # the association's limit, as sacctmgr shows it
    result = distributed(run_root, n_trials=3, max_concurrent_trials=3, n_seeds=24, chunk_size=2)
    assert [t.state.name for t in result.study.trials] == ["COMPLETE"] * 3
    for trial in result.study.trials:
        direct = [losses.quadratic_value(trial.params, s) for s in range(24)]
        assert trial.value == pytest.approx(sum(direct) / 24)
    submitted = fake_slurm.submissions()
    assert not [s for s in submitted if s.get("rejected")]  # 36 tasks wanted, never more than 10 queued asked for
    arrays = [s for s in submitted if s.get("array_tasks")]
    assert len(arrays) >= 4 and max(len(a["array_tasks"]) for a in arrays) <= 9  # 9 tasks + the reduce job
    assert [c["argv"][2] for c in fake_slurm.calls("sacctmgr")] == ["show", "show"]  # limits read once


def test_a_limit_the_run_cannot_read_holds_work_back_once_sbatch_refuses(fake_slurm, run_root, monkeypatch, caplog):
    monkeypatch.setenv("FAKE_SLURM_MAX_SUBMIT_JOBS", "6")
    monkeypatch.setenv("FAKE_SLURM_NO_ACCOUNTING", "1")  # sacctmgr does not answer: the limit is unknown
    result = distributed(run_root, n_trials=3, max_concurrent_trials=3, n_seeds=8, chunk_size=2)
    assert [t.state.name for t in result.study.trials] == ["COMPLETE"] * 3
    refused = [s for s in fake_slurm.submissions() if s.get("rejected")]
    assert refused  # the first array of 12 tasks was refused, then the work went out as room came
    assert sum(c for t in result.study.trials for c in [t.user_attrs["n_seeds"]]) == 24


def paced_executor(tmp_path, **options) -> SimpleNamespace:
    """A _SlurmExecutor on a simulated clock: its Slurm calls recorded as (time, command), its waits as
    seconds the clock moves on; sbatch answers a new job id."""
    settings, _ = slurptuna._resolve_settings(losses.quadratic, {"mode": "distributed", **options})
    calls: list[tuple[float, str]] = []
    now, waited = [0.0], []

    def slurm(argv, env=None, timeout=120):
        calls.append((now[0], argv[0]))
        return subprocess.CompletedProcess(argv, 0, f"{len(calls)}\n" if argv[0] == "sbatch" else "", "")

    def sleep(seconds):
        waited.append(seconds)
        now[0] += seconds
        return False

    run = slurptuna.RunPaths(tmp_path)
    executor = slurptuna._SlurmExecutor(
        settings, run, threading.Event(), clock=lambda: now[0], sleep=sleep, slurm=slurm
    )  # fmt: skip
    return SimpleNamespace(executor=executor, run=run, settings=settings, calls=calls, now=now, waited=waited)


def test_polls_as_fast_as_the_controller_likes_make_no_more_slurm_calls_than_the_pace(tmp_path):
    paced = paced_executor(tmp_path)
    executor, calls, now = paced.executor, paced.calls, paced.now
    for _ in range(2000):  # 20 simulated seconds of a poll every 10 ms
        assert executor.poll()
        now[0] += 0.01
    squeues = [t for t, command in calls if command == "squeue"]
    burst, rate = slurptuna._SLURM_CALL_BURST, slurptuna._SLURM_CALLS_PER_SECOND
    polls_rate = rate / slurptuna._SLURM_CALLS_KEPT_FROM_POLLS  # polls leave the rest of the pace to trials
    assert len(squeues) <= min(burst + 20 * rate, 20 * polls_rate) + 1
    assert len(squeues) >= 20 * polls_rate - 1  # paced, not stopped
    assert max(sum(1 for t in squeues if s <= t < s + 5) for s in squeues) <= 5 * polls_rate + 1


def test_a_new_trials_sbatch_calls_wait_for_no_poll_however_fast_the_controller_polled(tmp_path):
    paced = paced_executor(tmp_path, slurm_poll_seconds=5)
    executor, run, settings, calls, now, waited = (
        paced.executor, paced.run, paced.settings, paced.calls, paced.now, paced.waited
    )  # fmt: skip

    def start_trial(number: int) -> list[str]:
        """Start two chunks of a trial and poll once: the commands that poll called."""
        trial = run.trial(number)
        trial.dir.mkdir(parents=True)
        executor.start(trial, slurptuna.TrialParams(number, {"x": 0.5}, settings.seeds.to_json()), [0, 1], 0)
        asked = len(calls)
        assert executor.poll()
        return [command for _, command in calls[asked:]]

    assert start_trial(0).count("sbatch") == 2  # the first trial also reads the site's limits
    for _ in range(1000):  # 10 simulated seconds of a poll every 10 ms: as many squeue calls as the budget allows
        assert executor.poll()
        now[0] += 0.01
    squeues = [t for t, command in calls if command == "squeue"]
    assert len(squeues) >= 10 * slurptuna._SLURM_CALLS_PER_SECOND / slurptuna._SLURM_CALLS_KEPT_FROM_POLLS - 1
    assert start_trial(1).count("sbatch") == 2  # the array and its reduce job, at once
    assert waited == []


def test_the_queue_is_asked_every_slurm_poll_seconds_while_new_trials_want_every_call(tmp_path):
    paced = paced_executor(tmp_path, slurm_poll_seconds=2)
    executor, run, settings, calls, now = paced.executor, paced.run, paced.settings, paced.calls, paced.now
    for number in range(300):  # a new trial every 50 ms: its array and reduce job want more calls than the pace
        trial = run.trial(number)
        trial.dir.mkdir(parents=True)
        executor.start(trial, slurptuna.TrialParams(number, {"x": 0.5}, settings.seeds.to_json()), [0], 0)
        assert executor.poll()
        now[0] += 0.05
    squeues = [t for t, command in calls if command == "squeue"]
    assert len(squeues) >= now[0] / 3  # the controller's submissions starve no poll
    assert max(b - a for a, b in itertools.pairwise(squeues)) <= 2 + 1  # a poll interval, and at most a call's wait


def test_the_call_budget_allows_a_burst_then_the_rate():
    budget = _CallBudget(rate=2.0, burst=3.0)
    assert [budget.take(now=0.0) for _ in range(3)] == [0.0, 0.0, 0.0]
    assert budget.take(now=0.0) == pytest.approx(0.5)  # the fourth waits for half a second's refill
    assert budget.take(now=10.0) == 0.0  # refilled (never past the burst)


def test_an_arrays_task_ids_map_to_each_trials_chunks_in_order():
    spec = _tasks_spec([(5, [0, 1, 2]), (6, [0, 3, 4])])
    assert spec == "5:0-2/6:0,3-4"
    assert [_task_of_spec(spec, t) for t in range(6)] == [(5, 0), (5, 1), (5, 2), (6, 0), (6, 3), (6, 4)]
    with pytest.raises(ValueError, match="task 6"):
        _task_of_spec(spec, 6)


def test_squeue_lines_become_each_jobs_tasks_still_queued():
    shown = "12_[4-6%2]|PENDING\n12_3|RUNNING\n12_1|COMPLETED\n13|PENDING\n14_[0]|PENDING\n"
    assert _parse_active_tasks(shown) == {"12": {3, 4, 5, 6}, "13": {None}, "14": {0}}
    assert Counter(len(t) for t in _parse_active_tasks(shown).values()) == Counter({4: 1, 1: 2})
