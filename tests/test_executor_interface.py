"""The executor interface: a third executor is one class and one row, and the controller runs on simulated time.

``InlineExecutor`` runs chunk tasks in the test's own process, each taking a given number of
simulated seconds on a clock that only its ``wait`` moves. Swapped into ``_EXECUTORS`` it runs
whole studies through the real controller, with no Slurm, no processes and no sleeping.
"""

from __future__ import annotations

import math
import time

import losses
import pytest

import slurptuna
from slurptuna import ChunkResult, ExecutionMode, run_chunk


class SimulatedClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


class InlineExecutor:
    """Chunk tasks evaluated in this process, each ``chunk_seconds`` of simulated time after it started."""

    first_poll_seconds = 1.0
    max_poll_seconds = 10.0
    chunk_seconds = 5.0
    made: list[InlineExecutor] = []

    def __init__(self, settings, run, stop, cores=None, *, clock):
        self.settings, self.run = settings, run
        self.clock = clock if isinstance(clock, SimulatedClock) else SimulatedClock()  # time of its own otherwise
        self.tasks: dict[tuple[int, int], tuple[float, slurptuna.TrialParams]] = {}  # (trial, chunk) -> ends at
        self.held: dict[int, dict[int, ChunkResult]] = {}
        self.evaluated: list[tuple[int, int]] = []
        self.cancelled: list[tuple[int, int]] = []
        InlineExecutor.made.append(self)

    def start(self, trial, expected, chunks, attempt):
        for chunk in chunks:
            self.tasks[(trial.number, chunk)] = (self.clock() + self.chunk_seconds, expected)

    def poll(self):
        return True

    def running(self, trial):
        return any(number == trial.number for number, _ in self.tasks)

    def results(self, trial):
        return self.held.get(trial.number, {})

    def cancel(self, trials):
        numbers = {t.number for t in trials}
        gone = [key for key in self.tasks if key[0] in numbers]
        for key in gone:
            del self.tasks[key]
        self.cancelled += gone
        return len(gone)

    def finished(self, trial):
        self.cancel([trial])

    def explain(self, trial, chunks):
        return f"chunks {slurptuna._format_ranges(chunks)}: CANCELLED"

    def has_room(self):
        return True

    def adopt(self, trials):
        return {}

    def wait(self, seconds):
        """Move the clock to the next task's end (or by ``seconds``), then run the tasks that ended."""
        ends = [end for end, _ in self.tasks.values()]
        self.clock.now = min([self.clock.now + seconds, *ends]) if ends else self.clock.now + seconds
        for (number, chunk), (end, expected) in sorted(self.tasks.items()):
            if end <= self.clock.now:
                del self.tasks[(number, chunk)]
                self.evaluate(number, chunk, expected)

    def evaluate(self, number, chunk, expected):
        definition = slurptuna._LOSSES[self.settings.loss_name]
        seeds = expected.plan.chunk(chunk)
        stats = run_chunk(definition, expected.params, seeds, expected.loss_context(chunk, self.run.dir))
        self.held.setdefault(number, {})[chunk] = ChunkResult.of(expected, chunk, stats, 0.0, processes=1)
        self.evaluated.append((number, chunk))

    def close(self):
        pass


@pytest.fixture
def inline(monkeypatch):
    InlineExecutor.made = []
    monkeypatch.setitem(slurptuna._EXECUTORS, ExecutionMode.SINGLE, InlineExecutor)
    return InlineExecutor


def run_on_simulated_time(run_root, clock, **options):
    settings, objects = slurptuna._resolve_settings(losses.quadratic, {"run_root": str(run_root), **options})
    with slurptuna._StopSignal() as stop:
        return slurptuna._run_study(settings, stop=stop, clock=clock, **objects)


def test_a_third_executor_is_one_class_and_one_row_and_runs_a_whole_study(inline, run_root):
    result = slurptuna.optimize_run(losses.quadratic, n_trials=3, n_seeds=10, chunk_size=4, run_root=str(run_root))
    (executor,) = inline.made
    assert sorted(executor.evaluated) == [(t, c) for t in range(3) for c in range(3)]  # each chunk exactly once
    for trial in result.study.trials:
        direct = [losses.quadratic(trial.params, seed) for seed in range(10)]
        assert trial.state.name == "COMPLETE"
        assert trial.value == pytest.approx(math.fsum(direct) / 10)


def test_the_whole_loop_runs_on_the_clock_passed_in_without_sleeping(inline, run_root):
    clock = SimulatedClock()
    started = time.monotonic()
    result = run_on_simulated_time(run_root, clock, n_trials=4, n_seeds=8, chunk_size=2, max_concurrent_trials=2)
    assert [t.state.name for t in result.study.trials] == ["COMPLETE"] * 4
    # two trials at a time, each chunk 5 simulated seconds, all chunks of a trial at once: 2 rounds of 5 s
    assert clock.now == pytest.approx(2 * InlineExecutor.chunk_seconds)
    assert time.monotonic() - started < clock.now  # no simulated second was slept


def test_an_attempt_over_slurm_timeout_minutes_is_cancelled_and_retried_in_simulated_minutes(inline, run_root):
    InlineExecutor.chunk_seconds = 150.0  # each attempt takes longer than its 1-minute deadline
    try:
        clock = SimulatedClock()
        result = run_on_simulated_time(
            run_root, clock, n_trials=1, n_seeds=4, chunk_size=2, slurm_timeout_minutes=1, trial_retry_attempts=1
        )
    finally:
        InlineExecutor.chunk_seconds = 5.0
    (trial,) = result.study.trials
    (executor,) = inline.made
    assert trial.state.name == "FAIL" and "no result after 2 attempt(s)" in trial.user_attrs["fail_reason"]
    assert executor.evaluated == []  # no chunk ever reached its end
    assert executor.cancelled == [(0, 0), (0, 1), (0, 0), (0, 1)]  # each attempt cancelled once at its deadline
    assert 120.0 <= clock.now < 150.0  # two deadlines of 60 s passed, on the simulated clock
