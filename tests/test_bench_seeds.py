"""benchmark/bench_seeds.py: its model behaves as its docstring says, or the benchmark's figures mean nothing.

Regret and coverage are measured against ``true_f``, and the target standard error and the
racing are judged on noise whose scale varies tenfold and is shared in part across trials on a
seed: each of these is checked here on many seeds (the loss is deterministic, about a microsecond
a seed).
"""

from __future__ import annotations

import math
import statistics
import sys

import pytest
from conftest import REPO

sys.path.insert(0, str(REPO / "benchmark"))

import bench_seeds
from bench_seeds import bench_noise_bowl, noise_sd, true_f

N = 20_000
POINTS = [(0.3, 0.6), (0.0, 0.0), (1.0, 1.0), (0.8, 0.2)]


def losses(x: float, y: float, start: int = 0) -> list[float]:
    return [bench_noise_bowl({"x": x, "y": y}, seed) for seed in range(start, start + N)]


def test_the_mean_over_many_seeds_approaches_the_true_loss_within_four_standard_errors():
    for x, y in POINTS:
        values = losses(x, y)
        error = abs(statistics.fmean(values) - true_f(x, y))
        assert error <= 4 * noise_sd(x, y) / math.sqrt(N), (x, y, error)


def test_the_noise_sd_is_as_documented_and_varies_tenfold_from_y_0_to_y_1():
    low, high = statistics.stdev(losses(0.5, 0.0)), statistics.stdev(losses(0.5, 1.0))
    assert low == pytest.approx(0.1, rel=0.05) and high == pytest.approx(1.0, rel=0.05)
    assert 9 <= high / low <= 11
    for x, y in POINTS:
        assert statistics.stdev(losses(x, y, start=10**6)) == pytest.approx(noise_sd(x, y), rel=0.05)


def test_two_trials_on_the_same_seeds_are_positively_paired_by_the_shared_part_of_the_noise():
    a, b = losses(0.3, 0.6), losses(0.35, 0.55)
    assert statistics.correlation(a, b) == pytest.approx(bench_seeds.SHARED**2, abs=0.03)  # 5 SE


def test_the_loss_is_a_function_of_seed_and_params_alone():
    assert losses(0.3, 0.6)[:100] == losses(0.3, 0.6)[:100]
    assert losses(0.3, 0.6)[:100] != losses(0.3, 0.6, start=1)[:100]


def test_the_optimum_is_where_the_docstring_says_and_the_bowl_is_shallow_there():
    assert true_f(*bench_seeds.OPTIMUM) == 0.0
    near = true_f(bench_seeds.OPTIMUM[0] + 0.05, bench_seeds.OPTIMUM[1])
    assert near < noise_sd(*bench_seeds.OPTIMUM) / math.sqrt(2000)  # less than a trial's SE at 2,000 seeds


def test_a_configuration_this_build_lacks_is_reported_as_not_available(monkeypatch):
    def optimize_run(loss, *, n_trials=10, pruner=None):  # a build without target_standard_error
        raise AssertionError("not to be called")

    monkeypatch.setattr(bench_seeds, "optimize_run", optimize_run)
    race = next(c for c in bench_seeds.CONFIGS if c.race)
    assert race.missing is not None
    assert "not available in this build" in bench_seeds._missing_row(race)["Measured"]
