"""The Slurm adapter's small pieces against text recorded from the real Slurm 22.05 here."""

from __future__ import annotations

import importlib.util
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
    _format_ranges,
    _parse_job_id,
    _parse_sacct,
    _parse_sacctmgr_job_limits,
    _parse_slurm_config,
    _parse_squeue,
    _sacctmgr_assoc_argv,
    _sacctmgr_qos_argv,
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
    jobs = _parse_squeue(text)
    assert {job: {line.state for line in lines} for job, lines in jobs.items()} == {
        "12": {"PENDING", "RUNNING", "COMPLETING"},
        "13": {"PENDING"},
        "20": {"COMPLETED"},
        "22": {"FAILED"},
    }
    assert [job for job, lines in jobs.items() if any(line.queued for line in lines)] == ["12", "13"]


def test_squeue_lines_recorded_from_the_real_slurm_give_states_reasons_and_task_counts():
    def as_status_asks(name: str) -> str:  # the recorded %i|%F|%K|%A|%T|%r, as -o %i|%T|%r shows it
        return "".join(
            f"{f[0]}|{f[4]}|{f[5]}\n" for f in (line.split("|") for line in recorded(name)["stdout"].splitlines())
        )

    def shown(name: str) -> dict[str, list[tuple[str, str, int]]]:
        parsed = _parse_squeue(as_status_asks(name))
        return {job: [(line.state, line.reason, len(line.task_ids)) for line in lines] for job, lines in parsed.items()}

    assert shown("squeue_pending_array") == {"2": [("PENDING", "JobHeldUser", 8)]}
    assert _parse_squeue(as_status_asks("squeue_pending_array"))["2"][0].task_ids == tuple(range(8))
    assert shown("squeue_running_array_throttled") == {
        "8": [("PENDING", "JobArrayTaskLimit", 3), ("RUNNING", "None", 1), ("RUNNING", "None", 1)],
        "9": [("PENDING", "AssocMaxJobsLimit", 1), ("RUNNING", "None", 1), ("RUNNING", "None", 1)],
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
    "sbatch_max_job_count_after_pending_array": LIMIT,
    "sbatch_qos_max_submit_per_user_array_whole": LIMIT,
    "sbatch_assoc_max_submit_array_whole": LIMIT,
    "sbatch_assoc_max_submit_array_throttled": LIMIT,
    "sbatch_assoc_max_submit_after_pending_array": LIMIT,
    "sbatch_assoc_max_submit_array_mixed_qos": LIMIT,
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
    "sbatch_assoc_max_submit_array_fits": None,
    "sbatch_assoc_max_submit_array_mixed_qos_fits": None,
    "squeue_pending_array": None,
    "squeue_pending_array_expanded": None,
    "squeue_running_array_qos_max_jobs": None,
    "squeue_running_array_throttled": None,
    "squeue_running_array_throttled_expanded": None,
    "scontrol_show_config": None,
    "scontrol_show_config_limits": None,
    "sacctmgr_show_qos": None,
    "sacctmgr_show_assoc": None,
    "sacctmgr_show_assoc_inherited": None,
    "sacctmgr_show_assoc_unlimited": None,
    "sacctmgr_show_qos_no_accounting": OTHER,  # no accounting: no limits to read, none enforced
    "sacctmgr_show_assoc_no_accounting": OTHER,
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
def executor(tmp_path):
    """A Slurm executor (QoS "short") whose Slurm answers come from a list, on a clock that only waits move.

    Its commands and waits are recorded; nothing sleeps and nothing patches the module.
    """
    settings, _ = slurptuna._resolve_settings(
        losses.quadratic, {"mode": "distributed", "slurm_qos": "short", "slurm_unavailable_minutes": 1}
    )
    answers, calls, waits, now = [], [], [], [0.0]

    def slurm(argv, env=None, timeout=120):
        calls.append(list(argv))
        answer = answers.pop(0)
        return answer(argv) if callable(answer) else answer

    def sleep(seconds):
        waits.append(seconds)
        now[0] += seconds
        return False  # not stopped

    made = slurptuna._SlurmExecutor(
        settings, RunPaths(tmp_path / "run"), threading.Event(), clock=lambda: now[0], sleep=sleep, slurm=slurm
    )
    made.answers, made.calls, made.waits = answers, calls, waits
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


def test_a_failed_sbatch_whose_job_was_queued_anyway_is_adopted_not_submitted_again(executor):
    def squeue_shows_the_job(argv):
        return subprocess.CompletedProcess(argv, 0, f"91|{_comment(executor.calls[0])}\n", "")

    executor.answers += [answered("sbatch_controller_stopped"), squeue_shows_the_job]
    assert executor._sbatch(["--job-name=t"], ["true"]) == "91"
    assert [argv[0] for argv in executor.calls] == ["sbatch", "squeue"]


def test_slurm_silent_for_longer_than_slurm_unavailable_minutes_stops_with_the_last_answer(executor):
    executor.answers += [answered("sbatch_controller_down")] + [answered("squeue_controller_down")] * 10
    with pytest.raises(SlurmError, match=r"has not answered for 1 minutes.*Unable to contact slurm controller"):
        executor._sbatch(["--job-name=t"], ["true"])
    # sbatch is not sent again before squeue answers; it is looked for after waits of 1, 2, 4 ... s, until 60 s
    assert executor.waits == [1.0, 2.0, 4.0, 8.0, 16.0, 29.0]
    assert [argv[0] for argv in executor.calls] == ["sbatch"] + ["squeue"] * 7


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


def test_ranges_are_compressed():  # the --array throttle: test_distributed_fake's sbatch options
    assert _format_ranges([0, 1, 2, 5, 7, 8]) == "0-2,5,7-8"


@pytest.mark.parametrize(("seconds", "text"), [(60, "0-00:01:00"), (7200, "0-02:00:00"), (90061, "1-01:01:01")])
def test_time_limits_in_slurm_format(seconds, text):
    assert _slurm_time(seconds) == text


# ---------------------------------------------------------------- a site's limits: scontrol show config, sacctmgr


def test_slurm_config_gives_max_array_size_and_max_job_count_as_scontrol_prints_them():
    defaults = _parse_slurm_config(recorded("scontrol_show_config")["stdout"])
    assert (defaults["MaxArraySize"], defaults["MaxJobCount"], defaults["MinJobAge"]) == ("1001", "10000", "300 sec")
    assert defaults["SlurmctldHost[0]"] == "vm(localhost)" and "Slurmctld(primary) at vm is UP" not in defaults
    site = _parse_slurm_config(recorded("scontrol_show_config_limits")["stdout"])
    assert (site["MaxArraySize"], site["MaxJobCount"]) == ("101", "12")


def test_slurm_config_reads_the_fake_slurms_limits_alike(fake_slurm):
    env = {**os.environ, "FAKE_SLURM_MAX_ARRAY_SIZE": "101", "FAKE_SLURM_MAX_JOB_COUNT": "12"}
    shown = subprocess.run(["scontrol", "show", "config"], capture_output=True, text=True, env=env, check=True)
    config = _parse_slurm_config(shown.stdout)
    assert (config["MaxArraySize"], config["MaxJobCount"]) == ("101", "12")


def test_the_sacctmgr_calls_are_those_recorded():
    assert _sacctmgr_qos_argv() == recorded("sacctmgr_show_qos")["command"]
    assert _sacctmgr_assoc_argv("root") == recorded("sacctmgr_show_assoc")["command"]


def limits_recorded(assoc: str, qos: str | None = None, account: str | None = None) -> int | None:
    qos_stdout = recorded("sacctmgr_show_qos")["stdout"]  # normal: no limits; capped: 5 queued, 3 running
    return _parse_sacctmgr_job_limits(recorded(assoc)["stdout"], qos_stdout, qos=qos, account=account)


def test_job_limits_are_the_smallest_of_the_association_and_the_qos_the_jobs_run_under():
    # association MaxSubmitJobs=8 MaxJobs=4, QoS capped MaxSubmitJobsPerUser=5 MaxJobsPerUser=3
    assert limits_recorded("sacctmgr_show_assoc", qos="capped") == 5
    assert limits_recorded("sacctmgr_show_assoc", qos="normal") == 8
    # no --qos, no default QoS and two granted: slurmctld uses normal
    assert limits_recorded("sacctmgr_show_assoc") == 8


def test_an_accounts_limit_shown_on_the_users_row_applies_and_blank_means_unlimited():
    assert limits_recorded("sacctmgr_show_assoc_inherited") == 20
    assert limits_recorded("sacctmgr_show_assoc_unlimited") is None
    assert limits_recorded("sacctmgr_show_assoc_unlimited", qos="capped") == 5


def test_without_accounting_the_limits_are_unknown():
    assoc, qos = recorded("sacctmgr_show_assoc_no_accounting"), recorded("sacctmgr_show_qos_no_accounting")
    assert (assoc["returncode"], qos["returncode"]) == (1, 1)
    assert _parse_sacctmgr_job_limits(assoc["stdout"], qos["stdout"]) is None


def test_the_default_qos_or_the_only_granted_qos_is_the_one_jobs_run_under():
    qos = "normal||||||\ncapped|5|3||||\nshort|50|||||\n"
    default_capped = "c|root|u||capped,normal,short|capped||||\n"
    only_short = "c|root|u||short|||||\n"
    assert _parse_sacctmgr_job_limits(default_capped, qos) == 5
    assert _parse_sacctmgr_job_limits(only_short, qos) == 50
    assert _parse_sacctmgr_job_limits(default_capped, qos, qos="short") == 50


def test_group_limits_bound_the_users_jobs_and_an_account_narrows_the_associations():
    qos = "normal|||||100|40\n"
    two_accounts = "c|lab|u||normal||||30|\nc|other|u||normal||10|2||\n"
    assert _parse_sacctmgr_job_limits(two_accounts, qos) == 10  # never ask for more
    assert _parse_sacctmgr_job_limits(two_accounts, qos, account="lab") == 30


def test_job_limits_read_from_the_fake_slurm_are_those_of_its_settings(fake_slurm):
    env = {
        **os.environ,
        "FAKE_SLURM_QOS_LIMITS": "capped:MaxSubmitJobsPerUser=5:MaxJobsPerUser=3",
        "FAKE_SLURM_MAX_SUBMIT_JOBS": "8",
        "FAKE_SLURM_MAX_JOBS": "4",
    }
    user = os.environ.get("USER", "root")
    assoc = subprocess.run(_sacctmgr_assoc_argv(user), capture_output=True, text=True, env=env, check=True)
    qos = subprocess.run(_sacctmgr_qos_argv(), capture_output=True, text=True, env=env, check=True)
    assert _parse_sacctmgr_job_limits(assoc.stdout, qos.stdout, qos="capped") == 5
    assert _parse_sacctmgr_job_limits(assoc.stdout, qos.stdout) == 8


def test_the_loss_scripts_bytecode_is_left_for_the_workers_and_renewed_once_the_script_changed(tmp_path):
    script = tmp_path / "fit_for_bytecode.py"
    script.write_text(
        "from slurptuna import loss\n\n"
        "@loss(name='bytecode_probe', parameter_space={'x': (0.0, 1.0)})\n"
        "def bytecode_probe(params, seed):\n    return params['x']\n"
    )
    slurptuna._import_file(str(script))  # as a launched script's loss is found: by its file
    settings, _ = slurptuna._resolve_settings("bytecode_probe", {"mode": "distributed"})
    cached = Path(importlib.util.cache_from_source(str(script)))
    slurptuna._compile_for_workers(settings)
    assert cached.exists()  # the workers' import reads it instead of compiling the script
    stale = script.stat().st_mtime - 10
    os.utime(cached, (stale, stale))  # as if compiled from an older version of the script
    slurptuna._compile_for_workers(settings)
    assert cached.stat().st_mtime >= script.stat().st_mtime
