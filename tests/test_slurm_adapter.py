"""The Slurm adapter's small pieces against text recorded from the real Slurm 22.05 here."""

from __future__ import annotations

import json
import os
import subprocess
import threading
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

pytestmark = pytest.mark.compat  # fast: .ci/run also runs it on the other Pythons and the optuna floor

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
    """A Slurm executor (QoS "short") whose Slurm answers come from a list; calls and waits recorded, none slept."""
    monkeypatch.setattr(slurptuna, "_which", lambda name: "/usr/bin/" + name)
    settings, _ = slurptuna._resolve_settings(
        losses.quadratic, {"mode": "distributed", "slurm_qos": "short", "slurm_unavailable_minutes": 1}
    )
    run = RunPaths(tmp_path / "run")
    answers, calls = [], []

    def slurm(argv, env=None, timeout=120):
        calls.append(list(argv))
        return answers.pop(0)

    class Clockless(threading.Event):
        waits: list[float] = []

        def wait(self, seconds=None):
            self.waits.append(seconds)
            return False

    monkeypatch.setattr(slurptuna, "_run_slurm", slurm)
    made = slurptuna._SlurmExecutor(settings, run, Clockless())
    made.answers, made.calls, made.waits = answers, calls, Clockless.waits
    return made


def answered(name: str) -> subprocess.CompletedProcess:
    answer = recorded(name)
    return subprocess.CompletedProcess(answer["command"], answer["returncode"], answer["stdout"], answer["stderr"])


@pytest.mark.parametrize(
    "name", ["sbatch_qos_max_submit_per_user", "sbatch_assoc_max_submit_with_qos", "sbatch_max_job_count"]
)
def test_a_submit_limit_raises_slurm_busy_and_keeps_the_qos(executor, name):
    executor.answers += [answered(name), subprocess.CompletedProcess([], 0, "77\n", "")]
    with pytest.raises(SlurmBusy) as raised:
        executor._sbatch(["--job-name=t"], ["true"])
    assert raised.value.kind is LIMIT
    assert recorded(name)["stderr"].strip().splitlines()[-1] in str(raised.value)
    assert executor._sbatch(["--job-name=t"], ["true"]) == "77"
    assert [any(a == "--qos=short" for a in argv) for argv in executor.calls] == [True, True]


def _comment(argv: list[str]) -> str:
    return next(a for a in argv if a.startswith("--comment=")).split("=", 1)[1]


@pytest.mark.parametrize("name", ["sbatch_controller_stopped", "sbatch_controller_down"])
def test_while_slurm_does_not_answer_sbatch_looks_for_its_job_then_asks_again_with_the_same_comment(executor, name):
    not_ours = subprocess.CompletedProcess([], 0, "12|slurptuna:other\n", "")
    executor.answers += [
        answered(name),
        answered("squeue_controller_stopped"),  # the lookup fails too: wait, then look again
        not_ours,  # answered, but maybe before slurmctld queued the sbatch it held: wait, then look again
        not_ours,  # a second answer, after the pause: the job is surely not there
        answered(name),
        not_ours,
        not_ours,
        subprocess.CompletedProcess([], 0, "78\n", ""),
    ]
    assert executor._sbatch(["--job-name=t"], ["true"]) == "78"
    commands = [argv[0] for argv in executor.calls]
    assert commands == ["sbatch", "squeue", "squeue", "squeue", "sbatch", "squeue", "squeue", "sbatch"]
    assert all("-t" in argv and "all" in argv for argv in executor.calls if argv[0] == "squeue")  # ended ones too
    sbatches = [argv for argv in executor.calls if argv[0] == "sbatch"]
    assert len({_comment(argv) for argv in sbatches}) == 1 and all("--qos=short" in argv for argv in sbatches)
    assert executor.waits == [1.0, 2.0, 4.0]  # backoff over the whole outage, with the clock of the wait, not sleep


def test_a_failed_sbatch_whose_job_was_queued_anyway_is_adopted_not_submitted_again(executor, monkeypatch):
    executor.answers.append(answered("sbatch_controller_stopped"))
    executor.answers.append(subprocess.CompletedProcess([], 0, "", ""))  # filled in below, with the comment

    def squeue_shows_the_job(argv, env=None, timeout=120):
        executor.calls.append(list(argv))
        if argv[0] == "squeue":
            return subprocess.CompletedProcess(argv, 0, f"91|{_comment(executor.calls[0])}\n", "")
        return executor.answers.pop(0)

    monkeypatch.setattr(slurptuna, "_run_slurm", squeue_shows_the_job)
    assert executor._sbatch(["--job-name=t"], ["true"]) == "91"
    assert [argv[0] for argv in executor.calls] == ["sbatch", "squeue"]


def test_slurm_silent_for_longer_than_slurm_unavailable_minutes_stops_with_the_last_answer(executor, monkeypatch):
    clock = iter(range(0, 10_000, 25))
    monkeypatch.setattr(slurptuna.time, "monotonic", lambda: float(next(clock)))
    executor.answers += [answered("sbatch_controller_down")] + [answered("squeue_controller_down")] * 10
    with pytest.raises(SlurmError, match=r"has not answered for 1 minutes.*Unable to contact slurm controller"):
        executor._sbatch(["--job-name=t"], ["true"])
    # sbatch is not sent again before squeue answers; looked for at 0, 25, 50 and 75 s: past the 60 s limit
    assert [argv[0] for argv in executor.calls] == ["sbatch"] + ["squeue"] * 4


def test_the_outage_rule_backs_off_and_gives_up_at_its_limit():
    outage = slurptuna._Outage(limit=100.0)
    assert [outage.next_delay(now) for now in (0.0, 1.0, 3.0, 7.0, 15.0, 31.0, 63.0, 99.0, 100.0)] == [
        1.0,
        2.0,
        4.0,
        8.0,
        16.0,
        32.0,
        37.0,
        1.0,
        None,
    ]
    assert outage.end(now=120.0) == 120.0 and outage.end(now=121.0) is None
    assert outage.next_delay(200.0) == 1.0  # a new outage starts over


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
