"""Seeds where they decide the ranking: target_standard_error's waves, races against the best, the best set."""

from __future__ import annotations

import math
import subprocess
import uuid
from pathlib import Path

import losses
import pytest
from conftest import Points, chunk_records, read_json
from real_slurm import require_real_slurm

from slurptuna import ConfigError, RunPaths, SeedPlan, _Moments, _next_wave, _target_reached, optimize_run

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
    assert 40 <= used < 400 and summary["standard_error"] <= TARGET < summary["std"] / math.sqrt(used - 10)
    assert summary["missing_chunks"] == [] and summary["chunks_skipped"] == 40 - summary["n_chunks"] > 0
    assert "missing_chunks" not in trial.user_attrs
    assert result.best_value == pytest.approx(summary["mean"]) and result.best_standard_error <= TARGET
    evaluated = seed_counter.total()
    assert used <= evaluated < 400  # the chunks past the target never ran all
    return {"used": used, "evaluated": evaluated, "chunks": summary["n_chunks"]}


def test_single_mode_a_trial_stops_adding_chunks_once_its_standard_error_reaches_the_target(run_root, seed_counter):
    result = run_to_target(run_root)
    seeds = assert_stopped_at_target(result, seed_counter)
    assert seeds["chunks"] <= 16  # 13 chunks need ~126 seeds; a wave may finish a few more
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
