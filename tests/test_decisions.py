"""The trial life cycle as a pure function (_decide): every rule, without Slurm, processes or sleeping."""

from __future__ import annotations

from dataclasses import replace

import pytest

from slurptuna import _decide, _Next, _TrialView

pytestmark = pytest.mark.compat  # fast: .ci/run also runs it on the other Pythons and the optuna floor

RUNNING = _TrialView(n_chunks=4, all_chunks_done=False, failed_chunks=frozenset(), jobs_queued=True, arrays_queued=True)
ENDED = replace(RUNNING, jobs_queued=False, arrays_queued=False, missing_chunks=frozenset({2, 3}))


def test_a_trial_whose_jobs_are_queued_and_on_time_waits():
    assert _decide(RUNNING) is _Next.WAIT


def test_a_trial_completes_as_soon_as_every_chunk_has_its_file_without_waiting_for_the_reduce_job():
    assert _decide(replace(RUNNING, all_chunks_done=True)) is _Next.COMPLETE
    assert _decide(replace(RUNNING, all_chunks_done=True, arrays_queued=False)) is _Next.COMPLETE


def test_an_attempt_past_its_deadline_is_cancelled_before_anything_else_is_looked_at():
    assert _decide(replace(RUNNING, overdue=True, all_chunks_done=True)) is _Next.CANCEL_OVERDUE


def test_a_reduce_job_whose_arrays_ended_without_every_chunk_is_cancelled_once():
    ended_arrays = replace(RUNNING, arrays_queued=False)
    assert _decide(ended_arrays) is _Next.CANCEL_REDUCE
    assert _decide(replace(ended_arrays, reduce_checked=True)) is _Next.WAIT


def test_a_loss_error_fails_the_trial_at_once_unless_told_to_go_on():
    failed = replace(RUNNING, failed_chunks=frozenset({1}))
    assert _decide(failed) is _Next.FAIL_LOSS
    assert _decide(replace(failed, fail_on_chunk_error=False)) is _Next.WAIT


def test_an_unimportable_loss_stops_the_run_even_when_going_on_after_loss_errors():
    view = replace(RUNNING, failed_chunks=frozenset({0}), import_failed=True, fail_on_chunk_error=False)
    assert _decide(view) is _Next.STOP_RUN


def test_after_the_jobs_a_summary_from_the_reduce_job_completes_the_trial():
    assert _decide(replace(ENDED, summary_valid=True)) is _Next.COMPLETE_FROM_SUMMARY


def test_after_the_jobs_all_chunks_without_a_summary_are_reduced_by_the_controller():
    assert _decide(replace(ENDED, all_chunks_done=True, missing_chunks=frozenset())) is _Next.COMPLETE


@pytest.mark.parametrize(("retries_left", "expected"), [(True, _Next.RETRY), (False, _Next.FAIL_NO_RESULT)])
def test_missing_chunks_without_a_loss_error_are_retried_while_retries_are_left(retries_left, expected):
    assert _decide(replace(ENDED, retries_left=retries_left)) is expected


def test_with_fail_on_chunk_error_false_chunks_that_failed_are_left_out_once_then_the_trial_fails():
    view = replace(ENDED, failed_chunks=frozenset({2, 3}), fail_on_chunk_error=False)
    assert _decide(view) is _Next.REDUCE_PARTIAL
    assert _decide(replace(view, partial_reduce=True)) is _Next.FAIL_ALL_CHUNKS
    every_chunk = replace(view, failed_chunks=frozenset(range(4)), missing_chunks=frozenset(range(4)))
    assert _decide(every_chunk) is _Next.FAIL_ALL_CHUNKS


def test_a_trial_refused_by_a_submit_limit_submits_again_only_when_there_is_room():
    waiting = replace(ENDED, waiting_for_room=True)
    assert _decide(waiting) is _Next.WAIT
    assert _decide(replace(waiting, room=True)) is _Next.SUBMIT


def test_a_trial_the_pruner_gives_up_is_pruned_while_its_jobs_run_before_any_other_rule():
    assert _decide(replace(RUNNING, prune=True)) is _Next.PRUNE
    assert _decide(replace(RUNNING, prune=True, overdue=True)) is _Next.PRUNE
    assert _decide(replace(ENDED, prune=True, retries_left=True)) is _Next.RETRY  # nothing left to cancel
