"""The trial life cycle as a pure function (_decide): every rule, without Slurm, processes or sleeping."""

from __future__ import annotations

from dataclasses import replace

import pytest

from slurptuna import _decide, _Next, _TrialView

pytestmark = pytest.mark.compat  # fast: .ci/run also runs it on the other Pythons and the optuna floor

RUNNING = _TrialView(n_chunks=4, done_chunks=frozenset({0, 1}), running=True)
ENDED = replace(RUNNING, running=False)  # chunks 2 and 3 have no result and no task


def test_a_trial_whose_chunks_run_on_time_waits():
    assert _decide(RUNNING) is _Next.WAIT


def test_a_trial_completes_as_soon_as_every_chunk_has_its_result_whatever_still_runs():
    every_chunk = frozenset(range(4))
    assert _decide(replace(RUNNING, done_chunks=every_chunk)) is _Next.COMPLETE
    assert _decide(replace(RUNNING, done_chunks=every_chunk, overdue=True)) is _Next.COMPLETE
    assert _decide(replace(ENDED, done_chunks=every_chunk)) is _Next.COMPLETE


def test_an_attempt_past_its_deadline_is_cancelled_while_its_chunks_run():
    assert _decide(replace(RUNNING, overdue=True)) is _Next.CANCEL_OVERDUE


def test_a_loss_error_fails_the_trial_at_once_unless_told_to_go_on():
    failed = replace(RUNNING, failed_chunks=frozenset({2}))
    assert _decide(failed) is _Next.FAIL_LOSS
    assert _decide(replace(failed, fail_on_chunk_error=False)) is _Next.WAIT


def test_an_unimportable_loss_stops_the_run_even_when_going_on_after_loss_errors():
    view = replace(RUNNING, failed_chunks=frozenset({2}), import_failed=True, fail_on_chunk_error=False)
    assert _decide(view) is _Next.STOP_RUN


@pytest.mark.parametrize(("retries_left", "expected"), [(True, _Next.RETRY), (False, _Next.FAIL_NO_RESULT)])
def test_missing_chunks_without_a_loss_error_are_retried_while_retries_are_left(retries_left, expected):
    assert ENDED.missing_chunks == {2, 3}
    assert _decide(replace(ENDED, retries_left=retries_left)) is expected


def test_with_fail_on_chunk_error_false_the_chunks_that_worked_are_reduced_unless_none_did():
    view = replace(ENDED, failed_chunks=frozenset({2, 3}), fail_on_chunk_error=False)
    assert _decide(view) is _Next.COMPLETE_PARTIAL
    assert _decide(replace(view, failed_chunks=frozenset({2}), retries_left=True)) is _Next.RETRY  # 3 never ran
    nothing_worked = replace(view, done_chunks=frozenset(), failed_chunks=frozenset(range(4)))
    assert _decide(nothing_worked) is _Next.FAIL_ALL_CHUNKS


def test_a_trial_the_pruner_gives_up_is_pruned_while_its_chunks_run_before_the_deadline_rule():
    assert _decide(replace(RUNNING, prune=True)) is _Next.PRUNE
    assert _decide(replace(RUNNING, prune=True, overdue=True)) is _Next.PRUNE
    assert _decide(replace(ENDED, prune=True, retries_left=True)) is _Next.RETRY  # nothing left to cancel
