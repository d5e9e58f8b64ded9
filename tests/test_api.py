"""The public API: decoration, parameter spaces, argument checks (no work started)."""

from __future__ import annotations

import io
import math
import sys
from datetime import timedelta

import losses
import pytest

import slurptuna
from slurptuna import (
    ExecutionMode,
    LossDefinition,
    SeedPlan,
    _Moments,
    _split_evenly,
    execution_mode,
    loss,
    optimize_run,
    run_chunk,
    search_param,
)

pytestmark = pytest.mark.compat  # fast: .ci/run also runs it on the other Pythons and the optuna floor


def test_loss_returns_a_callable_definition_with_the_function_name_as_default():
    @loss(parameter_space={"a": (0.0, 1.0)})
    def api_plain(params, seed):
        return params["a"] + seed

    assert isinstance(api_plain, LossDefinition)
    assert api_plain.name == "api_plain"
    assert api_plain({"a": 0.5}, 2) == 2.5
    assert not api_plain.takes_context


def test_loss_with_context_is_detected():
    assert losses.mixed_space.takes_context
    assert not losses.quadratic.takes_context


def test_signature_without_params_and_seed_raises_type_error_at_decoration():
    with pytest.raises(
        TypeError, match=r"\(params, seed\), \(params, seed, context\) or \(params, seed, \*, context\)"
    ):

        @loss(name="api_bad_signature", parameter_space={"a": (0.0, 1.0)})
        def bad(params):
            return 0.0


def test_a_different_function_under_a_taken_name_raises_value_error():
    with pytest.raises(ValueError, match="already registered"):

        @loss(name="quadratic", parameter_space={"x": (0.0, 1.0)})
        def other(params, seed):
            return 0.0


def test_reimporting_the_same_function_replaces_it():
    again = LossDefinition(
        "quadratic", "", {"x": slurptuna.SearchParam(range=(0.0, 2.0), dtype="float")}, losses.quadratic.seed_loss_fn
    )
    slurptuna._register(again)
    try:
        assert slurptuna._LOSSES["quadratic"] is again
    finally:
        slurptuna._register(losses.quadratic)


@pytest.mark.parametrize(
    ("space", "message"),
    [
        ({"a": (1.0, 0.0)}, "low <= high"),
        ({"a": search_param(range=(0.0, 1.0), log=True)}, "log=True needs low > 0"),
        ({"a": search_param(range=(0.5, 3), dtype="int")}, "whole-number"),
        ({"a": search_param(allowed=[])}, "at least one value"),
        ({"a": search_param(range=(0, 1), allowed=[1])}, "exactly one of"),
        ({"a": "wide"}, "expected a \\(low, high\\) tuple"),
        ({}, "non-empty dict"),
    ],
)
def test_bad_parameter_spaces_raise_value_error_saying_what_is_valid(space, message):
    with pytest.raises(ValueError, match=message):
        loss(name="api_bad_space", parameter_space=space)(lambda params, seed: 0.0)


def test_execution_mode_lists_the_valid_modes():
    assert execution_mode("single") is ExecutionMode.SINGLE
    assert execution_mode("Distributed") is ExecutionMode.DISTRIBUTED
    with pytest.raises(ValueError, match="single, distributed"):
        execution_mode("cluster")


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"n_seeds": 0}, "n_seeds must be an integer >= 1"),
        ({"n_seeds": 10, "chunk_size": 0}, "chunk_size must be an integer >= 1"),
        ({"seeds": []}, "seeds must not be empty"),
        ({"seeds": [1, 2, 2]}, "must not repeat"),
        ({"mode": "cluster"}, "single, distributed"),
        ({"direction": "down"}, "minimize"),
        ({"worker_time_limit": 60}, "timedelta"),
        ({"worker_parallelism": 0}, "worker_parallelism"),
        ({"max_concurrent_trials": 0}, "max_concurrent_trials"),
        ({"mem_per_cpu": "lots"}, "mem_per_cpu"),
        ({"sbatch_args": "--exclusive"}, "list of strings"),
        ({"run_name": "a/b"}, "plain directory name"),
        ({"python": "/no/such/python"}, "not an executable"),
    ],
)
def test_bad_arguments_raise_value_error_before_any_work(run_root, kwargs, message):
    with pytest.raises(ValueError, match=message):
        optimize_run(losses.quadratic, run_root=run_root, **kwargs)
    assert not run_root.exists()


