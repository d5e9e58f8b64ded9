#!/usr/bin/env python
"""slurptuna benchmark: measures the shapes users run and writes benchmark/RESULTS.md.

    python benchmark/run.py            # the full benchmark (about 10 minutes on 2 cores)
    python benchmark/run.py --quick    # fewer seeds and trials, a few minutes
    python benchmark/run.py --profile  # cProfile of one chunk task's hot path, top 25

Every timed case runs 3 times (interleaved where rows are compared); the table shows the
median. Nothing is asserted: each row shows its target and "(not met)" with what limits
it. Every number in README.md's Performance table is copied from one run of this script.
Runs go under benchmark/results/tmp-PID/ (git-ignored, removed at the end), because users'
runs live in their project directory; the no-op row is also measured in /tmp.
See benchmark/README.md for what each case measures.
"""

from __future__ import annotations

import argparse
import cProfile
import itertools
import json
import logging
import os
import platform
import pstats
import re
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
sys.path[:0] = [str(REPO), str(BENCH)]

import bench_kernels  # noqa: E402
import bench_losses  # noqa: E402
import bench_pruning  # noqa: E402
import bench_scale  # noqa: E402
import bench_seeds  # noqa: E402
import bench_storage  # noqa: E402

import slurptuna  # noqa: E402

CORES = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
PYTHONPATH = os.pathsep.join([str(REPO), str(BENCH), *filter(None, [os.environ.get("PYTHONPATH")])])
ENV = {**os.environ, "PYTHONPATH": PYTHONPATH}
PARAMS = {"x": 0.5}
CONTEXT = {"entry_id": None, "trial_number": 0, "chunk_index": 0, "run_dir": ""}
EARLIER_SEEDS_PER_S = 1191  # the earlier package, 1 worker process (its own README)

COLUMNS = ["Case", "Mode", "Seeds", "Wall time", "Seeds/s", "Measured", "Target"]


# ---------------------------------------------------------------- helpers


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


def known_costs(earlier: Mapping[int, Mapping[str, float]], n_trials: int) -> str:
    """What cases 1 and 2 measured of slurptuna's fixed costs, for a run of ``n_trials`` trials."""
    fixed, per_trial = earlier.get(1, {}).get("repo_fixed"), earlier.get(2, {}).get("per_trial")
    if fixed is None or per_trial is None:
        return "slurptuna's fixed costs (cases 1 and 2 not run)"
    total = fixed + n_trials * per_trial
    return (
        f"the fixed cost per run ({fmt_s(fixed)}, case 1) and {n_trials} x the cost per trial "
        f"({fmt_s(per_trial)}, case 2) add up to {fmt_s(total)}"
    )


def median(values: list[float]) -> float:
    return statistics.median(values)


def timed(fn) -> float:
    """Wall seconds of ``fn()`` (or the float it returns: its own wall time)."""
    started = time.perf_counter()
    measured = fn()
    return measured if isinstance(measured, float) else time.perf_counter() - started


def repeat(fn, times: int) -> list[float]:
    return [timed(fn) for _ in range(times)]


def interleaved(fns: list, times: int) -> list[list[float]]:
    """Each fn ``times`` times, round-robin, so that drifts in machine load hit every side alike."""
    walls: list[list[float]] = [[] for _ in fns]
    for _ in range(times):
        for index, fn in enumerate(fns):
            walls[index].append(timed(fn))
    return walls


def fmt_s(seconds: float) -> str:
    return f"{seconds * 1000:.1f} ms" if seconds < 1 else f"{seconds:.2f} s"


def fmt_rate(rate: float) -> str:
    return f"{rate:,.0f}"


def target(text: str, met: bool, limit: str = "") -> str:
    """The target cell: the target, then met or "(not met)" with what limits it."""
    return f"{text}: met" if met else f"{text} **(not met)**" + (f": {limit}" if limit else "")


def row(
    case: str,
    mode: str,
    seeds: str | int,
    walls: list[float] | None,
    seeds_per_s: float | None = None,
    measured: str = "",
    goal: str = "-",
) -> dict[str, str]:
    """One row of the table, printed as soon as it is measured."""
    wall = "-" if not walls else f"{fmt_s(median(walls))} (n={len(walls)})"
    cells = {
        "Case": case,
        "Mode": mode,
        "Seeds": f"{seeds:,}" if isinstance(seeds, int) else str(seeds),
        "Wall time": wall,
        "Seeds/s": "-" if seeds_per_s is None else fmt_rate(seeds_per_s),
        "Measured": measured,
        "Target": goal,
    }
    print(" | ".join(cells.values()), flush=True)
    return cells


