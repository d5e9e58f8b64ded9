"""Tests of the fake Slurm commands in fake_slurm/ (not of slurptuna itself)."""

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import wait_for

FAKE = Path(__file__).resolve().parent.parent / "fake_slurm"


@pytest.fixture
def slurm(fake_slurm, tmp_path, monkeypatch):
    """Fake Slurm first on PATH (conftest's fake_slurm), no other FAKE_SLURM_ setting, cwd tmp_path."""
    state = fake_slurm.state
    for name in list(os.environ):
        if name.startswith("FAKE_SLURM_") and name != "FAKE_SLURM_DIR":
            monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)
    yield state
    jobs = [p.stem for p in (state / "jobs").glob("*.json")]
    if jobs:  # leave no job running behind
        subprocess.run(["scancel", *jobs], capture_output=True)


def run(*cmd, env=None, check=False, cwd=None):
    full_env = {**os.environ, **(env or {})}
    proc = subprocess.run(cmd, capture_output=True, text=True, env=full_env, cwd=cwd)
    if check:
        assert proc.returncode == 0, proc.stderr
    return proc


def submit(*args, env=None):
    proc = run("sbatch", "--parsable", *args, env=env, check=True)
    return int(proc.stdout.strip())


def squeue(*args):
    return run("squeue", "-h", *args, check=True).stdout.split("\n")[:-1]


def sacct(jid):
    out = run("sacct", "-X", "-n", "-P", "-j", str(jid), "-o", "jobid,state,exitcode", check=True).stdout
    return {line.split("|")[0]: line.split("|", 1)[1] for line in out.splitlines()}


def all_ended(jid, n):
    states = sacct(jid)
    done = len(states) == n and all(s.split("|")[0] not in ("PENDING", "RUNNING") for s in states.values())
    return states if done else None


def test_parsable_plain_and_submission_log(slurm):
    t0 = time.time()
    jid = submit("--wrap", "true")
    assert time.time() - t0 < 1.0
    assert jid == 1000
    proc = run("sbatch", "-J", "plain", "--wrap", "true", check=True)
    assert re.fullmatch(r"Submitted batch job 1001\n", proc.stdout)
    wait_for(lambda: not squeue())
    log = [json.loads(x) for x in (slurm / "submissions.jsonl").read_text().splitlines()]
    assert [x["job_id"] for x in log] == [1000, 1001]
    assert log[1]["argv"] == ["-J", "plain", "--wrap", "true"]
    assert log[1]["options"]["job-name"] == "plain"
    assert log[1]["array_tasks"] is None
    assert sacct(1000) == {"1000": "COMPLETED|0:0"}


def test_array_throttle_is_never_exceeded(slurm):
    script = Path("task.sh")
    script.write_text(
        "#!/bin/sh\necho start $(date +%s.%N) > t_$SLURM_ARRAY_TASK_ID\n"
        "sleep 0.15\necho end $(date +%s.%N) >> t_$SLURM_ARRAY_TASK_ID\n"
    )
    jid = submit("--array=0-7%2", str(script))
    pending = wait_for(lambda: [x for x in squeue("-j", str(jid), "-o", "%i %T %r") if "TaskLimit" in x])
    assert re.fullmatch(rf"{jid}_\[\d-7%2\] PENDING JobArrayTaskLimit", pending[0])
    states = wait_for(lambda: all_ended(jid, 8))
    assert set(states.values()) == {"COMPLETED|0:0"}
    spans = []
    for k in range(8):
        start, end = (float(line.split()[1]) for line in Path(f"t_{k}").read_text().splitlines())
        spans.append((start, end))
    for start, _ in spans:  # tasks running at each start instant
        assert sum(s <= start < e for s, e in spans) <= 2


