#!/usr/bin/env python
"""S1, a site's scale, SIMULATED: the real controller on a simulated Slurm and a simulated clock (issue 15).

    python benchmark/bench_scale.py                 # 10,000 trials x 100 chunks, RandomSampler (case 14: ~8 min)
    python benchmark/bench_scale.py --tpe           # the same with the default TPE sampler (~17 minutes here)
    python benchmark/bench_scale.py --quick         # 500 trials x 100 chunks (about a minute)
    python benchmark/bench_scale.py --trials 2000   # any size; the SIGKILL comes at half of it

What runs for real: ``slurptuna._run_study`` (the controller: its decisions, its files, its Optuna
study in the run's ``optuna.db``, its Slurm call pattern) with the no-op loss ``bench_noop``,
``max_concurrent_trials=64``, ``slurm_poll_seconds=15``, 100 chunks of 100 seeds a trial. What is
simulated: Slurm (``sim_slurm.SimSlurm``, in the controller's process: its ``_SlurmExecutor``
gets ``slurm=sim, sleep=sim.sleep`` and ``_run_study`` gets ``clock=sim.clock``) and so time: a
chunk task lasts 2 simulated seconds and writes, without a process, the chunk file and the logs a
real task writes; the controller's own CPU time passes on the simulated clock too. The site: 1,000
CPUs, jobs starting 1 s after they may (the scheduler's pass), MaxArraySize 1,001, the
association's MaxSubmitJobs 5,000 (every queued array task counting), Slurm 23.02's RPC rate
limit (a bucket of 30 refilled by 2 a second: a call finding it empty waits, there is no error),
ended tasks kept MinJobAge 300 s. The run directory is on /dev/shm when it has room (``_scratch``).

The run is killed with SIGKILL (the controller's process, jobs queued) when half of the trials have
finished, at a moment the controller waits between polls; the simulated cluster's state is saved
at that moment, as slurmctld's would survive, and a new process resumes the run with the same
``run_name`` and finishes it. Measured, in real seconds where it says so:

* the controller's CPU per trial (``time.process_time()`` deltas minus the simulation's own CPU
  time, which it measures) over the 100 trials around trial 1,000 and the last 100 (to 10,000),
  with the part spent in the sampler's ``ask`` (the sampler's methods, timed) shown apart;

The sampler: case 14 of benchmark/run.py uses Optuna's RandomSampler, so that the case fits in
the one benchmark run. The target leaves the sampler's own ``ask`` out, and TPE's is most of
the full shape's time (63.5 ms a trial at trial 10,000, 5-6 of its 17 minutes); everything
else (the controller, its files, its study, its Slurm calls) is the same. ``--tpe`` runs
the full shape with slurptuna's default TPE sampler.
* Slurm calls by command per trial; per simulated second, sustained (all calls / the run's
  simulated time) and the peak over any 60 s window; the simulated time the controller waited on
  the RPC bucket; submissions refused (by Slurm's reason);
* files and directories left in the run directory / trials, and the largest directory's entries;
* the controller's peak RSS (``ru_maxrss`` of each controller process: the simulation lives in it
  too, and is counted);
* ``python -m slurptuna status RUN_DIR`` at the end (a subprocess, real seconds);
* the resume: real seconds from starting the new process until its adoption of the queued jobs is
  done, and until its first trial finishes.

Nothing is asserted. ``case_scale(tmp, quick)`` returns the rows of benchmark/run.py's table.
"""

from __future__ import annotations

import argparse
import functools
import json
import logging
import os
import resource
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
sys.path[:0] = [str(REPO), str(BENCH)]

N_CHUNKS = 100
CHUNK_SIZE = 100
CONCURRENT = 64
POLL_SECONDS = 15
SITE = {  # sim_slurm.Site's knobs for S1
    "cpus": 1000,
    "max_array_size": 1001,
    "max_job_count": 100_000,  # see the row "job table": Slurm's default 10,000 is reported against
    "min_job_age": 300.0,
    "max_submit_jobs": 5000,
    "rpc_bucket": 30,
    "rpc_refill": 2,
    "rpc_period": 1.0,
    "task_seconds": 2.0,
    "reduce_seconds": 2.0,
    "start_delay": 1.0,  # slurmctld's scheduling pass: a job starts about a second after it may
    "dependency_delay": 1.0,
    "controller_time": "cpu",  # the controller's CPU time passes on the simulated clock
}
WINDOW = 100  # trials over which the controller's CPU per trial is measured


# ---------------------------------------------------------------- the controller process


