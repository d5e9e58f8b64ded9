#!/usr/bin/env python
"""Seeds as a budget: how many seeds pruning saves on a noisy problem, and what it costs in quality.

    python benchmark/bench_pruning.py            # 40 trials x 2,000 seeds, 5 sampler seeds (about 1.5 minutes)
    python benchmark/bench_pruning.py --quick    # 20 trials x 2,000 seeds, 2 sampler seeds (under 1 minute)

Two noisy problems with a known true loss ``f(x) = (x - 0.3)**2`` on [-1, 1] (spread 1.69) and
noise of standard deviation 5 (three times that spread), ``z`` standard normal:

* ``bench_noisy_bowl``: ``f(x) + 5 * (0.8 * z(seed) + 0.6 * z(seed, x))``: most of the noise is
  shared by every trial on a seed, as a stochastic model's randomness is, part is the trial's own;
* ``bench_seed_noise_bowl``: ``f(x) + 5 * z(seed)``, the issue's ``f(x) + noise(seed)``: all shared.

Each seed also spins ~0.1 ms, so chunks (~9 ms) arrive one by one. Every run is single mode, TPE
seeded by the sampler seed, chunks of 100 seeds started in index order, one trial at a time, one
worker process (the controller has the other core, as it has a login node on a cluster) and
Optuna's in-memory storage: a report to the default SQLite file takes ~10 ms here, longer than
such a chunk, and the trial would run on for a chunk or two before the pruner hears of it (with
real chunks of seconds that delay does not count). This measures what pruning decides, not how
fast SQLite is. The first problem runs without a pruner, with ``WilcoxonPruner()`` and with
``MedianPruner()`` (Optuna's defaults); the second with ``WilcoxonPruner()`` only. Measured: the
seeds evaluated (in chunk files: chunks that finished after a prune count too), the wall time, and
the true ``f`` of the best params each run chose. Nothing is asserted; the goal (seeds with
Wilcoxon / seeds without <= 0.4) is shown beside the measurement.

``case_pruning(tmp, quick)`` returns the rows for benchmark/run.py's table.
"""

from __future__ import annotations

import argparse
import math
import random
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path

BENCH = Path(__file__).resolve().parent
sys.path[:0] = [str(BENCH.parent), str(BENCH)]

from slurptuna import RunPaths, TrialParams, _read_valid_chunks, loss, optimize_run  # noqa: E402

NOISE_SD = 5.0
SHARED = 0.8  # the part of the noise that every trial shares on a seed (correlation of two trials' losses)
SPIN = 700  # LCG steps per seed: about 0.1 ms
IN_MEMORY = True  # Optuna's in-memory storage (see above); False: the run's optuna.db


def true_f(x: float) -> float:
    return (x - 0.3) ** 2


def _z(key: int) -> float:
    return random.Random(key).gauss(0.0, 1.0)


def _spin(seed: int) -> None:
    state = seed
    for _ in range(SPIN):
        state = (state * 1103515245 + 12345) & 0x7FFFFFFF


@loss(name="bench_noisy_bowl", parameter_space={"x": (-1.0, 1.0)})
def bench_noisy_bowl(params, seed):
    """f(x) + noise of sd 5 (0.8 shared by all trials on this seed, 0.6 their own); ~0.1 ms a seed."""
    _spin(seed)
    own = _z(seed * 1_000_003 + int(params["x"] * 1e9))
    return true_f(params["x"]) + NOISE_SD * (SHARED * _z(seed) + math.sqrt(1 - SHARED**2) * own)


@loss(name="bench_seed_noise_bowl", parameter_space={"x": (-1.0, 1.0)})
def bench_seed_noise_bowl(params, seed):
    """f(x) + noise(seed) of sd 5, the same for every trial; ~0.1 ms a seed."""
    _spin(seed)
    return true_f(params["x"]) + NOISE_SD * _z(seed)


def _pruner(name: str):
    import optuna

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        return {"none": None, "wilcoxon": optuna.pruners.WilcoxonPruner(), "median": optuna.pruners.MedianPruner()}[
            name
        ]


def _seeds_evaluated(run_dir: Path) -> int:
    """Seeds in the run's chunk records: every chunk that finished, pruned trials' late ones included."""
    run = RunPaths(run_dir)
    trials = [run.trial(int(p.name.split("_")[1])) for p in run_dir.glob("trials/*/trial_*")]
    return sum(c.stats.loss.count for t in trials for c in _read_valid_chunks(t, TrialParams.load(t)).values())


