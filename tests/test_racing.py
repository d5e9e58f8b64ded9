"""Seeds where they decide the ranking: target_standard_error's waves, races against the best, the best set."""

from __future__ import annotations

import json
import math
import signal
import subprocess
import textwrap
import uuid
from pathlib import Path
from unittest.mock import ANY

import losses
import pytest
from conftest import Points, chunk_records, read_json, slurptuna_command, start_controller, wait_for
from real_slurm import require_real_slurm

from slurptuna import (
    _BEST_SET_MAX,
    BestSetTrial,
    ConfigError,
    RunPaths,
    SeedPlan,
    _best_set,
    _Moments,
    _next_wave,
    _paired_p,
    _Racer,
    _race_step,
    _RaceStep,
    _t_survival,
    _target_reached,
    optimize_run,
)

TARGET = 0.1  # front_loaded_noise: std 2 over its first 40 seeds, then 0: about 130 of 400 seeds reach it


def moments(values: list[float]) -> _Moments:
    return _Moments.of(values)


# ---------------------------------------------------------------- target_standard_error, pure


@pytest.mark.compat
def test_a_trial_first_starts_its_minimum_chunks_in_index_order():
    plan = SeedPlan(chunk_size=10, count=400)
    assert _next_wave(plan, None, 0, 0, set(), TARGET) == (0, 1, 2, 3)  # 4 chunks, 40 seeds: both minimums
    assert _next_wave(SeedPlan(chunk_size=1, count=400), None, 0, 0, set(), TARGET) == tuple(range(32))
    assert _next_wave(SeedPlan(chunk_size=10, count=20), None, 0, 0, set(), TARGET) == (0, 1)  # capped by n_seeds


@pytest.mark.compat
def test_after_the_minimum_a_trial_starts_as_many_chunks_as_std_over_target_squared_seeds_need():
    plan = SeedPlan(chunk_size=10, count=400)
    done = moments([-2.0, 2.0] * 20)  # std ~2: (2 / 0.1)^2 = 400 seeds, all 40 chunks
    assert _next_wave(plan, done, 4, 4, set(range(4)), TARGET) == tuple(range(4, 40))
    smaller = moments([-1.6, 1.6] * 20)  # std 1.62: 263 seeds, 27 chunks; 6 are started already
    assert _next_wave(plan, smaller, 4, 6, set(range(6)), TARGET) == tuple(range(6, 27))
    assert _next_wave(plan, smaller, 4, 27, set(range(27)), TARGET) == ()  # all it needs runs


@pytest.mark.compat
def test_a_failed_chunk_does_not_count_as_a_started_one_and_gaps_are_filled_first():
    plan = SeedPlan(chunk_size=10, count=400)
    assert _next_wave(plan, None, 3, 3, {0, 1, 2, 3}, TARGET) == (4,)  # chunk 3 failed: one more
    assert _next_wave(plan, None, 2, 2, {0, 2}, TARGET) == (1, 3)  # a resume: chunk 1 was lost


@pytest.mark.compat
def test_the_target_counts_only_after_the_minimum_chunks():
    plan = SeedPlan(chunk_size=10, count=400)
    exact = moments([1.0] * 30)  # standard error 0, but 3 chunks
    assert not _target_reached(plan, exact, 3, TARGET)
    assert _target_reached(plan, moments([1.0] * 40), 4, TARGET)
    assert not _target_reached(plan, moments([-2.0, 2.0] * 20), 4, TARGET)


@pytest.mark.compat
@pytest.mark.parametrize("bad", [0, -0.1, math.inf, math.nan, "0.1", True])
def test_a_target_standard_error_that_is_not_a_finite_positive_number_is_refused(run_root, bad):
    with pytest.raises(ConfigError, match=r"target_standard_error must be a finite number > 0, got"):
        optimize_run(losses.quadratic, n_trials=1, n_seeds=4, run_root=run_root, target_standard_error=bad)
    assert not run_root.exists()


@pytest.mark.compat
def test_a_target_with_objectives_is_refused_naming_both(run_root):
    with pytest.raises(ConfigError, match=r"target_standard_error=0.1 cannot be used with objectives"):
        optimize_run(
            losses.fit_and_shape,
            n_trials=1,
            n_seeds=4,
            run_root=run_root,
            target_standard_error=0.1,
            objectives={"fit": "minimize"},
        )