def test_pending_array_collapsed_and_dependency_never_satisfied(slurm):
    blocker = submit("--wrap", "sleep 30")
    jid = submit("--array=0-3,5,7-9%4", f"--dependency=afterok:{blocker}", "--wrap", "true")
    assert squeue("-j", str(jid), "-o", "%i|%T|%r|%F|%K") == [
        f"{jid}_[0-3,5,7-9%4]|PENDING|Dependency|{jid}|0-3,5,7-9%4"
    ]
    assert len(squeue("-j", str(jid), "-r")) == 8
    run("scancel", str(blocker), check=True)
    # without --kill-on-invalid-dep the dependant stays pending for ever
    wait_for(lambda: squeue("-j", str(jid), "-o", "%T %r") == ["PENDING DependencyNeverSatisfied"])
    run("scancel", str(jid), check=True)
    assert squeue("-j", str(jid)) == []
    assert squeue("-t", "all", "-j", str(jid), "-o", "%i %T") == [f"{jid}_[0-3,5,7-9%4] CANCELLED"]


def test_afterok_runs_after_every_task(slurm):
    array = submit("--array=0-2", "--wrap", "sleep 0.2; date +%s.%N > end_$SLURM_ARRAY_TASK_ID")
    reduce = submit(f"--dependency=afterok:{array}", "--wrap", "date +%s.%N > reduce")
    wait_for(lambda: all_ended(reduce, 1))
    assert sacct(reduce) == {str(reduce): "COMPLETED|0:0"}
    start = float(Path("reduce").read_text())
    assert all(float(Path(f"end_{k}").read_text()) < start for k in range(3))


def test_afterok_on_failed_task_kills_dependant_and_fault_fires_once(slurm):
    env = {"FAKE_SLURM_FAIL_TASKS": "1"}
    array = submit("--array=0-2", "-o", "%A_%a.log", "--wrap", "echo ran", env=env)
    kill = submit(f"--dependency=afterok:{array}", "--kill-on-invalid-dep=yes", "--wrap", "true")
    keep = submit("-d", f"afterok:{array}", "--wrap", "true")
    wait_for(lambda: all_ended(kill, 1))
    assert sacct(array) == {f"{array}_0": "COMPLETED|0:0", f"{array}_1": "FAILED|1:0", f"{array}_2": "COMPLETED|0:0"}
    assert Path(f"{array}_1.log").read_text() == "fake_slurm: injected failure\n"
    assert squeue("-t", "all", "-j", str(kill), "-o", "%T %r") == ["CANCELLED DependencyNeverSatisfied"]
    wait_for(lambda: squeue("-j", str(keep), "-o", "%T %r") == ["PENDING DependencyNeverSatisfied"])
    retry = submit("--array=1", "--wrap", "echo ran", env=env)  # the fault fired once already
    assert set(wait_for(lambda: all_ended(retry, 1)).values()) == {"COMPLETED|0:0"}


def test_timeout(slurm):
    env = {"FAKE_SLURM_TIME_SCALE": "0.01", "FAKE_SLURM_TIMEOUT_TASKS": "1"}  # 1 minute = 0.6 s
    single = submit("--time=1", "-e", "single.err", "--wrap", "sleep 30", env=env)
    array = submit("--time=0:1", "--array=0-1", "--wrap", "true", env=env)
    wait_for(lambda: all_ended(single, 1) and all_ended(array, 2))
    assert sacct(single) == {str(single): "TIMEOUT|0:15"}
    assert sacct(array) == {f"{array}_0": "COMPLETED|0:0", f"{array}_1": "TIMEOUT|0:15"}
    line = Path("single.err").read_text()
    assert re.fullmatch(
        rf"slurmstepd-localhost: error: \*\*\* JOB {single} ON localhost CANCELLED AT "
        r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d DUE TO TIME LIMIT \*\*\*\n",
        line,
    )
    assert squeue("-t", "all", "-j", str(single), "-o", "%T %t %r") == ["TIMEOUT TO TimeLimit"]


