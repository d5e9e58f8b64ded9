"""benchmark/sim_slurm.py: the simulated Slurm of the S1 benchmark, checked against recorded texts and fake_slurm.

The simulation is only worth its figures if it behaves as Slurm does where this machine can
check it: its answers are compared with the texts recorded from Slurm 22.05
(tests/slurm_texts/), the files its tasks write with those of the real worker, and a whole
run's Slurm calls and files with the same run on fake_slurm/ (real processes, real time).
"""

from __future__ import annotations

import json
import os
import re
import statistics
from dataclasses import replace
import sys
import time
from collections import Counter
from pathlib import Path

import pytest
from conftest import REPO, TESTS

sys.path.insert(0, str(REPO / "benchmark"))

import bench_losses
import sim_slurm
from sim_slurm import Site, SimSlurm

import slurptuna

TEXTS = TESTS / "slurm_texts"


def recorded(name: str) -> dict:
    return json.loads((TEXTS / f"{name}.json").read_text())


def renumbered(text: str) -> str:
    """Job ids replaced by J1, J2, ... in order of first appearance, so two clusters' answers compare."""
    ids: dict[str, str] = {}

    def name(match: re.Match[str]) -> str:
        return ids.setdefault(match[0], f"J{len(ids) + 1}")

    lines = []
    for line in text.splitlines():
        i, f, k, a, *rest = line.split("|")
        i = re.sub(r"^\d+", name, i)
        lines.append("|".join([i, re.sub(r"\d+", name, f), k, re.sub(r"\d+", name, a), *rest]))
    return "\n".join(lines)


@pytest.fixture
def script(tmp_path: Path) -> str:
    path = tmp_path / "task.sh"
    path.write_text('#!/bin/sh\nexec "$@"\n')
    return str(path)


def sbatch(sim: SimSlurm, script: str, *options: str, command: tuple[str, ...] = ("true",)) -> str:
    answer = sim(["sbatch", "--parsable", "-o", "/dev/null", *options, script, *command])
    assert answer.returncode == 0, answer.stderr
    return answer.stdout.strip()


# ---------------------------------------------------------------- parsing


def test_an_array_spec_gives_its_task_ids_and_throttle_as_slurm_reads_it():
    assert sim_slurm.parse_array("0-9,12,15-20:2%4") == ([0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 12, 15, 17, 19], 4)
    assert sim_slurm.parse_array("5") == ([5], None)
    for bad in ("3-1", "a", "0-4%x", "1,,2"):
        with pytest.raises(ValueError):
            sim_slurm.parse_array(bad)


def test_a_tasks_spec_maps_array_task_i_to_the_ith_trial_and_chunk():
    assert sim_slurm.parse_tasks_spec("5:0-2/6:0-1,4") == [(5, 0), (5, 1), (5, 2), (6, 0), (6, 1), (6, 4)]
    command = ["/usr/bin/python3", "-m", "slurptuna", "worker", "chunk", "/runs/r", "--tasks", "5:0-2/6:0-1,4"]
    worker = sim_slurm.parse_worker_command(command)
    assert worker is not None and worker.kind == "chunk" and worker.run_dir == Path("/runs/r")
    assert [worker.chunk_of(t) for t in (0, 3, 5)] == [(5, 0), (6, 0), (6, 4)]


def test_todays_worker_commands_map_a_task_to_the_offset_chunk():
    command = ["python", "-m", "slurptuna", "worker", "chunk", "/runs/r", "7", "--chunk-offset", "1001"]
    worker = sim_slurm.parse_worker_command(command)
    assert worker is not None and worker.trial == 7 and worker.chunk_of(3) == (7, 1004)
    reduce = sim_slurm.parse_worker_command(["python", "-m", "slurptuna", "worker", "reduce", "/runs/r", "7"])
    assert reduce is not None and reduce.kind == "reduce" and reduce.reduce_trials() == (7,)
    soon = sim_slurm.parse_worker_command(["py", "-m", "slurptuna", "worker", "reduce", "/r", "--trials=5,6,7"])
    assert soon is not None and soon.reduce_trials() == (5, 6, 7)
    assert sim_slurm.parse_worker_command(["sh", "-c", "true"]) is None


