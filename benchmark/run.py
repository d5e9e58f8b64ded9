#!/usr/bin/env python
"""slurptuna benchmark: measures every case on this machine and writes benchmark/RESULTS.md.

    python benchmark/run.py            # the full benchmark (about 10 minutes on 2 cores)
    python benchmark/run.py --quick    # fewer seeds and trials, under 3 minutes
    python benchmark/run.py --profile  # cProfile of one chunk task's hot path, top 25

Every case runs at least 3 times; the table shows the median. Nothing is asserted:
the targets of SPEC.md are printed next to the measurements. Runs go to a temp dir.
See benchmark/README.md for what each case measures.
"""

from __future__ import annotations

import argparse
import cProfile
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
from datetime import datetime, timezone
from pathlib import Path

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
sys.path[:0] = [str(REPO), str(BENCH)]

import bench_kernels  # noqa: E402
import bench_losses  # noqa: E402

import slurptuna  # noqa: E402

CORES = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
PYTHONPATH = os.pathsep.join([str(REPO), str(BENCH), *filter(None, [os.environ.get("PYTHONPATH")])])
ENV = {**os.environ, "PYTHONPATH": PYTHONPATH}
PARAMS = {"x": 0.5}
CONTEXT = {"entry_id": None, "trial_number": 0, "chunk_index": 0, "run_dir": ""}
EARLIER_SEEDS_PER_S = 1191  # the earlier package, 1 worker process
EARLIER_SHAPE = (100, 4, 40_000_000)  # tasks, processes per task, seeds per trial: 84x on 400 cores (21%)

ROWS: list[dict[str, str]] = []
EXTRA: list[str] = []


# ---------------------------------------------------------------- helpers


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


def median(values: list[float]) -> float:
    return statistics.median(values)


def repeat(fn, times: int) -> list[float]:
    """Wall seconds of ``fn()`` ``times`` times (fn may return its own wall time)."""
    walls = []
    for _ in range(times):
        started = time.perf_counter()
        measured = fn()
        walls.append(measured if isinstance(measured, float) else time.perf_counter() - started)
    return walls


def fmt_s(seconds: float) -> str:
    return f"{seconds * 1000:.1f} ms" if seconds < 1 else f"{seconds:.2f} s"


def fmt_rate(rate: float) -> str:
    return f"{rate:,.0f}"


def row(
    case: str,
    mode: str,
    seeds: str | int,
    walls: list[float] | None,
    seeds_per_s: float | None = None,
    speedup: str = "-",
    notes: str = "",
) -> None:
    wall = "-" if not walls else f"{fmt_s(median(walls))} (n={len(walls)})"
    ROWS.append(
        {
            "Case": case,
            "Mode": mode,
            "Seeds": f"{seeds:,}" if isinstance(seeds, int) else str(seeds),
            "Wall time": wall,
            "Seeds/s": "-" if seeds_per_s is None else fmt_rate(seeds_per_s),
            "Speedup": speedup,
            "Ratio/notes": notes,
        }
    )
    print(" | ".join(ROWS[-1].values()), flush=True)


def run_single(loss, root: Path, **options) -> slurptuna.OptimizeResult:
    return slurptuna.optimize_run(loss, run_root=str(root), progress=False, **options)


def make_chunk_run(root: Path, loss, n_seeds: int, processes: int = 1) -> Path:
    """A real run directory with one trial of one chunk (computed once by single mode)."""
    result = run_single(loss, root, n_trials=1, n_seeds=n_seeds, chunk_size=n_seeds, worker_parallelism=processes)
    return Path(result.run_dir)


def chunk_file(run_dir: Path) -> Path:
    return slurptuna.RunPaths(run_dir).trial(0).chunk(0)


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


def machine_description() -> list[str]:
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
        version = subprocess.run(["sinfo", "-V"], capture_output=True, text=True, check=False).stdout.strip()
        slurm = version + (" (answering)" if slurm_answers() else " (installed, not answering)")
    return [
        f"- Date: {datetime.now(timezone.utc).isoformat(timespec='seconds')}",
        f"- CPU: {cpu}; cores usable: {CORES} (os.cpu_count() = {os.cpu_count()})",
        f"- OS: {platform.platform()}",
        f"- Python: {platform.python_version()} ({sys.executable})",
        f"- optuna: {optuna.__version__}; slurptuna: {slurptuna.__version__}",
        f"- Slurm: {slurm}",
        f"- Load average at start: {' '.join(f'{x:.2f}' for x in os.getloadavg())} (other processes on this "
        "machine slow every case; compare rows of one run, not runs of different days)",
        f"- Loss `bench_work`: {bench_kernels.WORK_ITERATIONS} LCG steps, "
        f"{measure_work_ms():.2f} ms per seed measured here",
    ]