def controller_child(spec: dict) -> None:
    """One controller process: a new run (killed at ``kill_at`` finished trials) or the resume of it."""
    import optuna
    import sim_slurm

    import bench_losses
    import slurptuna

    logging.basicConfig(level=logging.ERROR)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    sys.argv = sys.argv[:1]  # the run records the launcher's argv: the same in both processes
    state = Path(spec["state"])
    sim = sim_slurm.SimSlurm.load(state) if spec["resume"] else sim_slurm.SimSlurm(sim_slurm.Site(**spec["site"]))
    started = time.time()
    records: list[list[float]] = []  # per finished trial: finished, cpu, sim cpu, sampler cpu, sim time, real time
    marks: dict[str, float] = {"started": started}
    sampler_seconds = [0.0]
    kill_at = spec.get("kill_at")

    def timed(method):
        @functools.wraps(method)
        def wrapper(*args, **kwargs):
            begun = time.process_time()
            try:
                return method(*args, **kwargs)
            finally:
                sampler_seconds[0] += time.process_time() - begun

        return wrapper

    sampler_class = {"tpe": optuna.samplers.TPESampler, "random": optuna.samplers.RandomSampler}[spec["sampler"]]
    for name in ("infer_relative_search_space", "sample_relative", "sample_independent", "before_trial"):
        setattr(sampler_class, name, timed(getattr(sampler_class, name)))
    options = {} if spec["sampler"] == "tpe" else {"sampler": sampler_class(seed=123)}  # tpe: slurptuna's default

    original_finish = slurptuna._Controller._finish
    original_adopt = slurptuna._Controller._adopt_interrupted_trials

    def finish(self, active, state_, attrs, value=None):
        frozen = original_finish(self, active, state_, attrs, value)
        n = self.tally.n_finished
        records.append([n, time.process_time(), sim.own_seconds, sampler_seconds[0], sim.now, time.time()])
        if n % 500 == 0:
            print(
                f"  [S1 pid {os.getpid()}] {n} trials, {time.time() - started:.0f} s real, "
                f"{sim.now:.0f} s simulated, {len(sim.calls)} Slurm calls",
                file=sys.stderr,
                flush=True,
            )
        return frozen

    def adopt(self):
        original_adopt(self)
        marks["adopted"] = time.time()

    slurptuna._Controller._finish = finish
    slurptuna._Controller._adopt_interrupted_trials = adopt

    def dump() -> None:
        usage = resource.getrusage(resource.RUSAGE_SELF)
        result = {"records": records, "marks": marks, "maxrss_kb": usage.ru_maxrss, "pid": os.getpid()}
        Path(spec["out"]).write_text(json.dumps(result))
        sim.save(state)

    def sleep(seconds: float) -> bool:
        if kill_at is not None and records and records[-1][0] >= kill_at:
            marks["killed_sim_time"] = sim.now
            marks["queued_tasks_at_kill"] = sim.queued_tasks()
            dump()
            os.kill(os.getpid(), signal.SIGKILL)  # while the controller waits between polls, jobs queued
        return sim.sleep(seconds)

    result = sim_slurm.run_simulated(
        sim,
        bench_losses.bench_noop,
        sleep=sleep,
        n_trials=spec["n_trials"],
        n_seeds=N_CHUNKS * CHUNK_SIZE,
        chunk_size=CHUNK_SIZE,
        max_concurrent_trials=CONCURRENT,
        slurm_poll_seconds=POLL_SECONDS,
        run_root=spec["run_root"],
        run_name="s1",
        progress=False,
        **options,
    )
    marks["run_dir"] = result.run_dir
    marks["n_complete"] = result.n_complete
    dump()


# ---------------------------------------------------------------- the parent: two processes, then the figures


def _child(spec: dict) -> tuple[dict, int, float]:
    started = time.time()
    process = subprocess.run(
        [sys.executable, str(Path(__file__).resolve()), "--child", json.dumps(spec)],
        env={**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), str(BENCH)])},
        check=False,
    )
    out = Path(spec["out"])
    if not out.exists():
        raise RuntimeError(f"S1 controller process failed (exit {process.returncode}) before reporting")
    return json.loads(out.read_text()), process.returncode, started