def live_group_members(pgids):
    """Processes (not zombies: PID 1 may reap late) in the given process groups."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if fields[0] != "Z" and int(fields[2]) in pgids:
            found.append(stat.parent.name)
    return found


def test_scancel_kills_running_processes(slurm):
    array = submit("--array=0-3", "--wrap", "echo $$ > pid_$SLURM_ARRAY_TASK_ID; sleep 30")
    single = submit("--wrap", "sleep 30")
    wait_for(lambda: len([x for x in squeue("-o", "%T") if x == "RUNNING"]) == 5)
    pids = wait_for(lambda: [int(p.read_text()) for p in Path().glob("pid_*") if p.read_text()] or None)
    proc = run("scancel", str(array), str(single), "999999")
    assert proc.returncode == 1
    assert proc.stderr == "scancel: error: Kill job error on job id 999999: Invalid job id specified\n"
    wait_for(lambda: squeue() == [])
    assert not live_group_members(pids)
    assert set(sacct(array).values()) == {f"CANCELLED by {os.getuid()}|0:15"}


def test_qos_rejection_and_injected_sbatch_failure(slurm):
    proc = run("sbatch", "--qos=short", "--wrap", "true", env={"FAKE_SLURM_REJECT_QOS": "short,x"})
    assert (proc.returncode, proc.stdout) == (1, "")
    assert proc.stderr == "sbatch: error: Batch job submission failed: Invalid qos specification\n"
    submit("--qos=normal", "--wrap", "true", env={"FAKE_SLURM_REJECT_QOS": "short,x"})
    env = {"FAKE_SLURM_SBATCH_FAIL": "Socket timed out", "FAKE_SLURM_SBATCH_FAIL_CALLS": "4"}
    submit("--wrap", "true", env=env)  # call 3 passes, call 4 fails
    proc = run("sbatch", "--wrap", "true", env=env)
    assert proc.stderr == "sbatch: error: Batch job submission failed: Socket timed out\n"
    submit("--wrap", "true", env=env)
    log = [json.loads(x) for x in (slurm / "submissions.jsonl").read_text().splitlines()]
    assert [bool(x.get("rejected")) for x in log] == [True, False, False, True, False]


def test_squeue_transient_failures_are_counted(slurm, monkeypatch):
    monkeypatch.setenv("FAKE_SLURM_SQUEUE_FAIL", "2")
    for _ in range(2):
        proc = run("squeue", "-h")
        assert proc.returncode == 1
        assert proc.stderr == "slurm_load_jobs error: Socket timed out on send/recv operation\n"
    assert run("squeue", "-h").returncode == 0
    calls = [json.loads(x) for x in (slurm / "calls.jsonl").read_text().splitlines()]
    assert [c["cmd"] for c in calls] == ["squeue"] * 3


TEXTS = Path(__file__).resolve().parent / "slurm_texts"


def recorded(name):
    return json.loads((TEXTS / f"{name}.json").read_text())


def test_an_injected_sbatch_fault_answers_with_the_recorded_text_for_count_calls(slurm):
    env = {"FAKE_SLURM_SBATCH_FAULT": "sbatch_qos_max_submit_per_user:2"}
    limit = recorded("sbatch_qos_max_submit_per_user")
    for _ in range(2):
        proc = run("sbatch", "--parsable", "--qos=capped", "--wrap", "true", env=env)
        assert (proc.returncode, proc.stdout, proc.stderr) == (1, "", limit["stderr"])
    assert submit("--qos=capped", "--wrap", "true", env=env) == 1000  # the count ran out
    log = [json.loads(x) for x in (slurm / "submissions.jsonl").read_text().splitlines()]
    assert [x["job_id"] for x in log] == [None, None, 1000]
    assert log[0]["rejected"] == limit["stderr"]


def test_an_injected_sbatch_fault_without_a_count_answers_every_call(slurm):
    env = {"FAKE_SLURM_SBATCH_FAULT": "sbatch_controller_down"}
    for _ in range(3):
        proc = run("sbatch", "--parsable", "--wrap", "true", env=env)
        assert (
            proc.stderr
            == "sbatch: error: Batch job submission failed: Unable to contact slurm controller (connect failure)\n"
        )
    assert squeue("-t", "all") == []


def test_a_failing_sbatch_can_still_queue_its_job_as_after_a_timeout(slurm):
    env = {"FAKE_SLURM_SBATCH_FAULT": "sbatch_controller_stopped:1", "FAKE_SLURM_SBATCH_FAULT_QUEUES": "1"}
    proc = run("sbatch", "--parsable", "--comment=run-tag", "--wrap", "sleep 30", env=env)
    assert (proc.returncode, proc.stdout) == (1, "")
    assert "Socket timed out on send/recv operation" in proc.stderr
    assert squeue("-o", "%i|%k") == ["1000|run-tag"]  # found by its comment, though sbatch failed
    assert submit("--wrap", "true", env=env) == 1001


@pytest.mark.parametrize(
    ("command", "name"),
    [
        (["squeue", "-h"], "squeue_controller_stopped"),
        (["scancel", "1000"], "scancel_controller_down"),
        (["sacct", "-X", "-n", "-P", "-j", "1000"], "sacct_slurmdbd_down"),
    ],
)
def test_squeue_scancel_and_sacct_faults_answer_with_the_recorded_text(slurm, command, name):
    jid = submit("--wrap", "sleep 30")
    variable = f"FAKE_SLURM_{command[0].upper()}_FAULT"
    proc = run(*command, env={variable: f"{name}:1"})
    answer = recorded(name)
    assert (proc.returncode, proc.stdout, proc.stderr) == (answer["returncode"], "", answer["stderr"])
    assert squeue("-o", "%i") == [str(jid)]  # still queued: the injected scancel cancelled nothing
    assert run(*command, env={variable: f"{name}:1"}).stderr == ""  # the count ran out


def test_an_unknown_recorded_text_is_an_error_naming_the_file(slurm):
    proc = run("squeue", "-h", env={"FAKE_SLURM_SQUEUE_FAULT": "no_such_text"})
    assert proc.returncode == 1 and "no_such_text.json" in proc.stderr


def test_log_file_names(slurm):
    Path("logs").mkdir()
    array = submit(
        "--array=2-3",
        "-J",
        "nm",
        "-o",
        "logs/%A_%a_%j_%x.out",
        "-e",
        "logs/%x-%a.err",
        "--wrap",
        "echo out; echo err >&2",
    )
    single = submit("--wrap", "echo plain")
    default = submit("--array=0", "--wrap", "echo default")
    wait_for(lambda: all_ended(array, 2) and all_ended(single, 1) and all_ended(default, 1))
    task_ids = dict(line.split() for line in squeue("-t", "all", "-j", str(array), "-o", "%i %A"))
    for k in (2, 3):
        assert Path(f"logs/{array}_{k}_{task_ids[f'{array}_{k}']}_nm.out").read_text() == "out\n"
        assert Path(f"logs/nm-{k}.err").read_text() == "err\n"
    assert Path(f"slurm-{single}.out").read_text() == "plain\n"
    assert Path(f"slurm-{default}_0.out").read_text() == "default\n"


def test_task_environment(slurm, tmp_path):
    Path("sub").mkdir()
    script = tmp_path / "env.sh"
    script.write_text('#!/bin/sh\nenv > env_$SLURM_ARRAY_TASK_ID.txt\necho "$@" > args_$SLURM_ARRAY_TASK_ID\n')
    script.chmod(0o644)  # Slurm runs its own copy of the script: +x is not needed
    jid = int(
        run(
            "sbatch", "--parsable", "--array=3-5:2", "-c", "2", "-J", "envtest", str(script), "a b", "c", cwd="sub"
        ).stdout
    )
    wait_for(lambda: all_ended(jid, 2))
    seen = []
    for k in (3, 5):
        env = dict(
            line.split("=", 1) for line in (tmp_path / f"sub/env_{k}.txt").read_text().splitlines() if "=" in line
        )
        assert env["SLURM_ARRAY_JOB_ID"] == str(jid)
        assert env["SLURM_ARRAY_TASK_ID"] == str(k)
        assert (env["SLURM_ARRAY_TASK_COUNT"], env["SLURM_ARRAY_TASK_MIN"], env["SLURM_ARRAY_TASK_MAX"]) == (
            "2",
            "3",
            "5",
        )
        assert env["SLURM_CPUS_PER_TASK"] == "2"
        assert env["SLURM_JOB_NAME"] == "envtest"
        assert env["SLURM_SUBMIT_DIR"] == str(tmp_path / "sub")
        assert env["FAKE_SLURM_DIR"] == str(slurm)  # sbatch's environment is passed on
        assert (tmp_path / f"sub/args_{k}").read_text() == "a b c\n"
        seen.append(env["SLURM_JOB_ID"])
    assert len(set(seen)) == 2


def test_unknown_ids_max_array_size_and_no_accounting(slurm):
    proc = run("squeue", "-j", "999999")
    assert (proc.returncode, proc.stderr) == (1, "slurm_load_jobs error: Invalid job id specified\n")
    jid = submit("--wrap", "true", env={"FAKE_SLURM_MIN_JOB_AGE": "0.2"})
    assert run("squeue", "-h", "-o", "%i", "-j", f"{jid},999999", check=True).stdout in ("", f"{jid}\n")
    wait_for(lambda: all_ended(jid, 1))
    assert run("squeue", "-h", "-j", str(jid)).returncode == 0  # finished, not purged yet
    time.sleep(0.3)
    proc = run("squeue", "-h", "-j", str(jid), env={"FAKE_SLURM_MIN_JOB_AGE": "0.2"})
    assert (proc.returncode, proc.stderr) == (1, "slurm_load_jobs error: Invalid job id specified\n")

    env = {"FAKE_SLURM_MAX_ARRAY_SIZE": "10"}
    config = run("scontrol", "show", "config", env=env, check=True).stdout
    assert re.search(r"^MaxArraySize\s+= 10$", config, re.M)
    proc = run("sbatch", "--array=0-10", "--wrap", "true", env=env)
    assert (proc.returncode, proc.stderr) == (
        1,
        "sbatch: error: Batch job submission failed: Invalid job array specification\n",
    )
    submit("--array=0-9", "--wrap", "true", env=env)

    proc = run("sacct", "-X", "-n", "-P", "-j", str(jid), env={"FAKE_SLURM_NO_ACCOUNTING": "1"})
    assert (proc.returncode, proc.stderr) == (1, "sacct: error: Slurm accounting storage is disabled\n")


def test_option_and_time_parsing():
    sys.path.insert(0, str(FAKE))
    try:
        import _fakeslurm as fs
    finally:
        sys.path.remove(str(FAKE))
    assert fs.parse_array("0-9,12,15-20:2%4") == ([*range(10), 12, 15, 17, 19], 4)
    assert fs.format_ranges([0, 1, 2, 5, 7, 8]) == "0-2,5,7-8"
    for text, minutes in [
        ("5", 5),
        ("1:30", 2),
        ("2:00:00", 120),
        ("1-2", 1560),
        ("1-0:30", 1470),
        ("0-0:0:1", 1),
        ("UNLIMITED", None),
    ]:
        assert fs.parse_time(text) == minutes
    opts, pos = fs.parse_args(
        ["-J", "x", "--time", "5", "-c2", "--foo=bar", "s.sh", "-J", "y"],
        fs.SBATCH_SPEC,
        allow_unknown=True,
        stop_at_positional=True,
    )
    assert opts == {"job-name": "x", "time": "5", "cpus-per-task": "2", "foo": "bar"}
    assert pos == ["s.sh", "-J", "y"]


FAKE_WORKER = """
import json, os, sys
with open(os.path.join(os.environ["OUT_DIR"], "imports"), "a") as f:
    f.write(f"{os.getpid()}\\n")

