"""The Slurm adapter's small pieces against text recorded from the real Slurm 22.05 here."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import losses
import pytest

import slurptuna
from slurptuna import (
    RunPaths,
    SlurmBusy,
    SlurmError,
    SlurmFailure,
    _array_groups,
    _array_spec,
    _format_ranges,
    _parse_job_id,
    _parse_sacct,
    _parse_squeue,
    _slurm_time,
    classify_slurm_failure,
)

TEXTS = Path(__file__).resolve().parent / "slurm_texts"


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


BAD_QOS, LIMIT, TRANSIENT, OTHER = SlurmFailure
# What each answer recorded in slurm_texts/ means; None: the command succeeded (sacct asks
# slurmdbd, not slurmctld; scancel of an unknown job says nothing).
MEANING = {
    "sbatch_qos_unknown": BAD_QOS,
    "sbatch_qos_not_granted": BAD_QOS,
    "sbatch_qos_max_submit_per_user": LIMIT,
    "sbatch_qos_max_submit_per_user_array": LIMIT,
    "sbatch_qos_grp_submit": LIMIT,
    "sbatch_assoc_max_submit": LIMIT,
    "sbatch_assoc_max_submit_with_qos": LIMIT,
    "sbatch_assoc_grp_submit": LIMIT,
    "sbatch_max_job_count": LIMIT,
    "sbatch_max_job_count_timeout_120s": LIMIT,
    "sbatch_qos_max_wall_deny": OTHER,  # a time limit: waiting never makes room
    "sbatch_account_unknown": OTHER,
    "sbatch_partition_unknown": OTHER,
    "sbatch_too_many_cpus": OTHER,
    "sbatch_controller_stopped": TRANSIENT,
    "sbatch_controller_down": TRANSIENT,
    "squeue_controller_stopped": TRANSIENT,
    "squeue_controller_down": TRANSIENT,
    "scancel_controller_stopped": TRANSIENT,
    "scancel_controller_down": TRANSIENT,
    "sacct_slurmdbd_down": TRANSIENT,
    "squeue_unknown_job_id": OTHER,
    "scancel_unknown_job_id_verbose": OTHER,
    "sacct_controller_stopped": None,
    "sacct_controller_down": None,
    "sacct_unknown_job_id": None,
    "squeue_unknown_job_ids": None,
    "scancel_unknown_job_id": None,
    "scancel_unknown_and_ended": None,
}


def recorded(name: str) -> dict:
    return json.loads((TEXTS / f"{name}.json").read_text())


def test_every_recorded_answer_has_a_stated_meaning():
    assert sorted(p.stem for p in TEXTS.glob("*.json")) == sorted(MEANING)


@pytest.mark.parametrize("name", sorted(MEANING))
def test_a_recorded_answer_is_classified_by_its_text(name):
    answer = recorded(name)
    assert answer["recorded"].startswith("slurm-wlm 22.05.8")
    if MEANING[name] is None:
        assert (answer["returncode"], answer["stderr"]) == (0, "")
    else:
        assert answer["returncode"] != 0 or answer["stderr"]
        assert classify_slurm_failure(answer["returncode"], answer["stderr"]) is MEANING[name]


def test_the_word_qos_alone_does_not_make_a_bad_qos():
    policy = recorded("sbatch_qos_max_submit_per_user")["stderr"]
    assert "QOS" in policy and classify_slurm_failure(1, policy) is LIMIT
    assert classify_slurm_failure(1, "sbatch: error: Batch job submission failed: qos is busy") is OTHER


def test_the_policy_text_without_the_limits_name_counts_as_a_submit_limit():
    last_line = recorded("sbatch_assoc_max_submit")["stderr"].splitlines()[-1]
    assert "QOS policy (job submit limit" in last_line
    assert classify_slurm_failure(1, last_line) is LIMIT


def test_a_command_that_timed_out_is_transient_whatever_it_printed():
    assert classify_slurm_failure(124, "sbatch timed out after 120 s") is TRANSIENT
    assert classify_slurm_failure(124, "") is TRANSIENT


def test_slurm_commands_run_in_their_own_session_and_a_timeout_keeps_what_they_said():
    session = slurptuna._run_slurm(["sh", "-c", "ps -o sid= -p $$"])
    assert int(session.stdout) != os.getsid(0)
    slow = slurptuna._run_slurm(["sh", "-c", "echo 'sbatch: error: early' >&2; sleep 5"], timeout=0.5)
    assert slow.returncode == 124
    assert slow.stderr == "sbatch: error: early\nsh timed out after 0.5 s"


@pytest.fixture
def executor(tmp_path, monkeypatch):
    """A Slurm executor with QoS "short" whose sbatch answers come from a list, recorded."""
    monkeypatch.setattr(slurptuna, "_which", lambda name: "/usr/bin/" + name)
    settings, _ = slurptuna._resolve_settings(losses.quadratic, {"mode": "distributed", "slurm_qos": "short"})
    run = RunPaths(tmp_path / "run")
    answers, calls = [], []

    def sbatch(argv, env=None, timeout=120):
        calls.append(list(argv))
        return answers.pop(0)

    monkeypatch.setattr(slurptuna, "_run_slurm", sbatch)
    made = slurptuna._SlurmExecutor(settings, run)
    made.answers, made.calls = answers, calls
    return made


def answered(name: str) -> subprocess.CompletedProcess:
    answer = recorded(name)
    return subprocess.CompletedProcess(answer["command"], answer["returncode"], answer["stdout"], answer["stderr"])


@pytest.mark.parametrize(
    ("name", "kind"),
    [
        ("sbatch_qos_max_submit_per_user", LIMIT),
        ("sbatch_assoc_max_submit_with_qos", LIMIT),
        ("sbatch_max_job_count", LIMIT),
        ("sbatch_controller_stopped", TRANSIENT),
        ("sbatch_controller_down", TRANSIENT),
    ],
)
def test_a_limit_or_an_unreachable_slurm_raises_slurm_busy_and_keeps_the_qos(executor, name, kind):
    executor.answers += [answered(name), subprocess.CompletedProcess([], 0, "77\n", "")]
    with pytest.raises(SlurmBusy) as raised:
        executor._sbatch(["--job-name=t"], ["true"])
    assert raised.value.kind is kind
    assert recorded(name)["stderr"].strip().splitlines()[-1] in str(raised.value)
    assert executor._sbatch(["--job-name=t"], ["true"]) == "77"
    assert [any(a == "--qos=short" for a in argv) for argv in executor.calls] == [True, True]


def test_a_bad_qos_is_dropped_and_the_job_submitted_without_it(executor):
    executor.answers += [answered("sbatch_qos_not_granted"), subprocess.CompletedProcess([], 0, "78\n", "")]
    assert executor._sbatch(["--job-name=t"], ["true"]) == "78"
    assert [any(a.startswith("--qos") for a in argv) for argv in executor.calls] == [True, False]


def test_any_other_refusal_raises_a_plain_slurm_error_with_sbatchs_message(executor):
    executor.answers.append(answered("sbatch_qos_max_wall_deny"))
    with pytest.raises(SlurmError, match="QOSMaxWallDurationPerJobLimit") as raised:
        executor._sbatch(["--job-name=t"], ["true"])
    assert not isinstance(raised.value, SlurmBusy)


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