# ---------------------------------------------------------------- target_standard_error, real runs


def run_to_target(run_root: Path, **options):
    options = {"n_seeds": 400, "chunk_size": 10, "run_root": run_root, "progress": False, **options}
    return optimize_run(
        losses.front_loaded_noise, n_trials=1, sampler=Points([0.5]), target_standard_error=TARGET, **options
    )


def assert_stopped_at_target(result, seed_counter) -> dict:
    """The trial used fewer seeds than n_seeds, reached the target, and its summary reads as complete."""
    trial = result.study.trials[0]
    summary = read_json(RunPaths(Path(result.run_dir)).trial(0).summary)
    used = summary["n_seeds"]
    assert trial.state.name == "COMPLETE" and trial.user_attrs["n_seeds"] == used
    assert 40 <= used < 400 and summary["standard_error"] <= TARGET < summary["std"] / math.sqrt(40)
    assert summary["missing_chunks"] == [] and summary["chunks_skipped"] == 40 - summary["n_chunks"] > 0
    assert "missing_chunks" not in trial.user_attrs
    assert result.best_value == pytest.approx(summary["mean"]) and result.best_standard_error <= TARGET
    evaluated = seed_counter.total()
    assert used <= evaluated < 400  # the chunks past the target never ran all
    return {"used": used, "evaluated": evaluated, "chunks": summary["n_chunks"]}


def test_single_mode_a_trial_stops_adding_chunks_once_its_standard_error_reaches_the_target(run_root, seed_counter):
    result = run_to_target(run_root)
    seeds = assert_stopped_at_target(result, seed_counter)
    assert seeds["chunks"] < 40  # 13 chunks need ~126 seeds; the pool may finish more before it hears
    assert len(chunk_records(RunPaths(Path(result.run_dir)).trial(0))) == seeds["chunks"]


def test_on_fake_slurm_the_chunks_queued_past_the_target_are_cancelled_by_their_own_task_ids(
    fake_slurm, run_root, seed_counter
):
    result = run_to_target(run_root, mode="distributed", slurm_poll_seconds=0.2, array_parallelism_limit=1)
    seeds = assert_stopped_at_target(result, seed_counter)
    arrays = [s for s in fake_slurm.submissions() if s.get("job_id") and "--tasks" in s["argv"]]
    assert len(arrays) == 2  # the minimum chunks, then one wave of all 36 the estimate asked for
    second = str(arrays[1]["job_id"])
    cancels = [a for c in fake_slurm.calls("scancel") for a in c["argv"] if a.startswith(f"{second}_[")]
    assert len(cancels) == 1
    first, _, last = cancels[0].removeprefix(f"{second}_[").rstrip("]").partition("-")
    assert int(last or first) == 35 and seeds["evaluated"] < 400  # its last tasks, never run


@pytest.fixture
def real_slurm_run():
    require_real_slurm()
    name = f"target_{uuid.uuid4().hex[:8]}"
    yield name
    queued = subprocess.run(["squeue", "-h", "-o", "%i|%j"], capture_output=True, text=True, check=False)
    ids = {line.split("|")[0].split("_")[0] for line in queued.stdout.splitlines() if f"|{name}." in line}
    if ids:
        subprocess.run(["scancel", *ids], check=False)


def test_real_slurm_a_trial_stops_at_its_target_and_its_queued_tasks_are_cancelled(
    real_slurm_run, run_root, seed_counter, monkeypatch
):
    monkeypatch.setenv("SLURPTUNA_TEST_SLEEP", "0.02")
    result = run_to_target(
        run_root,
        mode="distributed",
        run_name=real_slurm_run,
        slurm_poll_seconds=0.3,
        slurm_qos=None,
        array_parallelism_limit=2,
    )
    assert_stopped_at_target(result, seed_counter)


# ---------------------------------------------------------------- the paired t-test, pure


@pytest.mark.compat
def test_the_t_distribution_s_tail_matches_known_values_and_scipy_where_installed():
    assert _t_survival(0.0, 7) == 0.5
    assert _t_survival(1.0, 1) == pytest.approx(0.25, abs=1e-14)  # Cauchy: 1/2 - atan(1)/pi
    assert _t_survival(2.353363, 3) == pytest.approx(0.05, abs=1e-6)  # the 5% point at df 3
    assert _t_survival(-2.0, 10) == pytest.approx(1 - _t_survival(2.0, 10), abs=1e-15)
    scipy_stats = pytest.importorskip("scipy.stats")
    for t, df in [(0.3, 1), (1.7, 2), (-0.8, 5), (2.5, 19), (4.0, 60), (1.96, 1000)]:
        assert _t_survival(t, df) == pytest.approx(scipy_stats.t.sf(t, df), rel=1e-9, abs=1e-14)


