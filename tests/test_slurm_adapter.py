"""The Slurm adapter's small pieces against text recorded from the real Slurm 22.05 here."""

from __future__ import annotations

import pytest

from slurptuna import (
    SlurmError,
    _array_groups,
    _array_spec,
    _format_ranges,
    _is_qos_error,
    _parse_job_id,
    _parse_sacct,
    _parse_squeue,
    _slurm_time,
)


def test_parsable_job_id_with_and_without_cluster():
    assert _parse_job_id("437\n") == "437"
    assert _parse_job_id("438;cluster1\n") == "438"
    with pytest.raises(SlurmError, match="could not read a job id"):
        _parse_job_id("Submitted batch job 12\n")


def test_squeue_lines_for_pending_arrays_running_tasks_and_ended_jobs():
    text = "12_[4-9%4]|PENDING\n12_0|RUNNING\n12_1|COMPLETING\n13|PENDING\n20|COMPLETED\n22_1|FAILED\n"
    states = _parse_squeue(text)
    assert states == {
        "12": {"PENDING", "RUNNING", "COMPLETING"},
        "13": {"PENDING"},
        "20": {"COMPLETED"},
        "22": {"FAILED"},
    }


def test_sacct_rows_per_array_task_and_cancelled_by_user():
    text = "437_1|FAILED|1:0\n437_2|COMPLETED|0:0\n438|TIMEOUT|0:15\n439_0|CANCELLED by 0|0:0\n"
    assert _parse_sacct(text) == {
        ("437", 1): "FAILED",
        ("437", 2): "COMPLETED",
        ("438", None): "TIMEOUT",
        ("439", 0): "CANCELLED",
    }


@pytest.mark.parametrize(
    ("stderr", "about_qos"),
    [
        ("sbatch: error: Batch job submission failed: Invalid qos specification", True),
        ("sbatch: error: Batch job submission failed: Job violates accounting/QOS policy", True),
        (
            "sbatch: error: Batch job submission failed: Invalid account or account/partition combination specified",
            False,
        ),
        ("sbatch: error: Batch job submission failed: More processors requested than permitted", False),
    ],
)
def test_only_errors_about_the_qos_count_as_qos_errors(stderr, about_qos):
    assert _is_qos_error(stderr) is about_qos


def test_array_specs_compress_ranges_and_carry_the_throttle():
    assert _format_ranges([0, 1, 2, 5, 7, 8]) == "0-2,5,7-8"
    assert _array_spec([3, 4, 9], 80) == "3-4,9%80"
    assert _array_spec([0], None) == "0"


def test_arrays_are_split_below_max_array_size_with_renumbered_task_ids():
    assert _array_groups([0, 1, 999, 1000, 1001, 2500], 1001) == [(0, [0, 1, 999, 1000]), (1001, [0]), (2002, [498])]
    assert _array_groups(range(10), 4) == [(0, [0, 1, 2, 3]), (4, [0, 1, 2, 3]), (8, [0, 1])]


@pytest.mark.parametrize(("seconds", "text"), [(60, "0-00:01:00"), (7200, "0-02:00:00"), (90061, "1-01:01:01")])
def test_time_limits_in_slurm_format(seconds, text):
    assert _slurm_time(seconds) == text