def test_sbatch_options_are_read_wherever_and_however_they_stand():
    options, words = sim_slurm.parse_sbatch(
        ["-J", "name", "--array", "0-3%2", "-c2", "--time=0-01:00:00", "--parsable", "--x-new=1", "s.sh", "-a", "9"]
    )
    assert options["job-name"] == "name" and options["array"] == "0-3%2" and options["cpus-per-task"] == "2"
    assert options["time"] == "0-01:00:00" and "parsable" in options and options["x-new"] == "1"
    assert words == ["s.sh", "-a", "9"]  # after the script: its arguments, not sbatch's
    assert sim_slurm.parse_time("0-00:10:00") == 600 and sim_slurm.parse_time("90") == 5400
    assert sim_slurm.parse_time("1:30") == 120  # M:S, rounded up to minutes as Slurm does


# ---------------------------------------------------------------- answers in the recorded formats


def test_a_pending_array_is_one_squeue_line_as_slurm_shows_it(script):
    sim = SimSlurm(Site(controller_time="none"))
    sbatch(sim, script, "--hold", "--array=0-7")
    text = recorded("squeue_pending_array")
    shown = sim(text["command"])
    assert renumbered(shown.stdout) == renumbered(text["stdout"])
    expanded = recorded("squeue_pending_array_expanded")
    assert renumbered(sim(expanded["command"]).stdout) == renumbered(expanded["stdout"])


def test_running_tasks_are_one_line_each_and_a_throttled_rest_one_line_as_recorded(script):
    sim = SimSlurm(Site(cpus=8, max_submit_jobs=8, max_jobs=4, task_seconds=60, controller_time="none"))
    sbatch(sim, script, "--array=0-4%2")
    sbatch(sim, script, "--array=0-2")
    sim.sleep(3)
    for name in ("squeue_running_array_throttled", "squeue_running_array_throttled_expanded"):
        text = recorded(name)
        assert renumbered(sim(text["command"]).stdout) == renumbered(text["stdout"]), name


def test_a_qos_running_limit_leaves_the_rest_pending_with_its_reason_as_recorded(script):
    capped = {"normal": {}, "capped": {"MaxSubmitJobsPerUser": 5, "MaxJobsPerUser": 3}}
    sim = SimSlurm(Site(max_submit_jobs=8, max_jobs=4, qos_limits=capped, task_seconds=60, controller_time="none"))
    sbatch(sim, script, "--qos=capped", "--array=0-4")
    text = recorded("squeue_running_array_qos_max_jobs")
    assert renumbered(sim(text["command"]).stdout) == renumbered(text["stdout"])


@pytest.mark.parametrize(
    ("name", "queued_first"),
    [("sbatch_assoc_max_submit_array_whole", None), ("sbatch_assoc_max_submit_after_pending_array", "0-7")],
)
def test_a_submission_past_max_submit_jobs_is_refused_with_slurms_text(script, name, queued_first):
    capped = {"normal": {}, "capped": {"MaxSubmitJobsPerUser": 5, "MaxJobsPerUser": 3}}
    sim = SimSlurm(Site(max_submit_jobs=8, max_jobs=4, qos_limits=capped, controller_time="none"))
    if queued_first:
        sbatch(sim, script, "--hold", f"--array={queued_first}")
    text = recorded(name)
    command = [w for w in text["command"] if w not in ("--wrap", "true")]
    refused = sim([*command, script])
    assert (refused.returncode, refused.stdout, refused.stderr) == (1, "", text["stderr"])
    assert sim.refused == {"AssocMaxSubmitJobLimit": 1} and sim.queued_tasks() == (8 if queued_first else 0)
    assert slurptuna.classify_slurm_failure(refused.returncode, refused.stderr) is slurptuna.SlurmFailure.LIMIT


def test_a_qos_submit_limit_is_checked_first_and_named_as_recorded(script):
    capped = {"normal": {}, "capped": {"MaxSubmitJobsPerUser": 5, "MaxJobsPerUser": 3}}
    sim = SimSlurm(Site(max_submit_jobs=8, qos_limits=capped, controller_time="none"))
    text = recorded("sbatch_qos_max_submit_per_user_array_whole")
    command = [w for w in text["command"] if w not in ("--wrap", "true")]
    refused = sim([*command, script])
    assert (refused.returncode, refused.stderr) == (1, text["stderr"])