def test_unknown_loss_name_lists_the_registered_ones(run_root):
    with pytest.raises(ValueError, match="registered losses: .*quadratic"):
        optimize_run("no_such_loss", run_root=run_root)


def test_loss_can_be_given_by_name(run_root):
    result = optimize_run("total_loss_dict", n_trials=1, n_seeds=3, chunk_size=3, run_root=run_root)
    assert result.loss_name == "total_loss_dict"


@pytest.mark.parametrize(("n_seeds", "chunk_size"), [(10, 3), (7, 7), (5, 40), (1, 1), (100, 33)])
def test_chunks_cover_the_seeds_exactly_once(n_seeds, chunk_size):
    plan = SeedPlan.resolve(losses.quadratic, None, n_seeds, chunk_size, None)
    covered = [s for i in range(plan.n_chunks) for s in plan.chunk(i)]
    assert covered == list(range(n_seeds))
    assert all(len(plan.chunk(i)) <= chunk_size for i in range(plan.n_chunks))


def test_explicit_seed_lists_are_honoured_exactly():
    seeds = [17, 3, 99, 4, 5, 1000]
    plan = SeedPlan.resolve(losses.quadratic, seeds, None, 4, None)
    assert [s for i in range(plan.n_chunks) for s in plan.chunk(i)] == seeds
    assert SeedPlan.from_json(plan.to_json()) == plan


def test_seed_start_and_default_chunking_follow_the_earlier_package():
    @loss(name="api_seed_start", parameter_space={"a": (0.0, 1.0)}, seed_start=500)
    def shifted(params, seed):
        return 0.0

    plan = SeedPlan.resolve(shifted, None, None, None, None)
    assert (plan.start, plan.count, plan.chunk_size) == (500, 1000, 100)
    assert SeedPlan.resolve(shifted, None, 90, None, 4).chunk_size == 23


def test_pooled_moments_equal_moments_over_all_values():
    values = [math.sin(i) * 1e3 + 1e6 for i in range(1001)]
    parts = [_Moments.of(values[lo:hi]) for lo, hi in _split_evenly(len(values), 7)]
    pooled, direct = _Moments.pool(parts), _Moments.of(values)
    assert pooled.count == direct.count
    assert pooled.mean == pytest.approx(direct.mean, rel=1e-15)
    assert pooled.m2 == pytest.approx(direct.m2, rel=1e-12)
    assert (pooled.min, pooled.max) == (min(values), max(values))


@pytest.mark.parametrize("use_processes", [True, False])
def test_chunk_runner_gives_the_same_statistics_with_processes_threads_or_inline(use_processes):
    params, seeds = {"x": 0.1}, range(50, 97)
    inline = run_chunk(losses.quadratic, params, seeds, {}, processes=1)
    parallel = run_chunk(losses.quadratic, params, seeds, {}, processes=3, use_processes=use_processes)
    assert parallel.loss.count == inline.loss.count == 47
    assert parallel.loss.mean == pytest.approx(inline.loss.mean, rel=1e-14)
    assert parallel.loss.mean == pytest.approx(sum(losses.quadratic_value(params, s) for s in seeds) / 47)


def test_chunk_runner_reports_the_first_failing_seed_from_a_child_process():
    with pytest.raises(slurptuna._SeedError) as failure:
        run_chunk(losses.raises_at_seed_7, {"x": 0.5}, range(20), {}, processes=2)
    seed, kind, message, trace = failure.value.args
    assert (seed, kind) == (7, "raised")
    assert "model diverged" in message and "raise RuntimeError" in trace


def test_worker_time_limit_must_be_positive(run_root):
    with pytest.raises(ValueError, match="worker_time_limit"):
        optimize_run(losses.quadratic, run_root=run_root, worker_time_limit=timedelta(0))


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


@pytest.mark.parametrize(
    ("enabled", "stream", "shown"), [(True, _Terminal, True), (False, _Terminal, False), (True, io.StringIO, False)]
)
def test_progress_line_only_on_a_terminal_and_when_asked(monkeypatch, enabled, stream, shown):
    monkeypatch.setattr(sys, "stderr", stream())
    progress = slurptuna._Progress(enabled, total=10)
    progress.show(done=3, running=2, failed=1, best=0.25, seeds=1200)
    text = sys.stderr.getvalue()
    assert ("trials 3/10 (2 running, 1 failed) best 0.25" in text) is shown


def test_cpus_per_task_defaults_to_worker_parallelism():
    settings, _ = slurptuna._resolve_settings(losses.quadratic, {"worker_parallelism": 3})
    assert settings.cpus_per_task == 3