def measure_work_ms() -> float:
    started = time.perf_counter()
    for seed in range(200):
        bench_kernels.work(0.5, seed)
    return (time.perf_counter() - started) / 200 * 1000


# ---------------------------------------------------------------- case 1: framework overhead


def case_overhead(tmp: Path, quick: bool) -> dict[str, float]:
    log("case 1: framework overhead (no-op loss)")
    definition = bench_losses.bench_noop
    n = 1_000_000 if quick else 3_000_000
    walls = repeat(lambda: slurptuna.run_chunk(definition, PARAMS, range(n), CONTEXT, processes=1), 3)
    rate = n / median(walls)
    row(
        "1 overhead",
        "run_chunk, 1 process",
        n,
        walls,
        rate,
        "-",
        f"{rate:,.0f} seeds/s per process (target >= 1,000,000)",
    )
    walls_k = repeat(lambda: slurptuna.run_chunk(definition, PARAMS, range(n * CORES), CONTEXT, processes=CORES), 3)
    rate_k = n * CORES / median(walls_k)
    row(
        "1 overhead",
        f"run_chunk, {CORES} processes",
        n * CORES,
        walls_k,
        rate_k,
        f"{rate_k / rate:.2f}x",
        f"{rate_k / CORES:,.0f} seeds/s per process (fork pool start included)",
    )

    n_task = 2_000_000 if quick else 5_000_000
    run_dir = make_chunk_run(tmp / "case1", definition, n_task)
    walls_t, rss = [], []
    for _ in range(3):
        chunk_file(run_dir).unlink()
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
    row(
        "1 overhead",
        "`worker chunk` task, end to end",
        n_task,
        walls_t,
        rate_t,
        "-",
        f"{rate_t:,.0f} seeds/s incl. interpreter start; `python -m slurptuna --help` alone "
        f"{fmt_s(median(startup))}; in-task loop {record['elapsed_seconds']:.2f} s; "
        f"optuna imported by worker: {'YES' if optuna_imported else 'no'}",
    )
    return {"task_rss_kb": max(rss), "task_seeds": n_task, "noop_rate": rate}


# ---------------------------------------------------------------- case 2: single mode scaling