def racer(number: int, means: list[float], n_chunks: int = 40, spread: float = 0.1) -> _Racer:
    """A trial whose chunk k (10 seeds) has mean ``means[k]``."""
    chunks = {k: _Moments(10, m, 9 * spread**2, m - spread, m + spread) for k, m in enumerate(means)}
    return _Racer(number, chunks, n_chunks)


NOISE = [0.3, -0.2, 0.1, -0.4, 0.2, 0.0, -0.1, 0.25] * 5  # what every trial's chunk k shares (paired)


@pytest.mark.compat
def test_a_paired_test_sees_a_small_difference_through_the_noise_the_seeds_share():
    best = {k: 1.0 + n for k, n in enumerate(NOISE[:8])}
    better = {k: 0.95 + n + 0.01 * (-1) ** k for k, n in enumerate(NOISE[:8])}
    assert _paired_p(better, best, "minimize") < 0.001
    assert _paired_p(best, better, "minimize") > 0.99
    assert _paired_p(best, better, "maximize") < 0.001
    assert _paired_p({0: 1.0}, {0: 2.0}, "minimize") == 1.0  # one shared chunk: nothing to test on


@pytest.mark.compat
def test_a_challenger_separated_as_better_ranks_first_and_one_separated_as_worse_does_not():
    best = racer(0, [1.0 + n for n in NOISE[:20]])
    better = racer(1, [0.9 + n + 0.01 * (-1) ** k for k, n in enumerate(NOISE[:4])])
    worse = racer(2, [1.1 + n + 0.01 * (-1) ** k for k, n in enumerate(NOISE[:4])])
    assert _race_step(best, better, "minimize", 0.05).first == 1
    assert _race_step(best, worse, "minimize", 0.05).first == 0


@pytest.mark.compat
def test_while_unseparated_the_one_with_fewer_seeds_gets_the_next_chunks_in_chunk_order():
    best = racer(0, [1.0 + n for n in NOISE[:10]])
    close = racer(1, [1.0 + n + 0.05 * (-1) ** k for k, n in enumerate(NOISE[:4])])
    assert _race_step(best, close, "minimize", 0.05).add == {1: (4, 5, 6, 7)}  # doubled
    closer = racer(1, [1.0 + n + 0.05 * (-1) ** k for k, n in enumerate(NOISE[:8])])
    assert _race_step(best, closer, "minimize", 0.05).add == {1: (8, 9)}  # not past the best's 10
    even = racer(1, [1.0 + n + 0.05 * (-1) ** k for k, n in enumerate(NOISE[:10])])
    assert _race_step(best, even, "minimize", 0.05).add == {0: tuple(range(10, 20)), 1: tuple(range(10, 20))}


@pytest.mark.compat
def test_unseparated_at_n_seeds_or_out_of_chunks_the_lower_mean_ranks_first():
    best = racer(0, [1.0 + n for n in NOISE[:10]], n_chunks=10)
    lower = racer(1, [0.999 + n + 0.05 * (-1) ** k for k, n in enumerate(NOISE[:10])], n_chunks=10)
    step = _race_step(best, lower, "minimize", 0.05)
    assert (step.first, step.add) == (1, {})
    worse = racer(1, [1.2 + n + 0.3 * (-1) ** k for k, n in enumerate(NOISE[:4])]).chunks  # unseparated
    assert _race_step(best, _Racer(1, worse, 40), "minimize", 0.05).add == {1: (4, 5, 6, 7)}
    assert _race_step(best, _Racer(1, worse, 40, stuck=True), "minimize", 0.05) == _RaceStep(0, {}, ANY)


@pytest.mark.compat
def test_the_best_set_holds_the_trials_the_paired_test_cannot_tell_from_the_best_by_mean():
    best = racer(0, [1.0 + n for n in NOISE[:10]])
    tied = racer(1, [1.01 + n + 0.05 * (-1) ** k for k, n in enumerate(NOISE[:10])])
    beaten = racer(2, [1.2 + n + 0.01 * (-1) ** k for k, n in enumerate(NOISE[:10])])
    assert [r.number for r in _best_set(best, [beaten, tied, best], "minimize", 0.05)] == [0, 1]