def _one_run(root: Path, case: str, sampler_seed: int, n_trials: int, n_seeds: int) -> dict[str, float]:
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    loss, pruner = CASES[case]
    started = time.perf_counter()
    result = optimize_run(
        loss,
        n_trials=n_trials,
        n_seeds=n_seeds,
        chunk_size=100,
        random_seed=sampler_seed,
        pruner=_pruner(pruner),
        storage=optuna.storages.InMemoryStorage() if IN_MEMORY else None,
        run_root=str(root / f"{case}_{sampler_seed}"),
        progress=False,
    )
    wall = time.perf_counter() - started
    return {
        "wall": wall,
        "seeds": _seeds_evaluated(Path(result.run_dir)),
        "f_best": true_f(result.best_params["x"]),
        "pruned": result.n_pruned,
    }


CASES = {
    "none": (bench_noisy_bowl, "none"),
    "wilcoxon": (bench_noisy_bowl, "wilcoxon"),
    "median": (bench_noisy_bowl, "median"),
    "wilcoxon_seed_noise": (bench_seed_noise_bowl, "wilcoxon"),
}


def _spread(values: list[float]) -> str:
    sd = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.mean(values):.3f} ± {sd:.3f} (min {min(values):.3f}, max {max(values):.3f})"


def case_pruning(tmp: Path, quick: bool) -> list[dict[str, str]]:
    """Rows (run.py's columns: Case, Mode, Seeds, Wall time, Seeds/s, Measured, Target): none, Wilcoxon, Median."""
    n_trials, n_seeds, sampler_seeds = (20, 2000, [1, 2]) if quick else (40, 2000, [1, 2, 3, 4, 5])
    runs: dict[str, list[dict[str, float]]] = {case: [] for case in CASES}
    for sampler_seed in sampler_seeds:  # interleaved, so load on the machine hits every case alike
        for case in runs:
            runs[case].append(_one_run(tmp, case, sampler_seed, n_trials, n_seeds))
    base_seeds = n_trials * n_seeds
    base_wall = statistics.mean(r["wall"] for r in runs["none"])
    shape = f"{n_trials} trials x {n_seeds:,} seeds, chunks of 100, TPE, {len(sampler_seeds)} sampler seeds"
    labels = {
        "none": f"bench_noisy_bowl, no pruner ({shape})",
        "wilcoxon": "bench_noisy_bowl, WilcoxonPruner() (chunk means at step = chunk index)",
        "median": "bench_noisy_bowl, MedianPruner() (running means at step = seeds done)",
        "wilcoxon_seed_noise": "bench_seed_noise_bowl: f(x) + noise(seed), WilcoxonPruner()",
    }
    rows = []
    for case, results in runs.items():
        seeds = statistics.mean(r["seeds"] for r in results)
        wall = statistics.mean(r["wall"] for r in results)
        f_best = _spread([r["f_best"] for r in results])
        target = "-"
        if case == "none":
            notes = f"true f of the best params: {f_best}"
        else:
            pruned = statistics.mean(r["pruned"] for r in results)
            notes = (
                f"{base_wall / wall:.2f}x faster; seeds / seeds without pruning = {seeds / base_seeds:.2f}; "
                f"{pruned:.1f} of {n_trials} trials pruned; true f of the best params: {f_best}"
            )
            if case.startswith("wilcoxon"):
                met = seeds / base_seeds <= 0.4
                target = "seeds ratio <= 0.4, true f of the best not worse" + (
                    "" if met else " **(not met)**: near the optimum the paired test needs 10-17 chunks to decide"
                )
        rows.append(
            {
                "Case": "11 pruning",
                "Mode": labels[case],
                "Seeds": f"{seeds:,.0f} per run",
                "Wall time": f"{wall:.2f} s per run (n={len(results)})",
                "Seeds/s": f"{seeds / wall:,.0f}",
                "Measured": notes,
                "Target": target,
            }
        )
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer trials, seeds and sampler seeds")
    args = parser.parse_args()
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="slurptuna_bench_pruning_") as tmp:
        rows = case_pruning(Path(tmp), args.quick)
    print("| " + " | ".join(rows[0]) + " |")
    print("|" + "---|" * len(rows[0]))
    for row in rows:
        print("| " + " | ".join(row.values()) + " |")
    print(f"({time.perf_counter() - started:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