@dataclass
class Outcome:
    """What a case returns: its rows, its notes under the table, and what later cases may use."""

    rows: list[dict[str, str]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    measured: dict[str, float] = field(default_factory=dict)

    @classmethod
    def start(cls, title: str) -> Outcome:
        """Log the case and note the load average at its start (other sessions load this machine)."""
        log(title)
        return cls(notes=[f"- Load average at the start of {title.split(':')[0]}: {loadavg()}"])

    def row(self, *cells, **named) -> None:
        self.rows.append(row(*cells, **named))


class Roots:
    """Run roots: one directory per run, under the repo (as users' runs are) or under /tmp."""

    def __init__(self, repo_root: Path, tmp_root: Path) -> None:
        self.repo, self.tmp, self.count = repo_root, tmp_root, 0

    def new(self, label: str, where: str = "repo") -> Path:
        self.count += 1
        return (self.repo if where == "repo" else self.tmp) / f"{label}-{self.count}"


@dataclass(frozen=True)
class Bench:
    """What every case is given: the size of the run, where runs go, and what earlier cases measured."""

    quick: bool
    roots: Roots
    earlier: Mapping[int, Mapping[str, float]]  # case number -> its Outcome.measured

    def single(self, loss, label: str, where: str = "repo", **options):
        """A function that runs ``optimize_run`` in single mode in a fresh run root and returns its wall time."""

        def run() -> float:
            root = self.roots.new(label, where)
            started = time.perf_counter()
            result = run_single(loss, root, **options)
            wall = time.perf_counter() - started
            if result.n_complete != options.get("n_trials", 10):
                raise RuntimeError(f"{label}: {result.n_complete} trials complete in {result.run_dir}")
            shutil.rmtree(root, ignore_errors=True)
            return wall

        return run


def run_single(loss, root: Path, **options) -> slurptuna.OptimizeResult:
    return slurptuna.optimize_run(loss, run_root=str(root), progress=False, **options)


def own_session(fn) -> float:
    """Wall seconds of ``fn()`` run in a forked child that starts its own session.

    Linux's autogroup scheduling (on here when /proc/sys/kernel/sched_autogroup_enabled is 1)
    shares the CPU between sessions first: slurptuna's pool workers call setsid, so each gets a
    session's share against the other sessions loading this machine. Baselines run the same way,
    or they would be slowed by the load more than slurptuna is.
    """
    sys.stdout.flush()
    sys.stderr.flush()
    started = time.perf_counter()
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            os.setsid()
            fn()
            code = 0
        except BaseException:
            import traceback

            traceback.print_exc()
        finally:
            os._exit(code)
    status = os.waitpid(pid, 0)[1]
    wall = time.perf_counter() - started
    if os.waitstatus_to_exitcode(status) != 0:
        raise RuntimeError(f"a baseline child failed: {status}")
    return wall


def autogroup() -> str:
    try:
        return Path("/proc/sys/kernel/sched_autogroup_enabled").read_text().strip()
    except OSError:
        return "?"


def bare_processes(n_processes: int, n_evaluations: int, n_seeds: int) -> float:
    """The machine's ceiling: fork ``n_processes`` bare processes that share ``n_evaluations`` calls of
    ``bench_kernels.work`` (seed = i % n_seeds, as trials of n_seeds each), no slurptuna; wall seconds."""
    bounds = [n_evaluations * i // n_processes for i in range(n_processes + 1)]
    sys.stdout.flush()
    sys.stderr.flush()
    started = time.perf_counter()
    pids = []
    for lo, hi in itertools.pairwise(bounds):
        pid = os.fork()
        if pid == 0:
            code = 1
            try:
                os.setsid()  # its own session, as slurptuna's pool workers: see own_session
                work = bench_kernels.work
                for i in range(lo, hi):
                    work(0.5, i % n_seeds)
                code = 0
            finally:
                os._exit(code)
        pids.append(pid)
    for pid in pids:
        os.waitpid(pid, 0)
    return time.perf_counter() - started


def make_chunk_run(root: Path, loss, n_seeds: int, processes: int = 1) -> Path:
    """A real run directory with one trial of one chunk (computed once by single mode)."""
    result = run_single(loss, root, n_trials=1, n_seeds=n_seeds, chunk_size=n_seeds, worker_parallelism=processes)
    return Path(result.run_dir)


def chunk_file(run_dir: Path) -> Path:
    """What a chunk task writes (the single-mode run that made the directory merged its record)."""
    return slurptuna.RunPaths(run_dir).trial(0).chunk(0)


def forget_chunk(run_dir: Path) -> None:
    """Remove the trial's chunk record wherever it is, so that a chunk task computes it again."""
    trial = slurptuna.RunPaths(run_dir).trial(0)
    chunk_file(run_dir).unlink(missing_ok=True)
    trial.merged_chunks.unlink(missing_ok=True)


def timed_process(argv: list[str], env: dict[str, str] | None = None) -> tuple[float, int, resource.struct_rusage]:
    """Wall seconds, exit code and rusage of one child process (interpreter start included)."""
    started = time.perf_counter()
    process = subprocess.Popen(argv, env=env or ENV, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(process.pid, 0)
    wall = time.perf_counter() - started
    process.returncode = os.waitstatus_to_exitcode(status)
    stderr = process.stderr.read().decode(errors="replace")
    process.stderr.close()
    if process.returncode != 0:
        raise RuntimeError(f"{argv} exited {process.returncode}: {stderr[-2000:]}")
    return wall, process.returncode, usage


def worker_chunk_argv(run_dir: Path) -> list[str]:
    return [sys.executable, "-m", "slurptuna", "worker", "chunk", str(run_dir), "0", "--chunk", "0"]


# ---------------------------------------------------------------- machine


def loadavg() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def machine_description(roots: Roots) -> list[str]:
    cpu = platform.processor() or "?"
    try:
        with open("/proc/cpuinfo") as f:
            found = re.search(r"^model name\s*:\s*(.+)$", f.read(), re.MULTILINE)
            cpu = found.group(1).strip() if found else cpu
    except OSError:
        pass
    import optuna

    slurm = "not found"
    if shutil.which("sinfo"):
        version = subprocess.run(
            ["sinfo", "-V"], capture_output=True, text=True, env=slurm_env(), check=False
        ).stdout.strip()
        conf = slurm_env().get("SLURM_CONF", "default config")
        slurm = version + (f" (answering, {conf})" if slurm_answers() else " (installed, not answering)")
    return [
        f"- Date: {datetime.now(timezone.utc).isoformat(timespec='seconds')}",
        f"- CPU: {cpu}; cores usable: {CORES} (os.cpu_count() = {os.cpu_count()})",
        f"- OS: {platform.platform()}",
        f"- Python: {platform.python_version()} ({sys.executable})",
        f"- optuna: {optuna.__version__}; slurptuna: {slurptuna.__version__}",
        f"- Slurm: {slurm}",
        f"- Load average at start: {loadavg()} (other processes on this machine slow every case; compare rows "
        "of one run, not runs of different days)",
        f"- Autogroup scheduling: {autogroup()} (1: the CPU is shared between sessions first; slurptuna's pool "
        "workers start their own sessions, so the baselines here run in processes of their own session too)",
        f"- Run roots: `{roots.repo.relative_to(REPO)}/` in the repo (users' runs live in their project "
        f"directory); the no-op row also in `{roots.tmp}`",
        f"- Loss `bench_work`: {bench_kernels.WORK_ITERATIONS} LCG steps, "
        f"{measure_work_ms():.2f} ms per seed measured here",
    ]


def measure_work_ms() -> float:
    started = time.perf_counter()
    for seed in range(200):
        bench_kernels.work(0.5, seed)
    return (time.perf_counter() - started) / 200 * 1000


# ---------------------------------------------------------------- case 1: no-op loss, single mode, default chunks


def file_write_us(directory: Path, record: dict, n: int = 2000) -> float:
    """Microseconds per chunk record appended as a single-mode pool worker appends them, in ``directory``."""
    directory.mkdir(parents=True, exist_ok=True)
    records = slurptuna._RecordFile(directory / "worker_1.jsonl")
    started = time.perf_counter()
    for _ in range(n):
        records.append(record)
    records.close()
    seconds = time.perf_counter() - started
    shutil.rmtree(directory, ignore_errors=True)
    return seconds / n * 1e6


def case_noop(bench: Bench) -> Outcome:
    out = Outcome.start("case 1: no-op loss, optimize_run single mode, one trial, default chunk_size")
    definition = bench_losses.bench_noop
    n = 200_000
    chunk = definition.default_chunk_size
    n_chunks = -(-n // chunk)
    function = definition.seed_loss_fn

    def bare() -> float:
        started = time.perf_counter()
        total = 0.0
        for seed in range(n):
            total += function(PARAMS, seed)
        return time.perf_counter() - started

    bare_walls = repeat(bare, 5)
    bare_rate = n / median(bare_walls)
    out.row(
        "1 no-op",
        f"bare Python loop: `for seed in range({n:,}): total += loss(params, seed)`",
        n,
        bare_walls,
        bare_rate,
        "the most one process can do here",
        "-",
    )
    loop_walls = repeat(lambda: slurptuna.run_chunk(definition, PARAMS, range(n), CONTEXT, processes=1), 5)
    loop_rate = n / median(loop_walls)
    out.row(
        "1 no-op",
        "slurptuna's evaluation loop alone: `run_chunk(..., processes=1)` in-process (call, check, append, moments)",
        n,
        loop_walls,
        loop_rate,
        f"{loop_rate / bare_rate:.2f} of the bare loop",
        "-",
    )
    cold = timed(bench.single(definition, "noop-cold", n_trials=1, n_seeds=100))
    measured: dict[str, float] = {}
    for where in ("repo", "tmp"):
        big, small = interleaved(
            [
                bench.single(definition, "noop", where, n_trials=1, n_seeds=n),
                bench.single(definition, "noop-fixed", where, n_trials=1, n_seeds=100),
            ],
            3,
        )
        rate = n / median(big)
        per_chunk = (median(big) - median(small)) / (n_chunks - 1)
        record = {
            "trial_number": 0,
            "chunk_index": 1866,
            "seeds": {"start": 186600, "stop": 186700},
            "params": {"x": 0.6964691855978616},
            "stats": {"count": 100, "mean": 0.0, "m2": 0.0, "min": 0.0, "max": 0.0, "components": {}},
            "elapsed_seconds": 1.9e-05,
            "processes": 1,
        }  # a chunk file of this run, as slurptuna writes it
        write_us = file_write_us((bench.roots.repo if where == "repo" else bench.roots.tmp) / "write-probe", record)
        loop_us = chunk / bare_rate * 1e6
        place = "in the repo" if where == "repo" else "in /tmp"
        measured.update({f"{where}_rate": rate, f"{where}_fixed": median(small), f"{where}_per_chunk": per_chunk})
        measured[f"{where}_write_us"] = write_us
        measured[f"{where}_wall"] = median(big)
        why = (
            f"fixed cost {fmt_s(median(small))} per run, then {per_chunk * 1e6:.0f} us per chunk of {chunk} seeds "
            f"({loop_us:.0f} us of it the loss loop, ~{write_us:.0f} us one chunk record)"
        )
        out.row(
            "1 no-op",
            f"optimize_run single, 1 trial, default chunk_size={chunk} ({n_chunks:,} chunks), 1 process, run root "
            f"{place}",
            n,
            big,
            rate,
            f"{rate:,.0f} seeds/s per process end to end = {rate / bare_rate:.3f} of the bare loop, "
            f"{rate / loop_rate:.3f} of `run_chunk` alone",
            target(">= 2,000,000 seeds/s per process (goal 5,000,000)", rate >= 2_000_000, why),
        )
        out.row(
            "1 no-op",
            f"breakdown {place}: the same call with n_seeds=100 (1 chunk): study, pool start, ask/tell, reduce",
            100,
            small,
            None,
            f"fixed cost {fmt_s(median(small))}; per further chunk {per_chunk * 1e6:.0f} us = "
            f"(wall - fixed) / {n_chunks - 1:,}: loss loop {loop_us:.0f} us, appending one chunk record like "
            f"a pool worker (`_RecordFile.append`, timed alone) {write_us:.0f} us, the rest "
            f"{per_chunk * 1e6 - loop_us - write_us:.0f} us (pipe messages, bookkeeping, reduce)",
            "-",
        )
    out.notes.append(
        f"- Case 1: the first optimize_run in this process (n_seeds=100) took {fmt_s(cold)}, "
        f"vs {fmt_s(measured['repo_fixed'])} later ones (first use of optuna's SQLite storage); "
        "the timed rows come after it."
    )
    out.measured.update(measured)
    return out


# ---------------------------------------------------------------- case 2: fixed cost per trial and per run


def case_per_trial(bench: Bench) -> Outcome:
    import optuna

    out = Outcome.start("case 2: 1-seed trials with the pool up; pool start")
    definition = bench_losses.bench_noop
    many = 41
    walls_many, walls_one = interleaved(
        [
            bench.single(definition, "trials", n_trials=many, n_seeds=1),
            bench.single(definition, "trial1", n_trials=1, n_seeds=1),
        ],
        3,
    )
    per_trial = (median(walls_many) - median(walls_one)) / (many - 1)

    def create_study() -> float:
        root = bench.roots.new("study")
        root.mkdir(parents=True)
        started = time.perf_counter()
        optuna.create_study(study_name="s", storage=f"sqlite:///{root / 'optuna.db'}")
        wall = time.perf_counter() - started
        shutil.rmtree(root, ignore_errors=True)
        return wall

    study_walls = repeat(create_study, 3)
    pool_proxy = median(walls_one) - per_trial
    out.row(
        "2 fixed cost",
        f"1-seed trials, pool already up: ({many} trials - 1 trial) / {many - 1}",
        many,
        walls_many,
        None,
        f"{per_trial * 1000:.1f} ms per trial (1 trial alone: {fmt_s(median(walls_one))})",
        target("<= 0.05 s per trial", per_trial <= 0.05),
    )
    out.row(
        "2 fixed cost",
        "pool start per run (proxy: the 1-trial run's wall - the per-trial cost)",
        1,
        walls_one,
        None,
        f"{fmt_s(pool_proxy)}, an upper bound: it includes opening the run directory and the study "
        f"(`optuna.create_study` on SQLite alone: {fmt_s(median(study_walls))})",
        target("<= 0.3 s per run", pool_proxy <= 0.3),
    )
    out.measured.update(per_trial=per_trial, pool_proxy=pool_proxy)
    return out


# ---------------------------------------------------------------- case 3: ~1 ms loss, 2 processes vs 1


def case_scaling(bench: Bench) -> Outcome:
    out = Outcome.start("case 3: ~1 ms loss, worker_parallelism=2 vs 1, and the machine's ceiling")
    definition = bench_losses.bench_work
    n_trials, n_seeds = (2, 500) if bench.quick else (2, 2000)
    seeds = n_trials * n_seeds
    shape = {"n_trials": n_trials, "n_seeds": n_seeds}
    one_100, two_100, one_10, two_10, ceiling, bare_one = interleaved(
        [
            bench.single(definition, "scale", chunk_size=100, worker_parallelism=1, **shape),
            bench.single(definition, "scale", chunk_size=100, worker_parallelism=2, **shape),
            bench.single(definition, "scale", chunk_size=10, worker_parallelism=1, **shape),
            bench.single(definition, "scale", chunk_size=10, worker_parallelism=2, **shape),
            lambda: bare_processes(2, seeds, n_seeds),
            lambda: bare_processes(1, seeds, n_seeds),
        ],
        3,
    )
    machine = median(bare_one) / median(ceiling)
    out.row(
        "3 scaling",
        f"ceiling: 2 bare forked processes, each half of the {seeds:,} evaluations of `bench_kernels.work`",
        seeds,
        ceiling,
        seeds / median(ceiling),
        f"no slurptuna, no optuna; {machine:.2f}x of 1 bare process ({fmt_s(median(bare_one))})",
        "-",
    )
    for chunk, one, two, goal in ((100, one_100, two_100, 1.9), (10, one_10, two_10, 1.8)):
        speedup = median(one) / median(two)
        of_ceiling = median(ceiling) / median(two)
        out.row(
            "3 scaling",
            f"optimize_run single, {n_trials} trials x {n_seeds:,} seeds, chunk_size={chunk}, worker_parallelism=1",
            seeds,
            one,
            seeds / median(one),
            "baseline",
            "-",
        )
        limit = []
        if speedup < goal:
            limit.append(f"{speedup:.2f}x (the machine gave 2 bare processes {machine:.2f}x of 1 in this run)")
        if of_ceiling < 0.95:
            limit.append(
                f"{of_ceiling:.2f} of the ceiling, {median(two) - median(ceiling):.2f} s more; "
                + known_costs(bench.earlier, n_trials)
            )
        out.row(
            "3 scaling",
            f"optimize_run single, same, chunk_size={chunk}, worker_parallelism=2",
            seeds,
            two,
            seeds / median(two),
            f"{speedup:.2f}x of 1 process; {of_ceiling:.3f} of the ceiling (ceiling wall / this wall)",
            target(f">= {goal}x and >= 0.95 of the ceiling", speedup >= goal and of_ceiling >= 0.95, "; ".join(limit)),
        )
    return out


# ---------------------------------------------------------------- case 4: the README's shape


def case_readme_shape(bench: Bench) -> Outcome:
    out = Outcome.start("case 4: the README's shape with the ~1 ms loss vs the machine's ceiling")
    n_trials = 3 if bench.quick else 10
    n_seeds, chunk, parallelism = 800, 40, 4
    seeds = n_trials * n_seeds
    ours, ceiling = interleaved(
        [
            bench.single(
                bench_losses.bench_work,
                "readme",
                n_trials=n_trials,
                n_seeds=n_seeds,
                chunk_size=chunk,
                worker_parallelism=parallelism,
            ),
            lambda: bare_processes(CORES, seeds, n_seeds),
        ],
        3,
    )
    ratio = median(ours) / median(ceiling)
    out.row(
        "4 README shape",
        f"ceiling: {CORES} bare forked processes (one per core) sharing the same {seeds:,} evaluations",
        seeds,
        ceiling,
        seeds / median(ceiling),
        "no slurptuna, no optuna",
        "-",
    )
    out.row(
        "4 README shape",
        f"optimize_run single, n_trials={n_trials}, n_seeds={n_seeds}, chunk_size={chunk}, "
        f"worker_parallelism={parallelism} (pool of {min(parallelism, CORES)} processes on {CORES} cores)",
        seeds,
        ours,
        seeds / median(ours),
        f"wall {ratio:.3f}x the ceiling's",
        target(
            "within 1.1x of the ceiling",
            ratio <= 1.1,
            f"{median(ours) - median(ceiling):.2f} s more than the ceiling; "
            f"{known_costs(bench.earlier, n_trials)}; the trials run in sequence and each waits for its last chunk",
        ),
    )
    return out


# ---------------------------------------------------------------- case 5: plain Optuna, one process


def case_plain_optuna(bench: Bench) -> Outcome:
    import optuna

    out = Outcome.start("case 5: single mode with one process vs plain Optuna n_jobs=1")
    n_trials, n_seeds = (2, 500) if bench.quick else (4, 1000)
    seeds = n_trials * n_seeds

    def plain() -> None:
        def objective(trial):
            x = trial.suggest_float("x", 0.0, 1.0)
            return sum(bench_kernels.work(x, seed) for seed in range(n_seeds)) / n_seeds

        study = optuna.create_study(sampler=optuna.samplers.TPESampler(seed=123))
        study.optimize(objective, n_trials=n_trials, n_jobs=1)

    walls_plain, walls_ours = interleaved(
        [
            lambda: own_session(plain),
            bench.single(bench_losses.bench_work, "plain", n_trials=n_trials, n_seeds=n_seeds, worker_parallelism=1),
        ],
        3,
    )
    ratio = median(walls_ours) / median(walls_plain)
    out.row(
        "5 vs plain Optuna",
        f"`study.optimize(objective, n_trials={n_trials}, n_jobs=1)`, objective = mean of bench_work over "
        f"{n_seeds:,} seeds, in-memory storage, in a process of its own session",
        seeds,
        walls_plain,
        seeds / median(walls_plain),
        "baseline",
        "-",
    )
    out.row(
        "5 vs plain Optuna",
        "optimize_run single, same trials and seeds, default chunk_size=100, worker_parallelism=1",
        seeds,
        walls_ours,
        seeds / median(walls_ours),
        f"wall slurptuna / plain Optuna = {ratio:.3f}",
        target(
            "ratio <= 1.05",
            ratio <= 1.05,
            f"{median(walls_ours) - median(walls_plain):.2f} s more; {known_costs(bench.earlier, n_trials)}",
        ),
    )
    return out


# ---------------------------------------------------------------- case 6: the earlier package's defaults


def case_earlier_defaults(bench: Bench) -> Outcome:
    out = Outcome.start("case 6: the earlier package's defaults with the ~1 ms loss")
    n_trials = 3 if bench.quick else 10
    seeds = n_trials * 1000
    walls, bare_walls = interleaved(
        [
            bench.single(bench_losses.bench_work, "earlier", n_trials=n_trials, chunk_size=100, num_chunks=10),
            lambda: bare_processes(1, seeds, 1000),
        ],
        3,
    )
    rate = seeds / median(walls)
    bare = seeds / median(bare_walls)
    out.row(
        "6 earlier defaults",
        f"optimize_run single, n_trials={n_trials}, chunk_size=100, num_chunks=10 (1,000 seeds per trial), "
        "worker_parallelism=1",
        seeds,
        walls,
        rate,
        f"{rate:,.0f} seeds/s = {rate / bare:.3f} of a bare loop of the same evaluations in one forked process "
        f"({bare:,.0f} seeds/s, {fmt_s(median(bare_walls))}); "
        f"the earlier package: {EARLIER_SEEDS_PER_S:,} seeds/s with 1 worker (its own loss, not comparable as a "
        "ratio)",
        "-",
    )
    return out


# ---------------------------------------------------------------- case 7: a distributed chunk task's own speed


def case_chunk_task(bench: Bench) -> Outcome:
    out = Outcome.start("case 7: a distributed chunk task (`python -m slurptuna worker chunk`) and run_chunk")
    definition = bench_losses.bench_noop
    n_task = 2_000_000 if bench.quick else 5_000_000
    run_dir = make_chunk_run(bench.roots.new("task"), definition, n_task)
    walls_t, rss = [], []
    for _ in range(3):
        forget_chunk(run_dir)
        wall, _, usage = timed_process(worker_chunk_argv(run_dir))
        walls_t.append(wall)
        rss.append(usage.ru_maxrss)
    startup = repeat(lambda: timed_process([sys.executable, "-m", "slurptuna", "--help"])[0], 3)
    rate_t = n_task / median(walls_t)
    record = json.loads(chunk_file(run_dir).read_text())
    importtime = subprocess.run(
        [sys.executable, "-X", "importtime", *worker_chunk_argv(run_dir)[1:]],
        env=ENV,
        capture_output=True,
        text=True,
        check=False,
    ).stderr
    optuna_imported = re.search(r"\|\s+optuna\s*$", importtime, re.MULTILINE) is not None
    out.row(
        "7 chunk task",
        "no-op loss, one `worker chunk` task end to end (interpreter start included)",
        n_task,
        walls_t,
        rate_t,
        f"`python -m slurptuna --help` alone {fmt_s(median(startup))}; in-task loop "
        f"{record['elapsed_seconds']:.2f} s; optuna imported by the task: {'YES' if optuna_imported else 'no'}",
        "-",
    )
    work = bench_losses.bench_work
    n_work = 600 if bench.quick else 2000
    one, two = interleaved(
        [
            lambda: slurptuna.run_chunk(work, PARAMS, range(n_work), CONTEXT, processes=1),
            lambda: slurptuna.run_chunk(work, PARAMS, range(n_work), CONTEXT, processes=2),
        ],
        3,
    )
    speedup = median(one) / median(two)
    out.row(
        "7 chunk task",
        f"~1 ms loss, `run_chunk` with 2 processes vs 1 (a chunk task's worker_parallelism), {n_work:,} seeds",
        n_work,
        two,
        n_work / median(two),
        f"{speedup:.2f}x (1 process: {fmt_s(median(one))})",
        target(
            ">= 1.9x",
            speedup >= 1.9,
            f"both run in the benchmark's session, whose CPU share other sessions' load cuts (load average now "
            f"{loadavg()}); `run_chunk`'s children do not start sessions of their own",
        ),
    )
    out.measured.update(task_rss_kb=max(rss), task_seeds=n_task)
    return out


# ---------------------------------------------------------------- case 8: real Slurm


def slurm_env() -> dict[str, str]:
    """The environment for Slurm commands: SLURM_CONF if set, else what `slurm/local-slurm env` prints.

    local-slurm reads SLURPTUNA_SLURM_DIR (and the other SLURPTUNA_SLURM_* variables) from the
    environment, so `SLURPTUNA_SLURM_DIR=/tmp/my-slurm python benchmark/run.py` uses that cluster.
    """
    env = dict(ENV)
    if "SLURM_CONF" not in env and (REPO / "slurm" / "local-slurm").exists():
        shown = subprocess.run(
            ["bash", str(REPO / "slurm" / "local-slurm"), "env"], capture_output=True, text=True, env=ENV, check=False
        ).stdout
        for name, value in re.findall(r"(\w+)=(\S+)", shown):
            env[name] = value.strip("'\"")
    return env


def slurm_answers() -> bool:
    try:
        probe = subprocess.run(
            ["sinfo", "-h"], capture_output=True, text=True, timeout=10, env=slurm_env(), check=False
        )
    except (FileNotFoundError, subprocess.TimeoutExpired):
        return False
    return probe.returncode == 0 and bool(probe.stdout.strip())


BATCH_SCRIPT = '#!/bin/sh\nexec "$@"\n'


def _sbatch_hand(*options: str, name: str, command: list[str], env: dict[str, str], cpus: int = 1) -> str:
    """One sbatch of the hand-written baseline; its job id."""
    common = ["sbatch", "--parsable", "--mem-per-cpu=100M", "--time=0-00:10:00", f"--cpus-per-task={cpus}"]
    done = subprocess.run(
        [*common, *options, f"--job-name={name}", *command], capture_output=True, text=True, env=env, check=True
    )
    return done.stdout.strip().split(";")[0]


def handwritten_run(
    root: Path,
    n_trials: int,
    n_chunks: int,
    chunk_size: int,
    poll: float,
    env: dict[str, str],
    kind: str = "chunk",
    extra: tuple[str, ...] = (),
    cpus: int = 1,
) -> float:
    """A hand-written controller: Optuna ask/tell, sbatch array + afterok reduce, squeue polling.

    ``kind`` and ``extra`` pick handwritten.py's task (case 12: ``sleep`` SECONDS THREADS), ``cpus``
    its `--cpus-per-task`.
    """
    import optuna

    root.mkdir(parents=True)
    script = root / "task.sh"
    script.write_text(BATCH_SCRIPT)
    task = [sys.executable, str(BENCH / "handwritten.py")]
    started = time.perf_counter()
    study = optuna.create_study(sampler=optuna.samplers.TPESampler(seed=123))
    space = {"x": optuna.distributions.FloatDistribution(0.0, 1.0)}
    for number in range(n_trials):
        trial = study.ask(space)
        trial_dir = root / f"trial_{number}"
        trial_dir.mkdir()
        (trial_dir / "params.json").write_text(json.dumps(trial.params))

        job = [str(script), *task]
        array = _sbatch_hand(
            f"--array=0-{n_chunks - 1}",
            f"--output={trial_dir}/chunk_%A_%a.out",
            name=f"hand.t{number}.chunks",
            command=[*job, kind, str(trial_dir), str(chunk_size), *extra],
            env=env,
            cpus=cpus,
        )
        reduce = _sbatch_hand(
            f"--dependency=afterok:{array}",
            "--kill-on-invalid-dep=yes",
            f"--output={trial_dir}/reduce_%j.out",
            name=f"hand.t{number}.reduce",
            command=[*job, "reduce", str(trial_dir), str(n_chunks)],
            env=env,
        )
        while True:
            time.sleep(poll)
            shown = subprocess.run(
                ["squeue", "-h", "-j", f"{array},{reduce}", "-o", "%i|%T"],
                capture_output=True,
                text=True,
                env=env,
                check=False,
            )
            if shown.returncode == 0 and not shown.stdout.strip():
                break
        study.tell(trial, json.loads((trial_dir / "result.json").read_text())["mean"])
    return time.perf_counter() - started


class SlurmCounter:
    """Counts the controller's poll cycles (calls of the executor's wait) and its Slurm commands."""

    def __init__(self) -> None:
        self.cycles = 0
        self.commands: dict[str, int] = {}

    def __enter__(self) -> SlurmCounter:
        self.original_wait = slurptuna._SlurmExecutor.wait
        self.original_run = slurptuna._run_slurm
        counter = self

        def counting_wait(executor, seconds):
            counter.cycles += 1
            return counter.original_wait(executor, seconds)

        def counting_run(argv, *args, **kwargs):
            counter.commands[argv[0]] = counter.commands.get(argv[0], 0) + 1
            return counter.original_run(argv, *args, **kwargs)

        slurptuna._SlurmExecutor.wait = counting_wait
        slurptuna._run_slurm = counting_run
        return self

    def __exit__(self, *exc: object) -> None:
        slurptuna._SlurmExecutor.wait = self.original_wait
        slurptuna._run_slurm = self.original_run


def task_process_walls(roots: Roots, chunk_size: int) -> tuple[float, float]:
    """Median wall of one chunk task as a plain process (no Slurm): slurptuna's `worker chunk`, the hand-written."""
    run_dir = make_chunk_run(roots.new("task-cost"), bench_losses.bench_work, chunk_size)
    trial_dir = roots.new("task-cost-hand")
    trial_dir.mkdir(parents=True)
    (trial_dir / "params.json").write_text(json.dumps(PARAMS))
    hand = [sys.executable, str(BENCH / "handwritten.py"), "chunk", str(trial_dir), str(chunk_size)]
    hand_env = {**ENV, "SLURM_ARRAY_TASK_ID": "0"}
    ours, theirs = [], []
    for _ in range(5):
        forget_chunk(run_dir)
        ours.append(timed_process(worker_chunk_argv(run_dir))[0])
        theirs.append(timed_process(hand, env=hand_env)[0])
    return median(ours), median(theirs)


def case_real_slurm(bench: Bench) -> Outcome:
    out = Outcome.start("case 8: distributed mode on the real local Slurm")
    env = slurm_env()
    if not shutil.which("sbatch") or not slurm_answers():
        out.row("8 real Slurm", "distributed vs hand-written", "-", None, None, "skipped: no Slurm answers", "-")
        return out
    n_trials, n_chunks, chunk_size, poll = (3, 4, 100, 0.5) if bench.quick else (10, 8, 100, 0.5)
    seeds = n_trials * n_chunks * chunk_size
    saved = dict(os.environ)
    os.environ.update({k: v for k, v in env.items() if k.startswith("SLURM")})
    counts: list[SlurmCounter] = []

    def distributed(label: str, n_trials: int, n_seeds: int, chunk_size: int, counted: bool = True):
        def run() -> tuple[float, str]:
            started = time.perf_counter()
            with SlurmCounter() as counter:
                result = run_single(
                    bench_losses.bench_work,
                    bench.roots.new(label),
                    mode="distributed",
                    n_trials=n_trials,
                    n_seeds=n_seeds,
                    chunk_size=chunk_size,
                    worker_parallelism=1,
                    cpus_per_task=1,
                    mem_per_cpu="100M",
                    slurm_qos=None,
                    slurm_poll_seconds=poll,
                    worker_time_limit=timedelta(seconds=600),
                )
            wall = time.perf_counter() - started
            if counted:
                counts.append(counter)
            if result.n_complete != n_trials:
                raise RuntimeError(f"distributed run {result.run_dir}: {result.n_complete}/{n_trials} complete")
            return wall, result.run_dir

        return run

    ours = distributed("slurm", n_trials, n_chunks * chunk_size, chunk_size)
    walls_ours, walls_hand = [], []
    try:
        for index in range(3):  # interleaved, so that drifts in machine load hit both sides
            walls_hand.append(
                handwritten_run(bench.roots.new(f"hand{index}"), n_trials, n_chunks, chunk_size, poll, env)
            )
            walls_ours.append(ours()[0])
        # wall-clock efficiency: one trial of known compute, its chunks' own loop times summed
        eff_tasks, eff_seeds = CORES, 600 if bench.quick else 6000 // CORES  # one task per core: loop time = compute
        efficiency = []
        for _ in range(3):
            wall, run_dir = distributed("slurm-eff", 1, eff_tasks * eff_seeds, eff_seeds, counted=False)()
            trial = slurptuna.RunPaths(Path(run_dir)).trial(0)
            records = slurptuna._read_valid_chunks(trial, slurptuna.TrialParams.load(trial))
            compute = sum(records[c].elapsed_seconds for c in range(eff_tasks))
            efficiency.append((wall, compute))
    finally:
        os.environ.clear()
        os.environ.update(saved)
    per_hand = [w / n_trials for w in walls_hand]
    per_ours = [w / n_trials for w in walls_ours]
    task_ours, task_hand = task_process_walls(bench.roots, chunk_size)
    ratio = median(walls_ours) / median(walls_hand)
    shape = f"{n_trials} trials x {n_chunks} tasks x {chunk_size} seeds, poll {poll} s"
    out.row(
        "8 real Slurm",
        f"hand-written sbatch array + afterok reduce ({shape})",
        seeds,
        walls_hand,
        seeds / median(walls_hand),
        f"{fmt_s(median(per_hand))} per trial",
        "-",
    )
    out.row(
        "8 real Slurm",
        f"slurptuna distributed ({shape})",
        seeds,
        walls_ours,
        seeds / median(walls_ours),
        f"{fmt_s(median(per_ours))} per trial; slurptuna / hand-written = {ratio:.2f}",
        target(
            "ratio <= 1.0",
            ratio <= 1.0,
            f"{median(per_ours) - median(per_hand):.2f} s more per trial; one chunk task of {chunk_size} seeds run "
            f"as a bare process here: slurptuna's `worker chunk` {fmt_s(task_ours)} vs the hand-written task "
            f"{fmt_s(task_hand)}, so {n_chunks} tasks on {CORES} cores explain about "
            f"{(task_ours - task_hand) * n_chunks / CORES:.2f} s per trial; the rest is not broken down here",
        ),
    )
    cycles = sum(c.cycles for c in counts)
    squeues = sum(c.commands.get("squeue", 0) for c in counts)
    others = {name: sum(c.commands.get(name, 0) for c in counts) for name in ("sbatch", "scancel", "sacct")}
    out.row(
        "8 real Slurm",
        "squeue per poll cycle (the 3 slurptuna runs above, every cycle counted: calls of the executor's wait)",
        "-",
        None,
        None,
        f"{squeues / max(cycles, 1):.3f}: {squeues} squeue calls in {cycles} cycles with trials in flight; "
        f"other commands: {others}",
        target("1 squeue per poll cycle, >= 20 cycles", cycles >= 20 and squeues <= cycles),
    )
    cpus = min(eff_tasks, CORES)
    walls_e = [w for w, _ in efficiency]
    values = sorted((c / (w * cpus), w, c) for w, c in efficiency)
    value, wall_e, compute_e = values[len(values) // 2]
    overhead = wall_e - compute_e / cpus
    out.row(
        "8 real Slurm",
        f"wall-clock efficiency of one distributed trial: {eff_tasks} tasks x {eff_seeds:,} seeds of the ~1 ms "
        f"loss on {cpus} CPUs, poll {poll} s",
        eff_tasks * eff_seeds,
        walls_e,
        None,
        f"compute / (wall x CPUs) = {compute_e:.2f} s / ({wall_e:.2f} s x {cpus}) = {value:.1%} (median run); "
        f"wall beyond compute / CPUs: {overhead:.2f} s (study, sbatch, job starts, reduce job, polling)",
        "-",
    )
    return out


# ---------------------------------------------------------------- case 9: the controller at scale on fake_slurm


def controller_child(spec: dict) -> None:
    """Runs in a subprocess: one distributed optimize_run, measured from inside."""
    logging.basicConfig(level=logging.ERROR)
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    cycles = [0]
    writes = [0]
    original_wait = slurptuna._SlurmExecutor.wait
    original_write = slurptuna._write_json_atomic

    def counting_wait(self, seconds):  # once per poll cycle of the controller's loop, every cycle
        cycles[0] += 1
        return original_wait(self, seconds)

    def counting_write(path, record, *args, **kwargs):
        writes[0] += 1
        return original_write(path, record, *args, **kwargs)

    slurptuna._SlurmExecutor.wait = counting_wait
    slurptuna._write_json_atomic = counting_write
    profile_to = os.environ.get("BENCH_PROFILE_CONTROLLER")  # a path: dump the controller's cProfile there
    profiler = cProfile.Profile() if profile_to else None
    before = resource.getrusage(resource.RUSAGE_SELF)
    started = time.perf_counter()
    if profiler:
        profiler.enable()
    result = slurptuna.optimize_run(bench_losses.bench_sleep, mode="distributed", progress=False, **spec)
    if profiler:
        profiler.disable()
        profiler.dump_stats(profile_to)
    wall = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_SELF)
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    print(
        "RESULT "
        + json.dumps(
            {
                "wall": wall,
                "cpu": (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime),
                "children_cpu": children.ru_utime + children.ru_stime,
                "maxrss_kb": after.ru_maxrss,
                "cycles": cycles[0],
                "json_writes": writes[0],
                "n_complete": result.n_complete,
                "run_dir": result.run_dir,
            }
        ),
        flush=True,
    )


def dir_stats(path: Path) -> tuple[int, int]:
    files = [p for p in path.rglob("*") if p.is_file()]
    return len(files), sum(p.stat().st_size for p in files)


def fake_slurm_run(roots: Roots, n_trials: int, concurrent: int, n_tasks: int, chunk_size: int, poll: float) -> dict:
    """One distributed run on fake_slurm in a controller subprocess, measured from inside and from its logs."""
    state = roots.new("fake-state")
    state.mkdir(parents=True)
    env = {
        **ENV,
        "FAKE_SLURM_DIR": str(state),
        "FAKE_SLURM_FORK_PYTHON": "1",
        "PATH": os.pathsep.join([str(REPO / "fake_slurm"), os.path.dirname(sys.executable), os.environ["PATH"]]),
    }
    env = {k: v for k, v in env.items() if not k.startswith("SLURM_")}
    runs = roots.new("fake-runs")
    spec = {
        "n_trials": n_trials,
        "max_concurrent_trials": concurrent,
        "n_seeds": n_tasks * chunk_size,
        "chunk_size": chunk_size,
        "slurm_qos": None,
        "slurm_poll_seconds": poll,
        "run_root": str(runs),
    }
    process = subprocess.run(
        [sys.executable, str(Path(__file__).resolve()), "--controller-child", json.dumps(spec)],
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    line = next((ln for ln in process.stdout.splitlines() if ln.startswith("RESULT ")), None)
    if line is None:
        raise RuntimeError(f"controller child failed ({process.returncode}):\n{process.stderr[-3000:]}")
    measured = json.loads(line[len("RESULT ") :])
    if measured["n_complete"] != n_trials:
        raise RuntimeError(f"case 9: {measured['n_complete']}/{n_trials} trials complete in {measured['run_dir']}")
    calls = [json.loads(ln) for ln in (state / "calls.jsonl").read_text().splitlines()]
    measured["squeue"] = sum(c["cmd"] == "squeue" for c in calls)
    measured["other_calls"] = {cmd: sum(c["cmd"] == cmd for c in calls) for cmd in ("scancel", "sacct", "scontrol")}
    submissions = [json.loads(ln) for ln in (state / "submissions.jsonl").read_text().splitlines()]
    measured["sbatch"] = len(submissions)
    run_dir = Path(measured["run_dir"])
    per_trial = [dir_stats(slurptuna.RunPaths(run_dir).trial(t).dir) for t in range(n_trials)]
    logs = dir_stats(run_dir / "slurm_logs")  # arrays hold several trials' tasks: their logs, shared out
    measured["files_per_trial"] = statistics.mean(a[0] for a in per_trial) + logs[0] / n_trials
    measured["bytes_per_trial"] = statistics.mean(a[1] for a in per_trial)
    measured["log_bytes_per_trial"] = logs[1] / n_trials
    measured["run_level_bytes"] = sum(p.stat().st_size for p in run_dir.iterdir() if p.is_file())
    log(
        f"  {n_trials} trials x {n_tasks} tasks: {measured['wall']:.1f} s wall, controller CPU "
        f"{measured['cpu']:.2f} s, {measured['squeue']} squeue / {measured['cycles']} cycles"
    )
    shutil.rmtree(runs, ignore_errors=True)
    return measured


def case_fake_scale(bench: Bench) -> Outcome:
    out = Outcome.start("case 9: the controller with many trials and tasks on fake_slurm (fast launch)")
    # many short tasks: the controller's CPU, files; then long tasks: many poll cycles with trials in flight
    n_trials, concurrent, n_tasks, chunk_size, poll = (20, 10, 20, 10, 0.5) if bench.quick else (40, 20, 40, 10, 0.5)
    results = [fake_slurm_run(bench.roots, n_trials, concurrent, n_tasks, chunk_size, poll)]
    polling = (8, 4, 4, 1000, 0.25) if bench.quick else (20, 10, 8, 1000, 0.25)
    polled = fake_slurm_run(bench.roots, *polling)

    def med(key: str) -> float:
        return median([r[key] for r in results])

    seeds = n_trials * n_tasks * chunk_size
    cpu_per_trial = med("cpu") / n_trials
    shape = (
        f"{n_trials} trials, {concurrent} at a time, x {n_tasks} array tasks x {chunk_size} seeds of 5 ms sleep, "
        f"poll <= {poll} s"
    )
    walls = [r["wall"] for r in results]
    out.row(
        "9 controller scale",
        f"fake_slurm fast launch ({shape})",
        seeds,
        walls,
        seeds / median(walls),
        f"controller CPU {cpu_per_trial * 1000:.1f} ms/trial (own user+sys, children excluded); "
        f"fake Slurm commands {med('children_cpu') / n_trials * 1000:.0f} ms/trial",
        "-",
    )
    squeues = sum(r["squeue"] for r in [*results, polled])
    cycles = sum(r["cycles"] for r in [*results, polled])
    out.row(
        "9 controller scale",
        "squeue per poll cycle (every cycle counted: calls of the executor's wait; squeue from fake_slurm's log)",
        "-",
        None,
        None,
        f"{squeues / max(cycles, 1):.3f}: {squeues} squeue calls in {cycles} cycles: the run above "
        f"({results[0]['squeue']} in {results[0]['cycles']}) and {polling[0]} trials, {polling[1]} at a time, x "
        f"{polling[2]} tasks x {polling[3]} seeds of 5 ms, poll {polling[4]} s ({polled['squeue']} in "
        f"{polled['cycles']}); sbatch {med('sbatch') / n_trials:.2f} per trial; "
        f"scancel/sacct/scontrol {results[0]['other_calls']}",
        target("1 squeue per poll cycle, >= 20 cycles", cycles >= 20 and squeues <= cycles),
    )
    out.row(
        "9 controller scale",
        "files per trial",
        "-",
        None,
        None,
        f"{med('files_per_trial'):.0f} files ({n_tasks} chunk files + logs + params/jobs/summary); "
        f"{med('json_writes') / n_trials:.1f} atomic JSON writes by the controller per trial",
        "-",
    )
    out.measured.update(
        {
            "controller_rss_kb": max(r["maxrss_kb"] for r in results),
            "bytes_per_trial": med("bytes_per_trial"),
            "log_bytes_per_trial": med("log_bytes_per_trial"),
            "run_level_bytes": med("run_level_bytes"),
            "n_trials": n_trials,
            "n_tasks": n_tasks,
        }
    )
    return out


# ---------------------------------------------------------------- case 10: memory


def case_memory(bench: Bench) -> Outcome:
    log("case 10: memory")
    out = Outcome()
    overhead, scale = bench.earlier.get(7, {}), bench.earlier.get(9, {})
    if scale:
        out.row(
            "10 memory",
            f"controller peak RSS ({scale['n_trials']:.0f} trials x {scale['n_tasks']:.0f} tasks)",
            "-",
            None,
            None,
            f"{scale['controller_rss_kb'] / 1024:.0f} MiB (ru_maxrss)",
        )
    if overhead:
        out.row(
            "10 memory",
            f"one chunk task peak RSS ({overhead['task_seeds']:,} seeds, 1 process)",
            "-",
            None,
            None,
            f"{overhead['task_rss_kb'] / 1024:.0f} MiB (ru_maxrss of `worker chunk`)",
        )
    if scale:
        out.row(
            "10 memory",
            "run directory per trial",
            "-",
            None,
            None,
            f"{scale['bytes_per_trial']:,.0f} bytes of JSON in a trial's directory ({scale['n_tasks']:.0f} chunks, "
            f"no per-seed lists) + {scale['log_bytes_per_trial']:,.0f} bytes of logs; run level "
            f"(optuna.db, meta, summary) {scale['run_level_bytes']:,.0f} bytes",
        )
    return out


# ---------------------------------------------------------------- case 11: seeds as a budget


def rows_of(title: str, rows: Callable[[Path, bool], list[dict[str, str]]], directory: str, bench: Bench) -> Outcome:
    """A case that lives in a module of its own (``rows(tmp, quick)``), its rows printed as they come."""
    log(title)
    out = Outcome()
    for cells in rows(bench.roots.repo / directory, bench.quick):
        print(" | ".join(cells.values()), flush=True)
        out.rows.append(cells)
    return out


def case_pruning(bench: Bench) -> Outcome:
    return rows_of(
        "case 11: seeds as a budget (pruning), bench_pruning.py", bench_pruning.case_pruning, "pruning", bench
    )


def case_seeds(bench: Bench) -> Outcome:
    title = "case 15: seeds where they decide the ranking (target SE, racing, validate), bench_seeds.py"
    return rows_of(title, bench_seeds.case_seeds, "seeds", bench)


def case_storage(bench: Bench) -> Outcome:
    title = "case 13: the study's storage at 10,000 trials, SQLite vs journal file (bench_storage.py)"
    return rows_of(title, bench_storage.case_storage, "storage", bench)


# ---------------------------------------------------------------- case 12: the earlier package's width on real Slurm

WIDE_CPUS = 400  # the node case 12 needs: `slurm/local-slurm start --cpus 400`


def slurm_cpus(env: dict[str, str]) -> int:
    """CPUs the Slurm that ``env`` reaches declares in all (0 if none answers)."""
    try:
        shown = subprocess.run(
            ["sinfo", "-h", "-o", "%C"], capture_output=True, text=True, timeout=10, env=env, check=False
        )
    except (FileNotFoundError, subprocess.TimeoutExpired):
        return 0
    fields = shown.stdout.split()  # allocated/idle/other/total per partition line
    return max((int(f.split("/")[-1]) for f in fields if f.count("/") == 3), default=0)


def chunk_spans(records: list[dict], n_trials: int) -> tuple[float, list[float]]:
    """Per trial, first task start to last task end (from the chunks' own loop times); and every loop time."""
    spans, loops = [], []
    for number in range(n_trials):
        mine = [r for r in records if r.get("trial_number", number) == number]
        if not mine:
            continue
        starts = [r["finished_at"] - r["elapsed_seconds"] for r in mine]
        spans.append(max(r["finished_at"] for r in mine) - min(starts))
        loops.extend(r["elapsed_seconds"] for r in mine)
    return sum(spans), loops


def slurptuna_records(run_dir: Path, n_trials: int) -> list[dict]:
    """Every chunk record of a finished distributed run (merged ``chunks.jsonl``, else one file per chunk)."""
    records = []
    for number in range(n_trials):
        trial = slurptuna.RunPaths(run_dir).trial(number)
        if trial.merged_chunks.exists():
            lines = trial.merged_chunks.read_text().splitlines()
            records.extend(json.loads(line) for line in lines if line.strip())
        else:
            records.extend(json.loads(p.read_text()) for p in sorted(trial.chunks_dir.glob("chunk_*.json")))
    return records


def hand_records(root: Path, n_trials: int) -> list[dict]:
    return [
        {**json.loads(p.read_text()), "trial_number": number}
        for number in range(n_trials)
        for p in sorted((root / f"trial_{number}").glob("chunk_*.json"))
    ]


def case_wide_slurm(bench: Bench) -> Outcome:
    out = Outcome.start("case 12: 100 array tasks x 4 workers on a real local Slurm declaring 400 CPUs")
    env = slurm_env()
    cpus = slurm_cpus(env) if shutil.which("sbatch") else 0
    if cpus < WIDE_CPUS:
        found = f"one with {cpus} CPUs" if cpus else "none"
        out.row(
            "12 wide Slurm",
            "100 tasks x 4 workers, sleeping loss",
            "-",
            None,
            None,
            f"skipped: no Slurm declaring {WIDE_CPUS} CPUs answers ({found} at {env.get('SLURM_CONF', '?')}); "
            "see benchmark/README.md",
            "-",
        )
        return out
    # a sleeping loss: 4 threads per task, so 400 declared CPUs are not held back by the 2 real cores
    loss, sleep = (bench_losses.bench_sleep_wide_quick, 0.1) if bench.quick else (bench_losses.bench_sleep_wide, 0.6)
    n_tasks, workers, chunk_size, n_trials, poll = (20 if bench.quick else 100), 4, 400, 3, 0.5
    task_ideal = chunk_size * sleep / workers
    ideal = n_trials * task_ideal
    seeds = n_trials * n_tasks * chunk_size
    saved = dict(os.environ)
    os.environ.update({k: v for k, v in env.items() if k.startswith("SLURM")})
    try:
        hand_root = bench.roots.new("wide-hand")
        wall_hand = handwritten_run(
            hand_root, n_trials, n_tasks, chunk_size, poll, env, "sleep", (str(sleep), str(workers)), workers
        )
        started = time.perf_counter()
        result = run_single(
            loss,
            bench.roots.new("wide"),
            mode="distributed",
            n_trials=n_trials,
            n_seeds=n_tasks * chunk_size,
            chunk_size=chunk_size,
            max_concurrent_trials=1,
            worker_parallelism=workers,
            cpus_per_task=workers,
            use_processes=False,
            mem_per_cpu="100M",
            slurm_qos=None,
            slurm_poll_seconds=poll,
            worker_time_limit=timedelta(seconds=600),
        )
        wall_ours = time.perf_counter() - started
        if result.n_complete != n_trials:
            raise RuntimeError(f"distributed run {result.run_dir}: {result.n_complete}/{n_trials} complete")
    finally:
        os.environ.clear()
        os.environ.update(saved)
    shape = (
        f"{n_trials} trials x {n_tasks} tasks x {workers} threads, {chunk_size} seeds of {sleep} s sleep per task "
        f"(ideal {fmt_s(task_ideal)} a task, {fmt_s(ideal)} in all), poll {poll} s, {cpus} CPUs declared"
    )
    sides = {}
    for name, wall, records in (
        ("hand", wall_hand, hand_records(hand_root, n_trials)),
        ("ours", wall_ours, slurptuna_records(Path(result.run_dir), n_trials)),
    ):
        spans, loops = chunk_spans(records, n_trials)
        sides[name] = (ideal / wall, wall, spans, loops)

    def measured(name: str) -> str:
        eff, wall, spans, loops = sides[name]
        return (
            f"efficiency = ideal / wall = {fmt_s(ideal)} / {fmt_s(wall)} = {eff:.2f}; per trial: "
            f"{(wall - ideal) / n_trials:.2f} s beyond ideal, of which "
            f"{(wall - spans) / n_trials:.2f} s outside the tasks' loops (controller, sbatch, Python starts, "
            f"reduce, polling) and {(spans - ideal) / n_trials:.2f} s of stagger and overrun inside them "
            f"(loop time median {fmt_s(median(loops) if loops else 0.0)}, max {fmt_s(max(loops, default=0.0))})"
        )

    eff_hand, eff_ours = sides["hand"][0], sides["ours"][0]
    ratio = wall_ours / wall_hand
    out.row(
        "12 wide Slurm",
        f"hand-written sbatch array + afterok reduce ({shape})",
        seeds,
        [wall_hand],
        None,
        measured("hand"),
        "-",
    )
    reason = []
    if eff_ours < 0.9:
        reason.append(f"efficiency {eff_ours:.2f} < 0.90: {(wall_ours - ideal) / n_trials:.2f} s lost per trial")
    if ratio > 1.0:
        reason.append(f"{(wall_ours - wall_hand) / n_trials:.2f} s per trial behind the hand-written array")
    out.row(
        "12 wide Slurm",
        f"slurptuna distributed ({shape})",
        seeds,
        [wall_ours],
        None,
        measured("ours") + f"; slurptuna / hand-written wall = {ratio:.2f}",
        target(">= 0.90 of ideal, and ahead of the hand-written array", not reason, "; ".join(reason)),
    )
    out.notes.append(
        f"- Case 12 ran each side once, the hand-written array first (n=1: about {2 * ideal / 60:.0f} minutes of "
        "sleeping tasks). Earlier figures for this shape (issue 15, 20 s tasks): slurptuna 0.73, hand-written "
        "0.69, the earlier package 0.58."
    )
    out.measured.update({"efficiency": eff_ours, "efficiency_hand": eff_hand, "ratio": ratio})
    return out


# The cases by number, in the order they run; case 10 reads what 7 and 9 measured, 3 to 6 what 1 and 2 did.
def case_scale(bench: Bench) -> Outcome:
    bench.roots.repo.mkdir(parents=True, exist_ok=True)
    title = "case 14: S1, a site's scale, SIMULATED Slurm and clock, bench_scale.py"
    return rows_of(title, bench_scale.case_scale, "", bench)


CASES: dict[int, Callable[[Bench], Outcome]] = {
    1: case_noop,
    2: case_per_trial,
    3: case_scaling,
    4: case_readme_shape,
    5: case_plain_optuna,
    6: case_earlier_defaults,
    7: case_chunk_task,
    8: case_real_slurm,
    9: case_fake_scale,
    10: case_memory,
    11: case_pruning,
    12: case_wide_slurm,
    13: case_storage,
    14: case_scale,  # S1 with RandomSampler (bench_scale.py): about 8 minutes
    15: case_seeds,
}
DEFAULT_CASES = list(CASES)


# ---------------------------------------------------------------- profile


def profile(tmp: Path) -> None:
    n = 1_000_000
    run_dir = make_chunk_run(tmp / "profile", bench_losses.bench_noop, n)
    forget_chunk(run_dir)
    print(
        f"cProfile of run_chunk_task (what `python -m slurptuna worker chunk` runs): "
        f"no-op loss, {n:,} seeds, 1 process\n"
    )
    profiler = cProfile.Profile()
    profiler.enable()
    code = slurptuna.run_chunk_task(run_dir, 0, 0)
    profiler.disable()
    assert code == 0
    pstats.Stats(profiler).sort_stats("cumulative").print_stats(25)


# ---------------------------------------------------------------- main


def write_results(quick: bool, started: float, machine: list[str], outcomes: list[Outcome], full: bool) -> Path:
    """The run's table: RESULTS.md and README's table only from a full run (every number from one run);
    a subset of cases goes to ``benchmark/results/partial-RESULTS.md``, which git ignores."""
    lines = [
        "# slurptuna benchmark results",
        "",
        f"`python benchmark/run.py{' --quick' if quick else ''}`, "
        f"{(time.perf_counter() - started) / 60:.1f} minutes. Wall time: median of n runs (rows that are "
        "compared ran interleaved). Nothing is asserted: each row shows its target, and **(not met)** with what "
        "limits it. Every number here was printed by this one run.",
        "",
        *machine,
        "",
        "| " + " | ".join(COLUMNS) + " |",
        "|" + "|".join("---" for _ in COLUMNS) + "|",
        *("| " + " | ".join(r[c].replace("|", "\\|") for c in COLUMNS) + " |" for o in outcomes for r in o.rows),
        "",
        f"Load average at the end: {loadavg()}.",
        "",
        *(note for o in outcomes for note in o.notes),
    ]
    path = BENCH / "RESULTS.md" if full else BENCH / "results" / "partial-RESULTS.md"
    path.parent.mkdir(exist_ok=True)
    path.write_text("\n".join(lines).rstrip() + "\n")
    if not full:
        return path
    table = lines[lines.index(machine[-1]) + 2 :]
    _write_readme_table(table[: table.index("") + 2 if "" in table else len(table)])
    return path


README_MARKERS = (
    "<!-- performance: written by benchmark/run.py from the run in benchmark/RESULTS.md -->",
    "<!-- /performance -->",
)


def _write_readme_table(table: list[str]) -> None:
    """README.md's performance table is this run's table: no number there that this run did not print."""
    readme = REPO / "README.md"
    text = readme.read_text()
    start, end = README_MARKERS
    if start not in text or end not in text:
        log("README.md has no performance markers: not updated")
        return
    before, rest = text.split(start, 1)
    after = rest.split(end, 1)[1]
    readme.write_text(before + start + "\n" + "\n".join(table).rstrip() + "\n" + end + after)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="fewer seeds and trials")
    parser.add_argument("--profile", action="store_true", help="only print a cProfile of one chunk task")
    parser.add_argument("--controller-child", metavar="JSON", help=argparse.SUPPRESS)
    parser.add_argument(
        "--cases",
        default=",".join(map(str, DEFAULT_CASES)),
        help="comma-separated case numbers (default: all, 1-15); a subset writes "
        "benchmark/results/partial-RESULTS.md, not RESULTS.md or README's table",
    )
    parser.add_argument("--keep", action="store_true", help="keep benchmark/results/tmp-PID/ (the runs) at the end")
    args = parser.parse_args()
    if args.controller_child:
        controller_child(json.loads(args.controller_child))
        return 0
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    logging.basicConfig(level=logging.ERROR)
    cases = {int(c) for c in args.cases.split(",") if c.strip()}
    repo_root = BENCH / "results" / f"tmp-{os.getpid()}"
    tmp_root = Path(tempfile.mkdtemp(prefix="slurptuna-bench-"))
    roots = Roots(repo_root, tmp_root)
    try:
        if args.profile:
            profile(tmp_root)
            return 0
        started = time.perf_counter()
        machine = machine_description(roots)
        print("\n".join(machine), flush=True)
        outcomes: dict[int, Outcome] = {}
        for number, case in CASES.items():
            if number in cases:
                earlier = {n: o.measured for n, o in outcomes.items()}
                outcomes[number] = case(Bench(args.quick, roots, earlier))
        full = cases >= set(DEFAULT_CASES)
        path = write_results(args.quick, started, machine, list(outcomes.values()), full)
    finally:
        if not args.keep:
            shutil.rmtree(repo_root, ignore_errors=True)
        shutil.rmtree(tmp_root, ignore_errors=True)
    log(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