def case_scaling(tmp: Path, quick: bool) -> None:
    log("case 2: single-mode scaling (~1 ms pure-Python loss)")
    definition = bench_losses.bench_work
    n = 1000 if quick else 3000
    base = repeat(lambda: slurptuna.run_chunk(definition, PARAMS, range(n), CONTEXT, processes=1), 3)
    row("2 scaling", "run_chunk, 1 process", n, base, n / median(base), "1.00x", "baseline")
    for k in sorted({2, CORES}):
        walls = repeat(lambda k=k: slurptuna.run_chunk(definition, PARAMS, range(n), CONTEXT, processes=k), 3)
        speedup = median(base) / median(walls)
        target = "target >= 1.9x" if k == 2 else f"target >= {0.95 * k:.2f}x"
        note = f"{speedup / k:.3f} of linear; {target}"
        if k > CORES:
            note += f" (more processes than the {CORES} cores)"
        row("2 scaling", f"run_chunk, {k} processes", n, walls, n / median(walls), f"{speedup:.2f}x", note)

    n_trials, n_seeds = (2, 600) if quick else (3, 2000)
    seeds = n_trials * n_seeds
    counter = iter(range(10**6))

    def single(**options):
        return lambda: run_single(
            definition, tmp / "case2" / str(next(counter)), n_trials=n_trials, n_seeds=n_seeds, **options
        )

    base = repeat(single(chunk_size=n_seeds, worker_parallelism=1), 3)
    row(
        "2 scaling",
        f"optimize_run single, {n_trials} trials, 1 chunk x 1 process",
        seeds,
        base,
        seeds / median(base),
        "1.00x",
        "baseline, end to end (study, files, worker start)",
    )
    walls = repeat(single(chunk_size=n_seeds, worker_parallelism=CORES), 3)
    speedup = median(base) / median(walls)
    row(
        "2 scaling",
        f"optimize_run single, 1 chunk x {CORES} processes",
        seeds,
        walls,
        seeds / median(walls),
        f"{speedup:.2f}x",
        f"{speedup / CORES:.3f} of linear (target >= 0.95)",
    )
    walls = repeat(single(chunk_size=-(-n_seeds // CORES), worker_parallelism=1), 3)
    speedup = median(base) / median(walls)
    row(
        "2 scaling",
        f"optimize_run single, {CORES} chunks x 1 process",
        seeds,
        walls,
        seeds / median(walls),
        f"{speedup:.2f}x",
        f"{speedup / CORES:.3f} of linear",
    )


# ---------------------------------------------------------------- case 3: plain Optuna with threads


def case_plain_optuna(tmp: Path, quick: bool) -> None:
    import optuna

    log("case 3: slurptuna single mode vs plain Optuna n_jobs=cores")
    n_trials, n_seeds = (4, 200) if quick else (8, 400)
    seeds = n_trials * n_seeds

    def plain() -> None:
        def objective(trial):
            x = trial.suggest_float("x", 0.0, 1.0)
            return sum(bench_kernels.work(x, seed) for seed in range(n_seeds)) / n_seeds

        study = optuna.create_study(sampler=optuna.samplers.TPESampler(seed=123))
        study.optimize(objective, n_trials=n_trials, n_jobs=CORES)

    counter = iter(range(10**6))
    walls_plain = repeat(plain, 3)
    walls_ours = repeat(
        lambda: run_single(
            bench_losses.bench_work,
            tmp / "case3" / str(next(counter)),
            n_trials=n_trials,
            n_seeds=n_seeds,
            chunk_size=n_seeds,
            worker_parallelism=CORES,
        ),
        3,
    )
    row(
        "3 vs plain Optuna",
        f"study.optimize(n_jobs={CORES}) threads, {n_trials} trials",
        seeds,
        walls_plain,
        seeds / median(walls_plain),
        "1.00x",
        "the naive alternative (GIL-bound)",
    )
    ratio = median(walls_ours) / median(walls_plain)
    row(
        "3 vs plain Optuna",
        f"slurptuna single, {n_trials} trials, worker_parallelism={CORES}",
        seeds,
        walls_ours,
        seeds / median(walls_ours),
        f"{median(walls_plain) / median(walls_ours):.2f}x",
        f"wall slurptuna / plain Optuna = {ratio:.2f}",
    )


# ---------------------------------------------------------------- case 4: real Slurm vs hand-written sbatch


def slurm_env() -> dict[str, str]:
    env = dict(ENV)
    if "SLURM_CONF" not in env and (REPO / "slurm" / "local-slurm").exists():
        shown = subprocess.run(
            [str(REPO / "slurm" / "local-slurm"), "env"], capture_output=True, text=True, check=False
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


def handwritten_run(
    root: Path, n_trials: int, n_chunks: int, chunk_size: int, poll: float, env: dict[str, str]
) -> float:
    """A hand-written controller: Optuna ask/tell, sbatch array + afterok reduce, squeue polling."""
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
        common = ["sbatch", "--parsable", "--mem-per-cpu=100M", "--time=0-00:10:00", "--cpus-per-task=1"]
        array = (
            subprocess.run(
                [
                    *common,
                    f"--array=0-{n_chunks - 1}",
                    f"--job-name=hand.t{number}.chunks",
                    f"--output={trial_dir}/chunk_%A_%a.out",
                    str(script),
                    *task,
                    "chunk",
                    str(trial_dir),
                    str(chunk_size),
                ],
                capture_output=True,
                text=True,
                env=env,
                check=True,
            )
            .stdout.strip()
            .split(";")[0]
        )
        reduce = (
            subprocess.run(
                [
                    *common,
                    f"--dependency=afterok:{array}",
                    "--kill-on-invalid-dep=yes",
                    f"--job-name=hand.t{number}.reduce",
                    f"--output={trial_dir}/reduce_%j.out",
                    str(script),
                    *task,
                    "reduce",
                    str(trial_dir),
                    str(n_chunks),
                ],
                capture_output=True,
                text=True,
                env=env,
                check=True,
            )
            .stdout.strip()
            .split(";")[0]
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


def case_real_slurm(tmp: Path, quick: bool) -> dict[str, float]:
    log("case 4: distributed mode on the real local Slurm vs hand-written sbatch")
    env = slurm_env()
    if not shutil.which("sbatch") or not slurm_answers():
        row("4 real Slurm", "distributed vs hand-written", "-", None, None, "-", "skipped: no Slurm")
        return {}
    n_trials, n_chunks, chunk_size, poll = (3, 4, 100, 0.5) if quick else (10, 8, 100, 0.5)
    seeds = n_trials * n_chunks * chunk_size
    saved = dict(os.environ)
    os.environ.update({k: v for k, v in env.items() if k.startswith("SLURM")})
    counter = iter(range(10**6))

    def ours() -> float:
        started = time.perf_counter()
        result = run_single(
            bench_losses.bench_work,
            tmp / "case4" / f"ours{next(counter)}",
            mode="distributed",
            n_trials=n_trials,
            n_seeds=n_chunks * chunk_size,
            chunk_size=chunk_size,
            worker_parallelism=1,
            cpus_per_task=1,
            mem_per_cpu="100M",
            slurm_qos=None,
            slurm_poll_seconds=poll,
            worker_time_limit=slurptuna_timedelta(600),
        )
        wall = time.perf_counter() - started
        if result.n_complete != n_trials:
            raise RuntimeError(f"distributed run {result.run_dir}: {result.n_complete}/{n_trials} complete")
        return wall

    walls_ours, walls_hand = [], []
    try:
        for index in range(3):  # interleaved, so that drifts in machine load hit both sides
            walls_hand.append(
                handwritten_run(tmp / "case4" / f"hand{index}", n_trials, n_chunks, chunk_size, poll, env)
            )
            walls_ours.append(ours())
    finally:
        os.environ.clear()
        os.environ.update(saved)
    per_hand = [w / n_trials for w in walls_hand]
    per_ours = [w / n_trials for w in walls_ours]
    ratio = median(walls_ours) / median(walls_hand)
    shape = f"{n_trials} trials x {n_chunks} tasks x {chunk_size} seeds, poll {poll} s"
    row(
        "4 real Slurm",
        f"hand-written sbatch array + afterok reduce ({shape})",
        seeds,
        walls_hand,
        seeds / median(walls_hand),
        "1.00x",
        f"{fmt_s(median(per_hand))} per trial",
    )
    row(
        "4 real Slurm",
        f"slurptuna distributed ({shape})",
        seeds,
        walls_ours,
        seeds / median(walls_ours),
        f"{median(walls_hand) / median(walls_ours):.2f}x",
        f"{fmt_s(median(per_ours))} per trial; slurptuna / hand-written = {ratio:.2f} (target <= 1.2)",
    )
    return {"per_trial_ours": median(per_ours), "per_trial_hand": median(per_hand)}


def slurptuna_timedelta(seconds: int):
    from datetime import timedelta

    return timedelta(seconds=seconds)


# ---------------------------------------------------------------- case 5: the controller at scale on fake_slurm


def controller_child(spec: dict) -> None:
    """Runs in a subprocess: one distributed optimize_run, measured from inside."""
    logging.basicConfig(level=logging.ERROR)
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    cycles = [0]
    writes = [0]
    original_next = slurptuna._Backoff.next
    original_write = slurptuna._write_json_atomic

    def counting_next(self, changed):
        cycles[0] += 1
        return original_next(self, changed)

    def counting_write(path, record):
        writes[0] += 1
        return original_write(path, record)

    slurptuna._Backoff.next = counting_next
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


def case_fake_scale(tmp: Path, quick: bool) -> dict[str, float]:
    log("case 5: controller at cluster scale on fake_slurm (fast launch)")
    n_trials, n_tasks, chunk_size, poll = (20, 50, 10, 1.0) if quick else (100, 100, 10, 1.0)
    results = []
    for index in range(3):
        state = tmp / "case5" / f"state{index}"
        state.mkdir(parents=True)
        env = {
            **ENV,
            "FAKE_SLURM_DIR": str(state),
            "FAKE_SLURM_FORK_PYTHON": "1",
            "PATH": os.pathsep.join([str(REPO / "fake_slurm"), os.path.dirname(sys.executable), os.environ["PATH"]]),
        }
        env = {k: v for k, v in env.items() if not k.startswith("SLURM_")}
        spec = {
            "n_trials": n_trials,
            "max_concurrent_trials": n_trials,
            "n_seeds": n_tasks * chunk_size,
            "chunk_size": chunk_size,
            "slurm_qos": None,
            "slurm_poll_seconds": poll,
            "run_root": str(tmp / "case5" / f"runs{index}"),
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
            raise RuntimeError(f"case 5: {measured['n_complete']}/{n_trials} trials complete in {measured['run_dir']}")
        calls = [json.loads(ln) for ln in (state / "calls.jsonl").read_text().splitlines()]
        measured["squeue"] = sum(c["cmd"] == "squeue" for c in calls)
        measured["other_calls"] = {cmd: sum(c["cmd"] == cmd for c in calls) for cmd in ("scancel", "sacct", "scontrol")}
        submissions = [json.loads(ln) for ln in (state / "submissions.jsonl").read_text().splitlines()]
        measured["sbatch"] = len(submissions)
        measured["sbatch_phase"] = submissions[-1]["time"] - submissions[0]["time"]
        run_dir = Path(measured["run_dir"])
        per_trial = [dir_stats(run_dir / "trials" / f"trial_{t:05d}") for t in range(n_trials)]
        logs = [dir_stats(run_dir / "slurm_logs" / f"trial_{t:05d}") for t in range(n_trials)]
        measured["files_per_trial"] = statistics.mean(a[0] + b[0] for a, b in zip(per_trial, logs, strict=True))
        measured["bytes_per_trial"] = statistics.mean(a[1] for a in per_trial)
        measured["log_bytes_per_trial"] = statistics.mean(b[1] for b in logs)
        measured["run_level_bytes"] = sum(p.stat().st_size for p in run_dir.iterdir() if p.is_file())
        results.append(measured)
        log(
            f"  run {index}: {measured['wall']:.1f} s wall, controller CPU {measured['cpu']:.2f} s, "
            f"{measured['squeue']} squeue / {measured['cycles']} cycles"
        )
        shutil.rmtree(tmp / "case5" / f"runs{index}", ignore_errors=True)

    def med(key: str) -> float:
        return median([r[key] for r in results])

    seeds = n_trials * n_tasks * chunk_size
    cpu_per_trial = med("cpu") / n_trials
    squeue_per_cycle = median([r["squeue"] / max(r["cycles"], 1) for r in results])
    compute = EARLIER_SHAPE[2] / (EARLIER_SHAPE[0] * EARLIER_SHAPE[1] * EARLIER_SEEDS_PER_S)
    efficiency = compute / (compute + cpu_per_trial)
    shape = f"{n_trials} concurrent trials x {n_tasks} array tasks x {chunk_size} seeds of 5 ms sleep, poll <= {poll} s"
    walls = [r["wall"] for r in results]
    row(
        "5 controller scale",
        f"fake_slurm fast launch ({shape})",
        seeds,
        walls,
        seeds / median(walls),
        "-",
        f"controller CPU {cpu_per_trial * 1000:.1f} ms/trial (own user+sys, children excluded); "
        f"fake Slurm commands {med('children_cpu') / n_trials * 1000:.0f} ms/trial",
    )
    row(
        "5 controller scale",
        "squeue per poll cycle",
        "-",
        None,
        None,
        "-",
        f"{squeue_per_cycle:.3f} (target 1; {med('squeue'):.0f} squeue calls in {med('cycles'):.0f} cycles); "
        f"{med('squeue') / n_trials:.2f} squeue per trial, "
        f"{med('squeue') / median(walls):.2f} per s; sbatch {med('sbatch') / n_trials:.2f} per trial, all "
        f"{med('sbatch'):.0f} in the first cycle, over {med('sbatch_phase'):.1f} s (fake sbatch is a Python "
        "process, slowed by the fake runners); "
        f"scancel/sacct/scontrol total {results[0]['other_calls']}",
    )
    row(
        "5 controller scale",
        "files per trial",
        "-",
        None,
        None,
        "-",
        f"{med('files_per_trial'):.0f} files ({n_tasks} chunk files + logs + params/jobs/summary); "
        f"{med('json_writes') / n_trials:.1f} atomic JSON writes by the controller per trial",
    )
    row(
        "5 controller scale",
        "efficiency at the earlier package's shape",
        "-",
        None,
        None,
        "-",
        f"100 tasks x 4 processes at {EARLIER_SEEDS_PER_S} seeds/s, 40e6 seeds: compute {compute:.1f} s/trial; "
        f"{compute:.1f} / ({compute:.1f} + {cpu_per_trial:.3f}) = {efficiency:.1%} (earlier: 84x on 400 "
        f"cores = 21%; target >= 90%)",
    )
    return {
        "controller_rss_kb": max(r["maxrss_kb"] for r in results),
        "bytes_per_trial": med("bytes_per_trial"),
        "log_bytes_per_trial": med("log_bytes_per_trial"),
        "run_level_bytes": med("run_level_bytes"),
        "n_trials": n_trials,
        "n_tasks": n_tasks,
    }


# ---------------------------------------------------------------- case 6: memory


def case_memory(overhead: dict[str, float], scale: dict[str, float]) -> None:
    log("case 6: memory")
    if scale:
        row(
            "6 memory",
            f"controller peak RSS ({scale['n_trials']:.0f} trials x {scale['n_tasks']:.0f} tasks)",
            "-",
            None,
            None,
            "-",
            f"{scale['controller_rss_kb'] / 1024:.0f} MiB (ru_maxrss)",
        )
    if overhead:
        row(
            "6 memory",
            f"one chunk task peak RSS ({overhead['task_seeds']:,} seeds, 1 process)",
            "-",
            None,
            None,
            "-",
            f"{overhead['task_rss_kb'] / 1024:.0f} MiB (ru_maxrss of `worker chunk`)",
        )
    if scale:
        row(
            "6 memory",
            "run directory per trial",
            "-",
            None,
            None,
            "-",
            f"{scale['bytes_per_trial']:,.0f} bytes of JSON in trials/trial_N ({scale['n_tasks']:.0f} chunks, "
            f"no per-seed lists) + {scale['log_bytes_per_trial']:,.0f} bytes of logs; run level "
            f"(optuna.db, meta, summary) {scale['run_level_bytes']:,.0f} bytes",
        )


# ---------------------------------------------------------------- profile


def profile(tmp: Path) -> None:
    n = 1_000_000
    run_dir = make_chunk_run(tmp / "profile", bench_losses.bench_noop, n)
    chunk_file(run_dir).unlink()
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


def write_results(quick: bool, started: float, machine: list[str]) -> Path:
    columns = ["Case", "Mode", "Seeds", "Wall time", "Seeds/s", "Speedup", "Ratio/notes"]
    lines = [
        "# slurptuna benchmark results",
        "",
        f"`python benchmark/run.py{' --quick' if quick else ''}`, "
        f"{(time.perf_counter() - started) / 60:.1f} minutes. Wall time: median of n runs. "
        "Nothing is asserted; targets from SPEC.md are shown beside the measurements.",
        "",
        *machine,
        "",
        "| " + " | ".join(columns) + " |",
        "|" + "|".join("---" for _ in columns) + "|",
        *("| " + " | ".join(r[c].replace("|", "\\|") for c in columns) + " |" for r in ROWS),
        "",
        f"Load average at the end: {' '.join(f'{x:.2f}' for x in os.getloadavg())}.",
        "",
        *EXTRA,
    ]
    path = BENCH / "RESULTS.md"
    path.write_text("\n".join(lines).rstrip() + "\n")
    return path


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="fewer seeds and trials (< 3 minutes)")
    parser.add_argument("--profile", action="store_true", help="only print a cProfile of one chunk task")
    parser.add_argument("--controller-child", metavar="JSON", help=argparse.SUPPRESS)
    parser.add_argument("--cases", default="1,2,3,4,5,6", help="comma-separated case numbers (default: all)")
    args = parser.parse_args()
    if args.controller_child:
        controller_child(json.loads(args.controller_child))
        return 0
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    logging.basicConfig(level=logging.ERROR)
    cases = {int(c) for c in args.cases.split(",") if c.strip()}
    with tempfile.TemporaryDirectory(prefix="slurptuna-bench-") as name:
        tmp = Path(name)
        if args.profile:
            profile(tmp)
            return 0
        started = time.perf_counter()
        machine = machine_description()
        print("\n".join(machine), flush=True)
        overhead = case_overhead(tmp, args.quick) if 1 in cases else {}
        if 2 in cases:
            case_scaling(tmp, args.quick)
        if 3 in cases:
            case_plain_optuna(tmp, args.quick)
        if 4 in cases:
            case_real_slurm(tmp, args.quick)
        scale = case_fake_scale(tmp, args.quick) if 5 in cases else {}
        if 6 in cases:
            case_memory(overhead, scale)
        path = write_results(args.quick, started, machine)
    log(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