def _cpu_per_trial(records: list[list[float]], around: int) -> tuple[float, float, int, int]:
    """(controller CPU per trial without the simulation's, of it in the sampler's ask) over WINDOW trials."""
    by_n = {int(r[0]): r for r in records}
    lo = max(min(by_n), around - WINDOW // 2)
    hi = min(max(by_n), lo + WINDOW)
    lo = max(min(by_n), hi - WINDOW)
    a, b = by_n[lo], by_n[hi]
    trials = hi - lo
    controller = (b[1] - a[1]) - (b[2] - a[2])
    return controller / trials, (b[3] - a[3]) / trials, lo, hi


def _peak_rate(times: list[float], window: float = 60.0) -> float:
    """The most calls in any ``window`` seconds, per second."""
    best, first = 0, 0
    for last, when in enumerate(times):
        while times[first] <= when - window:
            first += 1
        best = max(best, last - first + 1)
    return best / window


def _tree(run_dir: Path) -> tuple[int, int, str]:
    """(files and directories under run_dir, entries of the largest directory, its path)."""
    total, largest, where = 0, 0, ""
    for directory, dirs, files in os.walk(run_dir):
        entries = len(dirs) + len(files)
        total += entries
        if entries > largest:
            largest, where = entries, os.path.relpath(directory, run_dir)
    return total, largest, where


def run_s1(tmp: Path, n_trials: int, site: dict | None = None, sampler: str = "random") -> dict:
    """S1 at ``n_trials``: a controller killed at half, a resume to the end, the figures."""
    import sim_slurm

    tmp.mkdir(parents=True, exist_ok=True)
    site = {**SITE, **(site or {})}
    base = {"n_trials": n_trials, "run_root": str(tmp / "runs"), "state": str(tmp / "sim_state.pickle"), "site": site}
    base["sampler"] = sampler
    kill_at = n_trials // 2
    real_started = time.perf_counter()
    first, code, _ = _child({**base, "resume": False, "kill_at": kill_at, "out": str(tmp / "first.json")})
    if code != -signal.SIGKILL:
        raise RuntimeError(f"S1: the first controller ended with {code}, not killed at trial {kill_at}")
    second, code, resume_started = _child({**base, "resume": True, "out": str(tmp / "second.json")})
    if code != 0 or second["marks"].get("n_complete") != n_trials:
        raise RuntimeError(f"S1: the resumed controller ended with {code}, {second['marks'].get('n_complete')} trials")
    real_seconds = time.perf_counter() - real_started
    run_dir = Path(second["marks"]["run_dir"])
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    status_walls = []
    while len(status_walls) < 3 and sum(status_walls) < 10:  # a slow status is timed once
        begun = time.perf_counter()
        shown = subprocess.run(
            [sys.executable, "-m", "slurptuna", "status", str(run_dir)], env=env, capture_output=True, text=True
        )
        status_walls.append(time.perf_counter() - begun)
        if shown.returncode != 0:
            raise RuntimeError(f"S1: status failed: {shown.stderr[-2000:]}")
    sim = sim_slurm.SimSlurm.load(tmp / "sim_state.pickle")
    times = sorted(t for t, _ in sim.calls)
    by_command: dict[str, int] = {}
    for _, command in sim.calls:
        by_command[command] = by_command.get(command, 0) + 1
    waited: dict[str, float] = {}
    for _, command, seconds in sim.waits:
        waited[command] = waited.get(command, 0.0) + seconds
    entries, largest, largest_dir = _tree(run_dir)
    early = _cpu_per_trial(first["records"], 1000 if n_trials >= 2000 else n_trials // 10)
    late = _cpu_per_trial(second["records"], n_trials)
    sim_seconds = times[-1] - times[0] if len(times) > 1 else 0.0
    return {
        "n_trials": n_trials,
        "sampler": sampler,
        "site": site,
        "real_seconds": real_seconds,
        "sim_seconds": sim_seconds,
        "killed_at": kill_at,
        "killed_sim_time": first["marks"].get("killed_sim_time"),
        "queued_tasks_at_kill": first["marks"].get("queued_tasks_at_kill"),
        "cpu_early": early,
        "cpu_late": late,
        "calls": by_command,
        "calls_total": len(sim.calls),
        "sim_own_seconds": sim.own_seconds,
        "rate_sustained": len(sim.calls) / sim_seconds if sim_seconds else 0.0,
        "rate_peak_60s": _peak_rate(times),
        "waited": waited,
        "waits": len(sim.waits),
        "refused": dict(sim.refused),
        "unmodelled": sim.unmodelled[:5],
        "log_failures": sim.log_failures,
        "peak_table": sim.peak_table,
        "peak_queued": sim.peak_queued,
        "entries": entries,
        "largest_dir": (largest, largest_dir),
        "maxrss_kb": max(first["maxrss_kb"], second["maxrss_kb"]),
        "status_seconds": statistics.median(status_walls),
        "status_runs": len(status_walls),
        "resume_adopted": second["marks"]["adopted"] - resume_started,
        "resume_first_trial": (second["records"][0][5] - resume_started) if second["records"] else None,
        "run_dir": str(run_dir),
        "file_system": "tmpfs (/dev/shm)" if str(run_dir).startswith("/dev/shm") else "disk",
    }


def _fmt_ms(seconds: float) -> str:
    return f"{seconds * 1000:.1f} ms"


def rows_of(m: dict) -> list[dict[str, str]]:
    """benchmark/run.py's rows (Case, Mode, Seeds, Wall time, Seeds/s, Measured, Target) for S1's figures."""
    n = m["n_trials"]
    site = m["site"]
    shape = (
        f"SIMULATED Slurm and clock (benchmark/sim_slurm.py), real controller: {n:,} trials x {N_CHUNKS} chunks "
        f"of {CHUNK_SIZE} seeds, no-op loss, {CONCURRENT} at once, poll <= {POLL_SECONDS} s; "
        + (
            "slurptuna's default TPE sampler; "
            if m["sampler"] == "tpe"
            else "Optuna's RandomSampler, to fit the one benchmark run (the target leaves the sampler's own ask out; "
            "TPE's is 63.5 ms a trial at trial 10,000: bench_scale.py --tpe, benchmark/SCALE.md); "
        )
        + "site: "
        f"{site['cpus']:,} CPUs, tasks of {site['task_seconds']:g} s, MaxArraySize {site['max_array_size']:,}, "
        f"MaxSubmitJobs {site['max_submit_jobs']:,}, RPC bucket {site['rpc_bucket']} refilled "
        f"{site['rpc_refill']}/s, jobs start {site['start_delay']:g} s after they may; SIGKILL at trial "
        f"{m['killed_at']:,}, resumed; the run directory on {m['file_system']}"
    )

    def row(what: str, measured: str, goal: str = "-") -> dict[str, str]:
        return {
            "Case": "S1 site scale (simulated)",
            "Mode": what,
            "Seeds": "-",
            "Wall time": "-",
            "Seeds/s": "-",
            "Measured": measured,
            "Target": goal,
        }

    def target(text: str, met: bool, limit: str) -> str:
        return f"{text}: met" if met else f"{text} **(not met)**: {limit}"

    (early, early_ask, e_lo, e_hi), (late, late_ask, l_lo, l_hi) = m["cpu_early"], m["cpu_late"]
    calls = m["calls"]
    per_trial = ", ".join(f"{c} {calls[c] / n:.2f}" for c in sorted(calls, key=lambda c: -calls[c]))
    refused = sum(v for k, v in m["refused"].items() if k != "Invalid qos specification")
    waited = ", ".join(f"{c} {s:,.0f} s" for c, s in sorted(m["waited"].items())) or "none"
    largest, largest_dir = m["largest_dir"]
    first = m["resume_first_trial"]
    rows = [
        {
            "Case": "S1 site scale (simulated)",
            "Mode": shape,
            "Seeds": f"{n * N_CHUNKS * CHUNK_SIZE:,}",
            "Wall time": f"{m['real_seconds']:.0f} s real (n=1); {m['sim_seconds']:,.0f} s simulated",
            "Seeds/s": "-",
            "Measured": f"{n * 3600 / m['sim_seconds']:,.0f} trials per simulated hour" if m["sim_seconds"] else "-",
            "Target": target("whole case <= 30 min real", m["real_seconds"] <= 1800, "this machine's 2 cores"),
        },
        row(
            "controller CPU per trial (real s; the simulation's own CPU subtracted)",
            f"trials {e_lo:,}-{e_hi:,}: {_fmt_ms(early)} ({_fmt_ms(early_ask)} in the sampler's ask, "
            f"{_fmt_ms(early - early_ask)} beyond); trials {l_lo:,}-{l_hi:,}: {_fmt_ms(late)} "
            f"({_fmt_ms(late_ask)} in the sampler's ask, {_fmt_ms(late - late_ask)} beyond)",
            target(f"<= 20 ms at trial {l_hi:,} beyond the sampler's ask", late - late_ask <= 0.020, "see Measured"),
        ),
        row(
            "Slurm calls (simulated seconds)",
            f"per trial: {per_trial}; per simulated second: {m['rate_sustained']:.2f} sustained, "
            f"{m['rate_peak_60s']:.2f} peak over 60 s; waited on the RPC bucket: {waited} "
            f"({m['waits']:,} back-offs)",
            target("<= 2 calls per simulated second sustained", m["rate_sustained"] <= 2.0, "see Measured"),
        ),
        row(
            "submissions refused",
            ", ".join(f"{k} {v:,}" for k, v in m["refused"].items())
            or "none" + f"; peak queued tasks {m['peak_queued']:,}",
            target("0 refused for limits", refused == 0, "see Measured"),
        ),
        row(
            "job table",
            f"peak tasks in slurmctld's table (queued + ended within MinJobAge {m['site']['min_job_age']:g} s): "
            f"{m['peak_table']:,} (the simulated site's MaxJobCount {m['site']['max_job_count']:,}; Slurm's "
            f"default is 10,000)",
        ),
        row(
            "files left per trial",
            f"{m['entries'] / n:.1f} files and directories per trial ({m['entries']:,} in the run directory); "
            f"the largest directory: {largest:,} entries ({largest_dir})",
            target("<= 10 per completed trial", m["entries"] / n <= 10, "see Measured"),
        ),
        row(
            "controller peak RSS",
            f"{m['maxrss_kb'] / 1024:,.0f} MiB (ru_maxrss of the larger of the two controller processes; "
            "the simulated Slurm lives in it too)",
            target("<= 1 GiB", m["maxrss_kb"] <= 1024 * 1024, "see Measured"),
        ),
        row(
            "`python -m slurptuna status RUN_DIR` at the end (real s)",
            f"{m['status_seconds']:.2f} s (median of {m['status_runs']})",
            target("<= 1 s", m["status_seconds"] <= 1.0, "see Measured"),
        ),
        row(
            "resume after SIGKILL (real s)",
            f"killed at trial {m['killed_at']:,} with {m['queued_tasks_at_kill'] or 0:,} tasks queued; the new "
            f"process: adoption done after {m['resume_adopted']:.1f} s, its first trial finished after "
            + (f"{first:.1f} s" if first is not None else "-"),
            target("<= 30 s", first is not None and first <= 30, "see Measured"),
        ),
    ]
    if m["unmodelled"] or m["log_failures"]:
        rows.append(
            row("simulation warnings", f"unmodelled calls {m['unmodelled']}; tasks without logs {m['log_failures']}")
        )
    return rows


def _scratch(fallback: Path) -> Path:
    """Where the run goes: a tmpfs (/dev/shm) if it has room, else ``fallback``.

    On this VM's disk, SQLite's fsyncs, made slow by the simulated tasks' 3 million file
    creations on the same file system, make S1 take 3-4x longer than the 30 minutes it may;
    what is measured in CPU time is not changed by the move, ``status`` and the resume (real
    seconds) are measured on the tmpfs: faster than on a disk, and much faster than on Lustre.
    """
    shm = Path("/dev/shm")
    try:
        usage = os.statvfs(shm)
        if usage.f_bavail * usage.f_frsize >= 12 * 2**30 and os.access(shm, os.W_OK):
            return shm
    except OSError:
        pass
    return fallback


def case_scale(tmp: Path, quick: bool) -> list[dict[str, str]]:
    """S1's rows: 10,000 trials (quick: 500) with RandomSampler, run in /dev/shm when it has room (``_scratch``)."""
    with tempfile.TemporaryDirectory(prefix="slurptuna_s1_", dir=_scratch(Path(tmp))) as scratch:
        return rows_of(run_s1(Path(scratch) / "s1", 500 if quick else 10_000))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="500 trials instead of 10,000")
    parser.add_argument("--trials", type=int, help="the number of trials (the SIGKILL comes at half)")
    parser.add_argument("--keep", metavar="DIR", help="run in DIR and keep it (the run, the simulation's state)")
    parser.add_argument("--child", metavar="JSON", help=argparse.SUPPRESS)
    parser.add_argument("--json", action="store_true", help="also print the figures as JSON")
    parser.add_argument("--tpe", action="store_true", help="slurptuna's default TPE sampler, not RandomSampler")
    args = parser.parse_args()
    if args.child:
        controller_child(json.loads(args.child))
        return 0
    n_trials = args.trials or (500 if args.quick else 10_000)
    print(f"S1 (a SIMULATION of Slurm and of time; the controller is real): {n_trials:,} trials", flush=True)
    (BENCH / "results").mkdir(exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="slurptuna_s1_", dir=_scratch(BENCH / "results")) as tmp:
        figures = run_s1(Path(args.keep or tmp) / "s1", n_trials, sampler="tpe" if args.tpe else "random")
        rows = rows_of(figures)
    print("| " + " | ".join(rows[0]) + " |")
    print("|" + "---|" * len(rows[0]))
    for row in rows:
        print("| " + " | ".join(row.values()) + " |")
    if args.json:
        print(json.dumps(figures, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