@pytest.mark.compat
def test_a_flat_loss_s_best_set_lists_the_best_means_up_to_its_cap():
    best = racer(0, [1.0] * 10)
    # each a little worse on average, but with differences the paired test cannot separate
    tied = [racer(n, [1.0 + 0.0001 * n + 0.05 * (-1) ** k for k in range(10)]) for n in range(1, 3 * _BEST_SET_MAX)]
    members = _best_set(best, reversed(tied), "minimize", 0.05)
    assert [r.number for r in members] == list(range(_BEST_SET_MAX))


# ---------------------------------------------------------------- races, real runs

INCUMBENT = {"x": 0.3, "noise": 1.0, "luck": 0.0}  # the truly best: wide noise, so it needs many seeds
LUCKY = {"x": 0.8, "noise": 0.3, "luck": -0.35}  # truly worse, but better on its first 40 seeds
TRULY_BETTER = {"x": 0.3, "noise": 0.3, "luck": 0.0}
WIDE_WORSE = {"x": 0.9, "noise": 2.0, "luck": 0.0}


def race(run_root: Path, points: list[dict], **options):
    options = {"n_seeds": 400, "chunk_size": 10, "run_root": run_root, "progress": False, **options}
    return optimize_run(
        losses.racing_model, n_trials=len(points), enqueue=points, target_standard_error=TARGET, **options
    )


def seeds_of(result, number: int) -> tuple[int, int]:
    """(the seeds Optuna was told of, the seeds its summary.json has now) of trial ``number``."""
    summary = read_json(RunPaths(Path(result.run_dir)).trial(number).summary)
    return result.study.trials[number].user_attrs["n_seeds"], summary["n_seeds"]


def test_a_challenger_with_fewer_seeds_replaces_the_best_once_the_paired_test_separates_them(run_root):
    result = race(run_root, [WIDE_WORSE, TRULY_BETTER])
    assert result.best_params == TRULY_BETTER and result.study.best_trial.number == 1
    told, now = seeds_of(result, 1)
    assert told < seeds_of(result, 0)[0] and now > told  # it raced with more chunks than it was told with
    summary = read_json(Path(result.run_dir) / "summary.json")
    assert summary["best_trial"] == 1 and summary["best_value"] == result.best_value != result.study.best_value
    assert summary["race"] == {"challengers": [], "judged": 2}


def test_a_lucky_challenger_does_not_replace_the_best_and_the_run_s_best_differs_from_optuna_s(run_root):
    result = race(run_root, [INCUMBENT, LUCKY])
    assert result.best_params == INCUMBENT
    assert result.study.best_trial.number == 1  # Optuna holds the challenger's lucky first mean
    told, now = seeds_of(result, 1)
    assert (
        now > told
        and result.study.trials[1].value
        < result.best_value
        < read_json(RunPaths(Path(result.run_dir)).trial(1).summary)["mean"]
    )
    assert [t.number for t in result.best_set] == [0]  # separated: not in the best set


def assert_race_ran_on_slurm(result, seed_counter) -> None:
    """The lucky challenger lost as in single mode; its race's seeds were evaluated (by Slurm's tasks:
    the controller evaluates none), each once."""
    assert result.best_params == INCUMBENT and result.study.best_trial.number == 1
    told, now = seeds_of(result, 1)
    assert now > told  # the race added chunks after Optuna was told
    assert len(chunk_records(RunPaths(Path(result.run_dir)).trial(1))) == now // 10
    lucky = [n for (x, _), n in seed_counter.evaluations().items() if x == LUCKY["x"]]
    assert len(lucky) == now and set(lucky) == {1}


def test_on_fake_slurm_a_race_runs_its_chunks_as_arrays_and_keeps_the_better_incumbent(
    fake_slurm, run_root, seed_counter
):
    result = race(run_root, [INCUMBENT, LUCKY], mode="distributed", slurm_poll_seconds=0.2)
    arrays = [s for s in fake_slurm.submissions() if s.get("job_id") and "--tasks" in s["argv"]]
    assert len(arrays) >= 3  # trial 0, trial 1, then at least one array of the race's chunks
    assert_race_ran_on_slurm(result, seed_counter)