def test_sacctmgr_answers_in_the_recorded_formats_and_slurptuna_reads_the_limits():
    capped = {"normal": {}, "capped": {"MaxSubmitJobsPerUser": 5, "MaxJobsPerUser": 3}}
    site = Site(max_submit_jobs=8, max_jobs=4, qos_limits=capped, cluster="slurptuna", user="root")
    sim = SimSlurm(site)
    qos, assoc = recorded("sacctmgr_show_qos"), recorded("sacctmgr_show_assoc")
    assert sim(slurptuna._sacctmgr_qos_argv()).stdout == qos["stdout"]
    assert sim(slurptuna._sacctmgr_assoc_argv("root")).stdout == assoc["stdout"]
    limits = slurptuna._parse_sacctmgr_job_limits(sim(slurptuna._sacctmgr_assoc_argv("root")).stdout, qos["stdout"])
    assert limits == 8


def test_scontrol_show_config_gives_the_sites_limits_to_slurptunas_parser():
    sim = SimSlurm(Site(max_array_size=1001, max_job_count=20000, rpc_bucket=30))
    config = slurptuna._parse_slurm_config(sim(["scontrol", "show", "config"]).stdout)
    assert config["MaxArraySize"] == "1001" and config["MaxJobCount"] == "20000"
    assert "rl_enable,rl_bucket_size=30,rl_refill_rate=2" in config["SlurmctldParameters"]


def test_unknown_job_ids_are_answered_as_recorded(script):
    sim = SimSlurm(Site(controller_time="none"))
    for name in ("squeue_unknown_job_id", "squeue_unknown_job_ids", "scancel_unknown_job_id", "sacct_unknown_job_id"):
        text = recorded(name)
        answer = sim(text["command"])
        assert (answer.returncode, answer.stdout, answer.stderr) == (
            text["returncode"],
            text["stdout"],
            text["stderr"],
        ), name


def test_an_unmodelled_command_fails_loudly_instead_of_answering_wrongly():
    sim = SimSlurm(Site(controller_time="none"))
    assert sim(["scontrol", "show", "job", "12"]).returncode == 1
    assert sim(["squeue", "--start"]).returncode == 1
    assert sim(["srun", "true"]).returncode != 0
    assert len(sim.unmodelled) == 3


# ---------------------------------------------------------------- time, the bucket, dependencies


def test_a_call_finding_the_rpc_bucket_empty_waits_and_succeeds_without_error():
    sim = SimSlurm(Site(rpc_bucket=3, rpc_refill=1, controller_time="none"))
    answers = [sim(["squeue", "-h", "-o", "%i|%T"]) for _ in range(5)]
    assert all(a.returncode == 0 and a.stderr == "" for a in answers)
    assert [(when, seconds) for when, _, seconds in sim.waits] == [(0.0, 1.0), (1.0, 1.0)]
    assert sim.clock() == 2.0 and [t for t, _ in sim.calls] == [0.0, 0.0, 0.0, 1.0, 2.0]


def test_tasks_wait_for_cpus_and_the_queue_empties_in_simulated_time(script):
    sim = SimSlurm(Site(cpus=4, task_seconds=2.0, controller_time="none"))
    job = sbatch(sim, script, "--array=0-9")
    assert sim.running_tasks() == 4
    sim.sleep(5.0)  # 4 tasks end at 2 s, 4 more at 4 s: 2 left running
    assert sim.running_tasks() == 2 and sim.queued_tasks() == 2
    sim.sleep(1.0)
    assert sim.queued_tasks() == 0
    shown = sim(["squeue", "-h", "-t", "all", "-j", job, "-o", "%i|%T"]).stdout.splitlines()
    assert sorted(shown) == sorted(f"{job}_{t}|COMPLETED" for t in range(10))
    sim.sleep(301.0)  # past MinJobAge: gone from squeue, still in sacct
    assert sim(["squeue", "-h", "-t", "all", "-j", job, "-o", "%i|%T"]).stderr.startswith("slurm_load_jobs error")
    assert len(sim(["sacct", "-X", "-n", "-P", "-j", job, "-o", "jobid,state,exitcode"]).stdout.splitlines()) == 10


def test_an_afterok_job_whose_array_failed_is_cancelled_by_kill_on_invalid_dep(script, tmp_path):
    sim = SimSlurm(Site(controller_time="none"))
    missing = ["python", "-m", "slurptuna", "worker", "chunk", str(tmp_path / "no_run"), "0"]  # no params.json
    array = sbatch(sim, script, "--array=0-1", command=tuple(missing))
    after = sbatch(sim, script, f"--dependency=afterok:{array}", "--kill-on-invalid-dep=yes")
    sim.sleep(10)
    states = sim(["sacct", "-X", "-n", "-P", "-j", f"{array},{after}", "-o", "jobid,state,exitcode"]).stdout
    assert states.splitlines() == [
        f"{array}_0|FAILED|1:0",
        f"{array}_1|FAILED|1:0",
        f"{after}|CANCELLED by {os.getuid()}|0:0",
    ]