def main(argv):
    task = os.environ["SLURM_ARRAY_TASK_ID"]
    with open(os.path.join(os.environ["OUT_DIR"], f"task_{task}"), "w") as f:
        json.dump([argv, sys.argv[1:], os.getcwd(), sys.stdin.read()], f)
    print(f"out {task}")
    print(f"err {task}", file=sys.stderr)
    return int(argv[-1]) if task == "2" else 0

if __name__ == "__main__":  # like the real one: run under the module's own name
    import slurptuna
    sys.exit(slurptuna.main(sys.argv[1:]))
"""


@pytest.mark.parametrize("fork", ["1", "0"])
def test_fork_python_fast_launch(slurm, tmp_path, fork):
    """FAKE_SLURM_FORK_PYTHON=1: `python -m slurptuna ...` tasks fork from one import per job."""
    lib, out = tmp_path / "lib", tmp_path / "out"
    lib.mkdir()
    out.mkdir()
    (lib / "slurptuna.py").write_text(FAKE_WORKER)
    script = tmp_path / "task.sh"
    script.write_text('#!/bin/sh\n# only passes its arguments on\nexec "$@"\n')
    env = {"FAKE_SLURM_FORK_PYTHON": fork, "PYTHONPATH": str(lib), "OUT_DIR": str(out)}
    jid = submit(
        "--array=0-3",
        "-o",
        "log_%a.out",
        "-e",
        "log_%a.err",
        str(script),
        sys.executable,
        "-m",
        "slurptuna",
        "worker",
        "chunk",
        "7",
        env=env,
    )
    states = wait_for(lambda: all_ended(jid, 4))
    assert states[f"{jid}_2"] == "FAILED|7:0"
    assert all(states[f"{jid}_{k}"] == "COMPLETED|0:0" for k in (0, 1, 3))
    for k in range(4):
        argv, sys_argv, cwd, stdin = json.loads((out / f"task_{k}").read_text())
        assert argv == ["worker", "chunk", "7"] and sys_argv == argv
        assert (cwd, stdin) == (str(tmp_path), "")
        assert (tmp_path / f"log_{k}.out").read_text() == f"out {k}\n"
        assert (tmp_path / f"log_{k}.err").read_text() == f"err {k}\n"
    imports = (out / "imports").read_text().split()
    assert len(imports) == (1 if fork == "1" else 8)  # a real start imports it twice: __main__, slurptuna


# ---------------------------------------------------------------- a site's limits, RPC bucket, latency

QOS_FORMAT = (
    "format=Name,MaxSubmitJobsPerUser,MaxJobsPerUser,MaxSubmitJobsPerAccount,MaxJobsPerAccount,GrpSubmitJobs,GrpJobs"
)
ASSOC_FORMAT = "format=Cluster,Account,User,Partition,QOS,DefaultQOS,MaxSubmitJobs,MaxJobs,GrpSubmitJobs,GrpJobs"
# as the real Slurm was set up for tests/slurm_texts/sacctmgr_show_qos.json and sacctmgr_show_assoc.json
SITE = {
    "FAKE_SLURM_QOS_LIMITS": "capped:MaxSubmitJobsPerUser=5:MaxJobsPerUser=3",
    "FAKE_SLURM_MAX_SUBMIT_JOBS": "8",
    "FAKE_SLURM_MAX_JOBS": "4",
}


def refused(name, *sbatch_args, env):
    """sbatch answers as the real Slurm did in slurm_texts/<name>.json, and queues nothing."""
    before = squeue("-t", "all", "-r", "-o", "%i")
    proc = run("sbatch", "--parsable", *sbatch_args, env=env)
    answer = recorded(name)
    assert (proc.returncode, proc.stdout, proc.stderr) == (answer["returncode"], "", answer["stderr"])
    assert squeue("-t", "all", "-r", "-o", "%i") == before


def test_an_array_over_max_submit_jobs_is_refused_whole_and_every_queued_task_counts(slurm):
    env = {"FAKE_SLURM_MAX_SUBMIT_JOBS": "8"}
    refused("sbatch_assoc_max_submit_array_whole", "--array=0-8", "--wrap", "sleep 30", env=env)
    refused("sbatch_assoc_max_submit_array_throttled", "--array=0-8%2", "--wrap", "sleep 30", env=env)
    array = submit("--array=0-7%2", "--wrap", "sleep 30", env=env)  # 2 running, 6 pending in one squeue line
    assert array == 1000  # a refusal uses no job id
    refused("sbatch_assoc_max_submit_after_pending_array", "--wrap", "true", env=env)
    log = [json.loads(x) for x in (slurm / "submissions.jsonl").read_text().splitlines()]
    assert [x["rejected"].split("\n")[0] for x in log if x["job_id"] is None] == ["AssocMaxSubmitJobLimit"] * 3


def test_ended_tasks_make_room_under_max_submit_jobs(slurm):
    env = {"FAKE_SLURM_MAX_SUBMIT_JOBS": "2"}
    array = submit("--array=0-1", "--wrap", "true", env=env)
    wait_for(lambda: all_ended(array, 2))
    assert submit("--array=0-1", "--wrap", "true", env=env) == array + 2


def test_a_qos_submit_limit_counts_that_qos_and_the_association_counts_every_qos(slurm):
    refused("sbatch_qos_max_submit_per_user_array_whole", "--qos=capped", "--array=0-5", "--wrap", "true", env=SITE)
    submit("--qos=capped", "--array=0-4", "--wrap", "sleep 30", env=SITE)
    refused("sbatch_assoc_max_submit_array_mixed_qos", "--array=0-3", "--wrap", "true", env=SITE)
    submit("--array=0-2", "--wrap", "sleep 30", env=SITE)  # 5 + 3 = MaxSubmitJobs


def test_max_jobs_and_a_qos_max_jobs_per_user_keep_tasks_pending_with_slurms_reasons(slurm):
    env = {**SITE, "FAKE_SLURM_MAX_JOBS": "3", "FAKE_SLURM_QOS_LIMITS": "capped:MaxJobsPerUser=1"}
    capped = submit("--qos=capped", "--array=0-1", "--wrap", "sleep 30", env=env)
    plain = submit("--array=0-3", "--wrap", "sleep 30", env=env)
    wait_for(lambda: len([x for x in squeue("-o", "%T") if x == "RUNNING"]) == 3)
    time.sleep(0.1)  # a runner that would start too many has had its chance
    rows = dict(line.rsplit("|", 1) for line in squeue("-t", "PD", "-o", "%i|%r"))
    assert rows[f"{capped}_1"] == "QOSMaxJobsPerUserLimit"  # its array's last pending task shows as itself
    assert rows[f"{plain}_[2-3]"] == "AssocMaxJobsLimit"


def test_a_full_job_table_makes_sbatch_sleep_and_retry_then_fail_as_slurm_does(slurm):
    env = {"FAKE_SLURM_MAX_JOB_COUNT": "4", "FAKE_SLURM_RETRY_UNIT": "0.001"}
    submit("--array=0-2", "--wrap", "sleep 30", env=env)  # 3 tasks: the table holds at most MaxJobCount-1
    refused("sbatch_max_job_count", "--wrap", "true", env=env)
    config = run("scontrol", "show", "config", env=env, check=True).stdout
    assert re.search(r"^MaxJobCount\s+= 4$", config, re.M)


def test_sacctmgr_shows_the_configured_limits_as_the_real_one_does(slurm):
    def same(name, *argv, env):
        proc = run("sacctmgr", *argv, env=env)
        answer = recorded(name)
        real = answer["stdout"].replace("slurptuna|", "fake|")  # the cluster's name
        assert (proc.returncode, proc.stdout, proc.stderr) == (answer["returncode"], real, answer["stderr"])

    user = os.environ.get("USER", "root")
    same("sacctmgr_show_qos", "-n", "-P", "show", "qos", QOS_FORMAT, env=SITE)
    same("sacctmgr_show_assoc", "-n", "-P", "show", "assoc", f"user={user}", ASSOC_FORMAT, env=SITE)
    unlimited = {"FAKE_SLURM_QOS_LIMITS": "capped"}  # granted, without limits
    same("sacctmgr_show_assoc_unlimited", "-n", "-P", "show", "assoc", f"user={user}", ASSOC_FORMAT, env=unlimited)
    no_accounting = {"FAKE_SLURM_NO_ACCOUNTING": "1"}
    same("sacctmgr_show_qos_no_accounting", "-n", "-P", "show", "qos", QOS_FORMAT, env=no_accounting)
    calls = [json.loads(x) for x in (slurm / "calls.jsonl").read_text().splitlines()]
    assert [c["cmd"] for c in calls] == ["sacctmgr"] * 4


def test_squeue_shows_a_pending_arrays_task_ids_without_brackets_in_k_as_the_real_one_does(slurm):
    jid = submit("--array=0-7", "--dependency=afterok:" + str(submit("--wrap", "sleep 30")), "--wrap", "true")
    answer = recorded("squeue_pending_array")["stdout"]  # 2_[0-7]|2|0-7|2|PENDING|JobHeldUser
    expected = answer.replace("2", str(jid)).replace("JobHeldUser", "Dependency")
    assert run("squeue", "-h", "-j", str(jid), "-o", "%i|%F|%K|%A|%T|%r").stdout == expected


class FakeClock:
    """time.time and time.sleep for _fakeslurm, in simulated seconds."""

    def __init__(self, now):
        self.now = now

    def time(self):
        return self.now

    def sleep(self, seconds):
        self.now += seconds


@pytest.fixture
def fakeslurm_module(slurm, monkeypatch):
    monkeypatch.syspath_prepend(str(FAKE))
    import _fakeslurm

    clock = FakeClock(1000.0)
    monkeypatch.setattr(_fakeslurm, "time", clock)
    return _fakeslurm, clock


def test_the_rpc_bucket_refills_per_whole_period_and_a_client_backs_off_one_more_second_each_time(
    fakeslurm_module, monkeypatch, slurm
):
    fake, clock = fakeslurm_module
    for name, value in {"FAKE_SLURM_RPC_BUCKET": "3", "FAKE_SLURM_RPC_REFILL": "2"}.items():
        monkeypatch.setenv(name, value)
    granted = []
    for _ in range(10):
        fake.rpc_token("squeue")
        granted.append(clock.now - 1000.0)
    # 3 at once; then a refusal, a 1 s sleep and 2 new tokens; then 1 s sleeps for 2 tokens each
    assert granted == [0, 0, 0, 1, 1, 2, 2, 3, 3, 4]
    waits = [json.loads(x) for x in (slurm / "calls.jsonl").read_text().splitlines()]
    assert {(w["cmd"], w["command"], w["attempt"], w["seconds"]) for w in waits} == {("rpc_backoff", "squeue", 1, 1.0)}
    assert len(waits) == 4


def test_a_client_refused_again_sleeps_longer_each_time(fakeslurm_module, monkeypatch, slurm):
    fake, clock = fakeslurm_module
    for name, value in {"FAKE_SLURM_RPC_BUCKET": "1", "FAKE_SLURM_RPC_REFILL": "1"}.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("FAKE_SLURM_RPC_REFILL_PERIOD", "5")
    fake.rpc_token("sbatch")
    fake.rpc_token("sbatch")  # refused at 1000, 1001, 1003; granted at 1006 (period 201 began at 1005)
    waits = [json.loads(x) for x in (slurm / "calls.jsonl").read_text().splitlines()]
    assert [(w["attempt"], w["seconds"]) for w in waits] == [(1, 1.0), (2, 2.0), (3, 3.0)]
    assert clock.now == 1006.0


def test_commands_past_the_rpc_bucket_wait_and_their_waits_are_logged(slurm):
    env = {"FAKE_SLURM_RPC_BUCKET": "2", "FAKE_SLURM_RPC_REFILL_PERIOD": "0.5", "FAKE_SLURM_RETRY_UNIT": "0.05"}
    for _ in range(6):  # ~0.2 s without the bucket: 2 tokens and at most 2 refills
        run("squeue", "-h", env=env, check=True)
    calls = [json.loads(x) for x in (slurm / "calls.jsonl").read_text().splitlines()]
    assert [c["cmd"] for c in calls].count("squeue") == 6
    waits = [c for c in calls if c["cmd"] == "rpc_backoff"]
    assert waits and all(w["command"] == "squeue" and w["seconds"] == round(w["attempt"] * 0.05, 6) for w in waits)
    config = run("scontrol", "show", "config", env=env, check=True).stdout
    assert "SlurmctldParameters     = rl_enable,rl_bucket_size=2,rl_refill_rate=2,rl_refill_period=0.5" in config


def test_a_latency_delays_every_command_or_only_the_named_ones(slurm):
    def seconds(*argv, env):
        start = time.monotonic()
        run(*argv, env=env, check=True)
        return time.monotonic() - start

    assert seconds("squeue", "-h", env={"FAKE_SLURM_LATENCY": "0.4"}) >= 0.4
    assert seconds("sacctmgr", "-n", "-P", "show", "qos", env={"FAKE_SLURM_LATENCY": "0.4"}) >= 0.4
    assert seconds("squeue", "-h", env={"FAKE_SLURM_LATENCY": "sbatch=0.4,scancel=1"}) < 0.4
    assert seconds("sbatch", "--wrap", "true", env={"FAKE_SLURM_LATENCY": "sbatch=0.4,scancel=1"}) >= 0.4