def test_real_slurm_a_race_runs_its_chunks_as_arrays_and_keeps_the_better_incumbent(
    real_slurm_run, run_root, seed_counter
):
    result = race(
        run_root,
        [INCUMBENT, LUCKY],
        mode="distributed",
        run_name=real_slurm_run,
        slurm_poll_seconds=0.3,
        slurm_qos=None,
    )
    assert_race_ran_on_slurm(result, seed_counter)


def test_the_best_set_is_in_summary_json_status_json_and_the_result(run_root):
    result = race(run_root, [{"x": 0.3, "noise": 2.0, "luck": 0.0}, {"x": 0.7, "noise": 0.3, "luck": -0.45}])
    assert len(result.best_set) == 2 and all(isinstance(t, BestSetTrial) for t in result.best_set)
    assert [t.n_seeds for t in result.best_set] == [400, 400]  # raced to n_seeds, unseparated
    assert result.best_set[0].mean < result.best_set[1].mean and result.best_set[0].params == result.best_params
    summary = read_json(Path(result.run_dir) / "summary.json")
    assert summary["best_set"] == [json.loads(json.dumps(t.__dict__)) for t in result.best_set]
    status = json.loads(slurptuna_command("status", "--json", result.run_dir).stdout)
    assert status["best_set"] == summary["best_set"] and status["best_trial"] == summary["best_trial"]
    text = slurptuna_command("status", result.run_dir).stdout
    assert "best set: 1 more trial(s)" in text and f"trial {result.best_set[1].number}: " in text


def test_without_a_target_the_best_set_is_computed_too(run_root):
    result = optimize_run(
        losses.racing_model,
        n_trials=2,
        n_seeds=100,
        chunk_size=10,
        run_root=run_root,
        progress=False,
        enqueue=[{"x": 0.3, "noise": 2.0, "luck": 0.0}, {"x": 0.31, "noise": 2.0, "luck": 0.0}],
    )
    assert (
        sorted(t.number for t in result.best_set) == [0, 1]
        and result.best_set[0].number == result.study.best_trial.number
    )
    assert "race" not in read_json(Path(result.run_dir) / "summary.json")


RACE_CONTROLLER = textwrap.dedent("""
    import sys
    import losses
    from slurptuna import optimize_run

    result = optimize_run(losses.racing_model, n_trials=2, n_seeds=400, chunk_size=10, run_root=sys.argv[1],
                          run_name="raced", target_standard_error=0.1, progress=False,
                          enqueue=[{"x": 0.3, "noise": 1.0, "luck": 0.0}, {"x": 0.8, "noise": 0.3, "luck": -0.35}])
    print("BEST", result.best_params, [t.number for t in result.best_set])
""")


def test_a_race_killed_halfway_goes_on_from_its_chunks_on_disk_to_the_same_ranking(tmp_path, run_root, seed_counter):
    expected = race(tmp_path / "uninterrupted", [INCUMBENT, LUCKY])
    controller = start_controller(tmp_path, RACE_CONTROLLER, run_root, SLURPTUNA_TEST_SLEEP="0.02")
    run = RunPaths(run_root / "raced")

    def racing() -> dict | None:  # the challenger told, and chunks added to it by the race
        ranking = read_json(run.summary) if run.summary.exists() else {}
        if ranking.get("race", {}).get("challengers") == [1] and len(chunk_records(run.trial(1))) > 5:
            return chunk_records(run.trial(1))
        return None

    before = wait_for(racing, timeout=120)
    controller.send_signal(signal.SIGKILL)
    controller.wait(timeout=30)
    evaluated = seed_counter.evaluations()
    resumed = start_controller(tmp_path, RACE_CONTROLLER, run_root)
    out, err = resumed.communicate(timeout=180)
    assert resumed.returncode == 0, err
    assert f"BEST {INCUMBENT} {[t.number for t in expected.best_set]}" in out
    after = chunk_records(run.trial(1))
    assert all(after[k]["finished_at"] == record["finished_at"] for k, record in before.items())  # not run again
    assert len(after) > len(before)  # the race went on
    again = seed_counter.evaluations() - evaluated
    done = {(0.8, s) for k in before for s in range(10 * k, 10 * k + 10)}
    assert not done & set(again)  # no seed of a chunk on disk was computed twice