def test_the_simulations_catching_up_with_the_controllers_time_counts_as_its_own_cpu(monkeypatch):
    sim = SimSlurm(Site(controller_time="cpu"))
    advance = sim._advance

    def busy_advance(until: float) -> None:  # the tasks falling due while the controller worked: 50 ms of CPU
        if until > sim.now:
            end = time.process_time() + 0.05
            while time.process_time() < end:
                pass
        advance(until)

    monkeypatch.setattr(sim, "_advance", busy_advance)
    end = time.process_time() + 0.01
    while time.process_time() < end:  # the controller's own work: the simulated clock moves on
        pass
    before = sim.own_seconds
    assert sim(["squeue", "-h", "--me", "-o", "%i|%T"]).returncode == 0
    assert sim.own_seconds - before >= 0.045  # not charged to the controller's CPU per trial


def test_scancel_of_task_ids_cancels_only_those_tasks_of_a_shared_array(script):
    sim = SimSlurm(Site(cpus=2, task_seconds=10, controller_time="none"))
    job = sbatch(sim, script, "--array=0-9")
    shown = sim(["squeue", "-h", "-j", job, "-t", "R", "-o", "%i|%A"]).stdout
    running = dict(line.split("|") for line in shown.split())
    assert sim(["scancel", f"{job}_[2-4]", f"{job}_7", running[f"{job}_1"]]).returncode == 0  # task 1 by its own id
    shown = sim(["squeue", "-h", "-j", job, "-o", "%i|%T"]).stdout.splitlines()
    assert shown[0] == f"{job}_[6,8-9]|PENDING"  # task 5 took the CPU that task 1 left
    assert sorted(shown[1:]) == [f"{job}_0|RUNNING", f"{job}_5|RUNNING"]
    accounting = sim(["sacct", "-X", "-n", "-P", "-j", job, "-o", "jobid,state"]).stdout.splitlines()
    cancelled = f"CANCELLED by {os.getuid()}"
    assert {f"{job}_1|{cancelled}", f"{job}_3|{cancelled}", f"{job}_7|{cancelled}"} <= set(accounting)


def test_the_simulation_survives_a_save_and_load_with_its_jobs_queued(script, tmp_path):
    sim = SimSlurm(Site(cpus=2, task_seconds=10, controller_time="none"))
    job = sbatch(sim, script, "--array=0-5")
    sim.sleep(1)
    sim.save(tmp_path / "state.pickle")
    again = SimSlurm.load(tmp_path / "state.pickle")
    assert again.clock() == 1.0 and again.queued_tasks() == 6
    shown = again(["squeue", "-h", "-j", job, "-o", "%i|%T"]).stdout.splitlines()
    assert shown[0] == f"{job}_[2-5]|PENDING" and len(shown) == 3


# ---------------------------------------------------------------- what tasks write


def simulate(sim: SimSlurm, run_root: Path, **options) -> slurptuna.OptimizeResult:
    options = {"slurm_poll_seconds": 15, "progress": False, **options}
    return sim_slurm.run_simulated(sim, bench_losses.bench_noop, run_root=run_root, **options)


def test_a_simulated_chunk_task_writes_what_the_real_worker_writes(run_root):
    sim = SimSlurm(Site(controller_time="none"))
    result = simulate(sim, run_root, n_trials=2, n_seeds=25, chunk_size=10, max_concurrent_trials=2)
    assert result.n_complete == 2
    trial = slurptuna.RunPaths(Path(result.run_dir)).trial(1)
    merged = trial.merged_chunks  # the controller merged the finished trial's chunk files
    simulated = {r["chunk_index"]: r for r in map(json.loads, merged.read_text().splitlines())}
    merged.unlink()
    for chunk in range(3):
        assert slurptuna.run_chunk_task(Path(result.run_dir), 1, chunk) == 0  # the real worker, in this process
        real = json.loads(trial.chunk(chunk).read_text())
        for when in ("elapsed_seconds", "finished_at"):  # the real clock's, in both
            simulated[chunk].pop(when), real.pop(when)
        assert simulated[chunk] == real


def test_a_killed_controller_resumes_on_the_saved_simulation_and_adopts_its_jobs(run_root, tmp_path):
    sim = SimSlurm(Site(task_seconds=30, controller_time="none"))
    stop_after = []

    def sleep(seconds: float) -> bool:
        if len(stop_after) == 0 and sim.queued_tasks() > 0 and sim.clock() > 5:
            stop_after.append(sim.clock())
            sim.save(tmp_path / "state.pickle")
            raise KeyboardInterrupt  # the controller dies without cancelling: no scancel reaches the saved state
        return sim.sleep(seconds)

    options = {"n_trials": 6, "n_seeds": 40, "chunk_size": 10, "max_concurrent_trials": 3, "run_name": "r"}
    with pytest.raises(KeyboardInterrupt):
        simulate(sim, run_root, sleep=sleep, **options)
    again = SimSlurm.load(tmp_path / "state.pickle")
    queued = again.queued_tasks()
    result = simulate(again, run_root, **options)
    assert result.n_complete == 6 and queued > 0
    tasks_after = sum(n for when, _, n, array in again.submitted if array and when > stop_after[0])
    assert tasks_after == 3 * 4  # the chunks of the three trials after the kill: those in flight were adopted


def test_task_logs_of_trials_the_reduce_job_completed_while_no_controller_ran_are_folded_on_resume(run_root, tmp_path):
    sim = SimSlurm(Site(task_seconds=30, controller_time="none"))

    def sleep(seconds: float) -> bool:
        if sim.queued_tasks() > 0 and sim.clock() > 5:
            sim.save(tmp_path / "state.pickle")
            raise KeyboardInterrupt  # killed with its trials' tasks queued
        return sim.sleep(seconds)

    options = {"n_trials": 5, "n_seeds": 40, "chunk_size": 10, "max_concurrent_trials": 3, "run_name": "r"}
    with pytest.raises(KeyboardInterrupt):
        simulate(sim, run_root, sleep=sleep, **options)
    again = SimSlurm.load(tmp_path / "state.pickle")
    again.sleep(600)  # no controller: the tasks run, and the reduce jobs write the trials' summaries
    run = slurptuna.RunPaths(run_root / "r")
    reduced = [n for n in range(3) if run.trial(n).summary.exists()]
    logs = run.dir / "slurm_logs"
    assert reduced and list(logs.rglob("task_*.log"))
    result = simulate(again, run_root, **options)
    assert result.n_complete == 5
    assert not list(logs.rglob("task_*.log"))  # every task succeeded: each log folded (empty: dropped)


# ---------------------------------------------------------------- the simulation agrees with fake_slurm
#
# The same run (trials, chunks, concurrency, poll interval) once on fake_slurm (real processes,
# real time; a loss that sleeps 5 ms a seed, so that a task lasts ~1 s without loading the 2
# cores) and once on the simulation, given the task durations, start delays and per-call latencies
# measured on fake_slurm and the controller's own wall time. What must agree, and how closely:
# * sbatch per trial: exactly (the executor's arrays, several trials each, and their reduce jobs);
# * squeue per trial: within a factor 1.6. It counts poll cycles, i.e. time / the poll interval,
#   and on fake_slurm the controller shares the 2 cores with fake_slurm's own processes (a Python
#   start per command, a runner per job, the tasks), so its wall time between polls is longer
#   than what the simulation's clock sees: measured here, the simulation polls 1.1-1.6x as often;
# * scancel per trial: within 0.3 (one batched scancel in a poll cycle that follows one where a
#   trial finished while its reduce job was still queued: a race of the reduce job's ~0.2 s
#   against the poll, in both; measured here 0.17-0.42 per trial on either side);
# * all calls per trial: within 20%;
# * files per trial: exactly for the trials' files and the task logs, within 2 for all (a reduce
#   job leaves its log only if it ran before it was cancelled: the same race).

AGREEMENT = {"n_trials": 24, "n_seeds": 1200, "chunk_size": 200, "max_concurrent_trials": 4, "slurm_poll_seconds": 0.5}


def timed_slurm_calls(monkeypatch) -> dict[str, list[float]]:
    """Wraps slurptuna's Slurm runner: the real seconds each command took, by command."""
    seconds: dict[str, list[float]] = {}
    real = slurptuna._run_slurm

    def timed(argv, *args, **kwargs):
        started = time.perf_counter()
        try:
            return real(argv, *args, **kwargs)
        finally:
            seconds.setdefault(os.path.basename(argv[0]), []).append(time.perf_counter() - started)

    monkeypatch.setattr(slurptuna, "_run_slurm", timed)
    return seconds


def fake_timings(state: Path) -> dict[str, float]:
    """fake_slurm's mean task durations and start delays, from its job records: the simulation's knobs."""
    jobs = {}
    for path in (state / "jobs").glob("*.json"):
        job = json.loads(path.read_text())
        jobs[job["job_id"]] = job
    seen: dict[str, list[float]] = {"task_seconds": [], "reduce_seconds": [], "start_delay": [], "dependency_delay": []}
    for job in jobs.values():
        ran = [t for t in job["tasks"] if t["start"] is not None and t["end"] is not None]
        if not ran:
            continue
        seen["task_seconds" if job["array"] else "reduce_seconds"] += [t["end"] - t["start"] for t in ran]
        first = min(t["start"] for t in ran)
        if job["deps"]:
            met = max(t["end"] for _, dep, _ in job["deps"] for t in jobs[dep]["tasks"])
            seen["dependency_delay"].append(first - met)
        else:
            seen["start_delay"].append(first - job["submit"])
    return {knob: statistics.mean(values) for knob, values in seen.items() if values}


def files_by_kind(run_dir: Path) -> Counter:
    """The run's trial files, its task logs and its reduce jobs' logs (files and directories)."""
    counts: Counter = Counter()
    counts["trial files"] = sum(1 for _ in (run_dir / "trials").rglob("*"))
    for path in (run_dir / "slurm_logs").rglob("*"):
        counts["reduce logs" if path.name.startswith("reduce_") else "other logs"] += 1
    return counts


def test_the_simulation_agrees_with_fake_slurm_on_calls_and_files_per_trial(fake_slurm, run_root, monkeypatch):
    monkeypatch.setenv("FAKE_SLURM_FORK_PYTHON", "1")
    call_seconds = timed_slurm_calls(monkeypatch)
    fake = slurptuna.optimize_run(
        bench_losses.bench_sleep, mode="distributed", run_root=run_root / "fake", progress=False, **AGREEMENT
    )
    fake_calls = Counter({c: len(fake_slurm.calls(c)) for c in ("squeue", "scancel", "sacct", "scontrol", "sacctmgr")})
    fake_calls["sbatch"] = len(fake_slurm.submissions())
    fake_calls = +fake_calls  # commands never called are left out
    latency = {command: statistics.mean(s) for command, s in call_seconds.items()}
    site = Site(cpus=64, latency=latency, **fake_timings(fake_slurm.state))
    sim = SimSlurm(replace(site, controller_time="wall"))  # the controller's disk waits take time on fake_slurm too
    simulated = simulate(sim, run_root / "sim", **AGREEMENT)
    sim_calls = Counter(command for _, command in sim.calls)
    n = AGREEMENT["n_trials"]
    assert fake.n_complete == simulated.n_complete == n
    report = {c: (fake_calls[c] / n, sim_calls[c] / n) for c in sorted(set(fake_calls) | set(sim_calls))}
    print("calls per trial (fake_slurm, simulated):", report)
    # trials started in one poll cycle share an array: how many do depends on the machine's load
    assert fake_calls["sbatch"] / 1.5 <= sim_calls["sbatch"] <= fake_calls["sbatch"] * 1.5, report
    # fake_slurm's controller shares 2 cores with the fake's own processes: under load it polls
    # up to 2x less often than the simulation (seen in CI), so squeue agrees within 2.5x
    assert fake_calls["squeue"] / 2.5 <= sim_calls["squeue"] <= fake_calls["squeue"] * 2.5, report
    assert abs(sim_calls["scancel"] - fake_calls["scancel"]) <= 0.3 * n, report
    assert sum(sim_calls.values()) == pytest.approx(sum(fake_calls.values()), rel=0.2), report
    assert set(sim_calls) <= set(fake_calls) | {"scontrol"}
    fake_files, sim_files = files_by_kind(Path(fake.run_dir)), files_by_kind(Path(simulated.run_dir))
    print("files (fake_slurm, simulated):", fake_files, sim_files)
    assert fake_files["trial files"] == sim_files["trial files"]
    assert abs(fake_files["other logs"] - sim_files["other logs"]) <= max(fake_files["other logs"], 8) / 2
    assert abs(sum(fake_files.values()) - sum(sim_files.values())) <= 2 * n
