#!/usr/bin/env python
"""Seeds where they decide the ranking (issue 16): fixed seeds, pruning, a target standard error with racing.

    python benchmark/bench_seeds.py            # 20 sampler seeds x 30 trials x 2,000 seeds (about 2 minutes)
    python benchmark/bench_seeds.py --quick    # 4 sampler seeds x 15 trials (under 30 s)

The model, ``bench_noise_bowl`` on x, y in [0, 1], has a known true loss and seed noise whose
standard deviation varies tenfold across the space (``z`` standard normal, drawn from a fixed
table by a hash: a few microseconds a seed, deterministic from (seed, params)):

* ``true_f(x, y) = (x - 0.3)**2 + (y - 0.6)**2``: a smooth bowl, shallow at its bottom: a point
  0.05 from the optimum is 0.0025 worse, less than a trial's standard error at 2,000 seeds there (0.009);
* ``noise_sd(x, y) = 0.1 * 10**y``: 0.1 at y = 0 to 1.0 at y = 1 (0.4 at the optimum);
* a seed's loss is ``true_f + noise_sd * (0.6 * z(seed) + 0.8 * z(seed, x, y))``: part of the noise
  is shared by every trial on that seed, so chunk k of two trials is positively paired (their losses
  correlate by 0.36), the rest is the trial's own. A larger shared part would make pairing stronger,
  but every trial of a repeat would then miss its true f the same way, and the coverage pooled over
  20 repeats would swing by +-0.024 (one standard deviation) from that alone, too much to judge a
  +-0.03 target; at 0.6 it is +-0.013.

Each repeat r (a sampler seed, TPE seeded by ``random_seed=r``) evaluates its own seeds, from
``r * 1,000,000``, so that the repeats' shared noise is independent. Each configuration runs the
same number of trials, single mode, one trial at a time, one worker process, chunks of 100, the
run's own journal file as storage (``validate`` reads it):

* ``fixed``: every trial pays ``n_seeds``;
* ``wilcoxon``: ``WilcoxonPruner()``, told chunk means at step = chunk index;
* ``race``: ``target_standard_error`` (``race_target``: what a trial at the optimum reaches on a
  quarter of ``n_seeds``) with racing against the best, ``n_seeds`` its cap;
* ``race_wilcoxon``: the same with ``WilcoxonPruner()``.

A configuration whose option this build of slurptuna lacks is reported as "not available in this
build". Measured per configuration: the seeds evaluated (every chunk record: chunks that finished
after a prune or a stop count too) and those in the trials' final statistics; the regret of the
chosen params (true f of ``result.best_params`` minus the best true f among the params the run
evaluated, pruned trials included); how often they are that truly best one; how often
``slurptuna.validate`` (top 5, on 10,000 fresh seeds each) picks params at least as good (true f) as the run's
pick; and the share of complete trials whose reported 95% interval (mean +- 1.96 SE, the trial's
final statistics) holds its true f, pooled over repeats.

``case_seeds(tmp, quick)`` returns the rows for benchmark/run.py's table.
"""

from __future__ import annotations

import argparse
import inspect
import math
import random
import statistics
import sys
import tempfile
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

BENCH = Path(__file__).resolve().parent
sys.path[:0] = [str(BENCH.parent), str(BENCH)]

import slurptuna  # noqa: E402
from slurptuna import RunPaths, TrialParams, _read_valid_chunks, load_valid_summary, loss, optimize_run  # noqa: E402

OPTIMUM = (0.3, 0.6)
SD_LOW, SD_HIGH = 0.1, 1.0  # noise_sd at y = 0 and y = 1
SHARED = 0.6  # the part of the noise every trial shares on a seed: two trials' losses correlate by SHARED**2
SEED_STRIDE = 1_000_000  # repeat r evaluates seeds r * SEED_STRIDE ..
TARGET_SHARE = 0.25  # the target standard error: what a trial at the optimum reaches on this share of n_seeds
VALIDATE_TOP = 5
VALIDATE_SEEDS = 10_000  # validate's fresh seeds per candidate (the issue's `--seeds 10000`)

_TABLE_SIZE = 1 << 16
_M64 = (1 << 64) - 1


def _normal_table() -> list[float]:
    """65,536 standard normal values, standardised to mean 0 and variance 1 exactly."""
    rng = random.Random(16)
    draws = [rng.gauss(0.0, 1.0) for _ in range(_TABLE_SIZE)]
    mean, sd = statistics.fmean(draws), statistics.pstdev(draws)
    return [(v - mean) / sd for v in draws]


_NORMALS = _normal_table()


def _z(key: object) -> float:
    """A standard normal value, a deterministic function of ``key`` (an int, or a tuple of ints and floats).

    Python's hash of ints, floats and their tuples does not depend on PYTHONHASHSEED; one
    xor-shift-multiply round (splitmix64's last) spreads it, and its top 16 bits pick the value.
    """
    h = hash(key) & _M64
    h = ((h ^ (h >> 31)) * 0x94D049BB133111EB) & _M64
    return _NORMALS[h >> 48]


def true_f(x: float, y: float) -> float:
    return (x - OPTIMUM[0]) ** 2 + (y - OPTIMUM[1]) ** 2


def noise_sd(x: float, y: float) -> float:
    return SD_LOW * (SD_HIGH / SD_LOW) ** y


@loss(name="bench_noise_bowl", parameter_space={"x": (0.0, 1.0), "y": (0.0, 1.0)})
def bench_noise_bowl(params, seed):
    """true_f + noise of sd 0.1 .. 1.0 (0.6 shared by all trials on this seed, 0.8 their own)."""
    x, y = params["x"], params["y"]
    return true_f(x, y) + noise_sd(x, y) * (SHARED * _z(seed) + math.sqrt(1 - SHARED**2) * _z((seed, x, y)))


# ---------------------------------------------------------------- the configurations


@dataclass(frozen=True)
class Shape:
    """The size of one run, the same for every configuration."""

    n_trials: int
    n_seeds: int
    repeats: int
    chunk_size: int = 100

    def seeds(self, repeat: int) -> range:
        """Repeat ``repeat``'s seeds: its own, so that the repeats' shared noise is independent."""
        return range(repeat * SEED_STRIDE, repeat * SEED_STRIDE + self.n_seeds)


def race_target(shape: Shape) -> float:
    """The target standard error: what a trial at the optimum reaches alone on ``TARGET_SHARE`` of ``n_seeds``.

    Trials nearer the optimum than ``sqrt(target)`` differ by less than it (true_f grows as the
    squared distance): their order is left to the paired race on shared chunks, which is what it is for.
    """
    return noise_sd(*OPTIMUM) / math.sqrt(TARGET_SHARE * shape.n_seeds)


def _wilcoxon():
    import optuna

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        return optuna.pruners.WilcoxonPruner()


@dataclass(frozen=True)
class Config:
    """One way to spend seeds: its options to ``optimize_run`` (beyond the shape's)."""

    name: str
    label: str
    pruner: bool = False
    race: bool = False

    def options(self, shape: Shape) -> dict[str, object]:
        options: dict[str, object] = {"pruner": _wilcoxon() if self.pruner else None}
        if self.race:
            options["target_standard_error"] = race_target(shape)
        return options

    @property
    def missing(self) -> str | None:
        """What this build of slurptuna lacks for this configuration, or None."""
        if self.race and "target_standard_error" not in inspect.signature(optimize_run).parameters:
            return "optimize_run(target_standard_error=...)"
        return None


CONFIGS = [
    Config("fixed", "fixed n_seeds"),
    Config("wilcoxon", "WilcoxonPruner()", pruner=True),
    Config("race", "target_standard_error + racing", race=True),
    Config("race_wilcoxon", "target_standard_error + racing + WilcoxonPruner()", pruner=True, race=True),
]


def _validate_available() -> bool:
    return callable(getattr(slurptuna, "validate", None))


# ---------------------------------------------------------------- one run, and what it decided


@dataclass
class RunFigures:
    """What one run of one configuration measured."""

    wall: float
    seeds_evaluated: int  # in chunk records: chunks that finished after a prune or a stop count too
    seeds_used: int  # in the trials' final statistics (a pruned trial's at its prune)
    regret: float  # true f of the chosen params - the best true f among the params the run evaluated
    truly_best: bool
    chosen_se: float  # the chosen trial's final standard error
    chosen_seeds: int  # ... and its seeds (races add to them)
    paired_se: float  # the model's SE of the paired difference of the chosen and the truly best on n_seeds
    best_set: int | None  # trials in result.best_set (those a paired test cannot tell from the best); None: no best set
    intervals: list[tuple[float, float, float, int]]  # per complete trial: mean, SE, true f, seeds
    validate_gap: float | None  # true f of validate's pick - true f of the run's pick; None: no validate
    validate_se: float | None  # the model's SE of the paired difference of those two on the validation's seeds


def _f(params: dict) -> float:
    return true_f(params["x"], params["y"])


def _trial_numbers(run_dir: Path) -> list[int]:
    return sorted(int(p.name.split("_")[1]) for p in run_dir.glob("trials/*/trial_*"))


def _seeds_evaluated(run_dir: Path) -> int:
    """Seeds in the run's chunk records: every chunk that finished, pruned or stopped trials' late ones included."""
    run = RunPaths(run_dir)
    trials = [run.trial(number) for number in _trial_numbers(run_dir)]
    return sum(c.stats.loss.count for t in trials for c in _read_valid_chunks(t, TrialParams.load(t)).values())


def _final_statistics(run_dir: Path, result) -> dict[int, tuple[float, float, int]]:
    """Each complete trial's final mean, SE and seeds: its summary.json, or the run's best set where it has newer."""
    run = RunPaths(run_dir)
    final = {}
    for number in _trial_numbers(run_dir):
        trial = run.trial(number)
        summary = load_valid_summary(trial, TrialParams.load(trial))
        if summary is not None:
            final[number] = (summary.mean, summary.standard_error, summary.n_seeds)
    for record in getattr(result, "best_set", None) or []:
        entry = record if isinstance(record, dict) else vars(record)
        number = entry.get("number", entry.get("trial_number"))
        if entry["n_seeds"] >= final.get(number, (0, 0, 0))[2]:
            final[number] = (entry["mean"], entry["standard_error"], entry["n_seeds"])
    return final


def _paired_se(a: dict, b: dict, n_seeds: int) -> float:
    """The standard error of the difference of two trials' means on the same ``n_seeds`` seeds (the model's)."""
    sa, sb = noise_sd(a["x"], a["y"]), noise_sd(b["x"], b["y"])
    return math.sqrt((SHARED * (sa - sb)) ** 2 + (1 - SHARED**2) * (sa**2 + sb**2)) / math.sqrt(n_seeds)


def _one_run(root: Path, config: Config, shape: Shape, repeat: int) -> RunFigures:
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    started = time.perf_counter()
    with warnings.catch_warnings():
        # a best trial stopped at the target has fewer steps than one running on: Wilcoxon compares those it has
        warnings.filterwarnings("ignore", message="WilcoxonPruner finds steps existing in the current trial")
        result = optimize_run(
            bench_noise_bowl,
            n_trials=shape.n_trials,
            seeds=shape.seeds(repeat),
            chunk_size=shape.chunk_size,
            random_seed=repeat,
            worker_parallelism=1,
            run_root=str(root / f"{config.name}_{repeat}"),
            progress=False,
            **config.options(shape),
        )
    wall = time.perf_counter() - started
    run_dir = Path(result.run_dir)
    states = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)
    evaluated = [t for t in result.study.get_trials(deepcopy=False) if t.state in states]
    truly_best = min(evaluated, key=lambda t: _f(t.params))
    chosen = next(t for t in evaluated if t.params == result.best_params)
    final = _final_statistics(run_dir, result)
    complete = {t.number: t for t in evaluated if t.state == optuna.trial.TrialState.COMPLETE}
    used = sum(final[n][2] if n in final else t.user_attrs.get("n_seeds", 0) for n, t in complete.items())
    used += sum(t.user_attrs.get("n_seeds", 0) for t in evaluated if t.number not in complete)
    picked = _validated(run_dir) if _validate_available() else None
    return RunFigures(
        wall=wall,
        seeds_evaluated=_seeds_evaluated(run_dir),
        seeds_used=used,
        regret=_f(chosen.params) - _f(truly_best.params),
        truly_best=_f(chosen.params) == _f(truly_best.params),
        chosen_se=final[chosen.number][1],
        chosen_seeds=final[chosen.number][2],
        paired_se=_paired_se(chosen.params, truly_best.params, shape.n_seeds),
        best_set=len(result.best_set) if hasattr(result, "best_set") else None,
        intervals=[(*final[n][:2], _f(t.params), final[n][2]) for n, t in complete.items() if n in final],
        validate_gap=None if picked is None else _f(picked) - _f(chosen.params),
        validate_se=None if picked is None else _paired_se(picked, chosen.params, VALIDATE_SEEDS),
    )


def _validated(run_dir: Path) -> dict:
    """The params ``validate`` picks: the top ``VALIDATE_TOP`` by mean evaluated again on fresh seeds."""
    validation = slurptuna.validate(run_dir, top=VALIDATE_TOP, n_seeds=VALIDATE_SEEDS, progress=False)
    return next(c.params for c in validation.candidates if c.trial == validation.pick)


# ---------------------------------------------------------------- the rows


def _target(text: str, met: bool, reason: str) -> str:
    """As run.py's target cells: the target, then met or "(not met)" with the measured reason."""
    return f"{text}: met" if met else f"{text} **(not met)**: {reason}"


def _coverage(outcomes: list[RunFigures]) -> tuple[float, int]:
    """The share of complete trials (pooled over repeats) whose mean +- 1.96 SE holds the true f."""
    intervals = [i for o in outcomes for i in o.intervals]
    covered = sum(abs(mean - f) <= 1.96 * se for mean, se, f, _ in intervals)
    return covered / max(len(intervals), 1), len(intervals)


def _coverage_reason(outcomes: list[RunFigures]) -> str:
    """Where the intervals miss: the spread over repeats, and the trials on fewer seeds than the median vs more."""
    per_repeat = [_coverage([o])[0] for o in outcomes if o.intervals]
    reason = f"{min(per_repeat):.2f} to {max(per_repeat):.2f} per repeat" if per_repeat else "no complete trial"
    intervals = sorted((i for o in outcomes for i in o.intervals), key=lambda i: i[3])
    half = len(intervals) // 2
    if half and intervals[0][3] != intervals[-1][3]:
        shares = [
            sum(abs(m - f) <= 1.96 * se for m, se, f, _ in p) / len(p) for p in (intervals[:half], intervals[half:])
        ]
        reason += (
            f"; {shares[0]:.3f} on the half of the trials on the fewest seeds (<= {intervals[half - 1][3]:,}), "
            f"{shares[1]:.3f} on the other half"
        )
    return reason


def _config_row(config: Config, runs: list[RunFigures], fixed: list[RunFigures], shape: Shape) -> dict[str, str]:
    repeats = len(runs)
    seeds = statistics.fmean(o.seeds_evaluated for o in runs)
    used = statistics.fmean(o.seeds_used for o in runs)
    wall = statistics.median(o.wall for o in runs)
    base_seeds = statistics.fmean(o.seeds_evaluated for o in fixed)
    regret = statistics.fmean(o.regret for o in runs)
    base_regret = statistics.fmean(o.regret for o in fixed)
    best = sum(o.truly_best for o in runs)
    base_best = sum(o.truly_best for o in fixed)
    coverage, n_intervals = _coverage(runs)
    seeds_ratio = seeds / base_seeds
    regret_ratio = regret / base_regret if base_regret > 0 else math.inf if regret > 0 else 1.0
    measured = [
        f"seeds evaluated {seeds_ratio:.2f} of fixed's (in the trials' final statistics: {used / base_seeds:.2f})",
        f"regret {regret:.2e}"
        + ("" if config.name == "fixed" else f" ({regret_ratio:.2f} of fixed's {base_regret:.2e})"),
        f"the truly best of those evaluated chosen in {best}/{repeats}"
        + ("" if config.name == "fixed" else f" (fixed: {base_best}/{repeats})"),
    ]
    sizes = [o.best_set for o in runs if o.best_set is not None]
    if sizes:
        measured.append(f"best set: median {statistics.median(sizes):g} trials (max {max(sizes)})")
    targets = []
    if config.race:
        target_se = race_target(shape)
        measured.insert(
            0,
            f"target SE {target_se:.4f} (= noise_sd at the optimum / sqrt({TARGET_SHARE:g} n_seeds): trials within "
            f"{math.sqrt(target_se):.2f} of the optimum differ by less; racing orders them), n_seeds the cap",
        )
        measured.append(f"the chosen trial's seeds: median {statistics.median(o.chosen_seeds for o in runs):,.0f}")
        capped = sum(i[3] >= shape.n_seeds for o in runs for i in o.intervals)
        targets.append(
            _target(
                "seeds <= 0.5 of fixed's",
                seeds_ratio <= 0.5,
                f"{seeds_ratio:.2f}; {capped} of {n_intervals} complete trials ran to the cap",
            )
        )
        misses = [o for o in runs if not o.truly_best]
        gaps = (
            f"where it missed, the median true-f gap {statistics.median(o.regret for o in misses):.1e} is "
            f"{statistics.median(o.regret / o.paired_se for o in misses):.2f} x the SE of the two trials' paired "
            f"difference on n_seeds (the model's), and the chosen trial's own SE is "
            f"{statistics.median(o.chosen_se for o in misses):.1e}"
            if misses
            else ""
        )
        targets.append(_target("regret <= 0.5 of fixed's", regret_ratio <= 0.5, f"{regret_ratio:.2f}; {gaps}"))
        targets.append(
            _target(
                "truly best chosen more often than fixed n_seeds",
                best > base_best,
                f"{best} vs {base_best} of {repeats}",
            )
        )
    validated = [o for o in runs if o.validate_gap is not None]
    if validated:
        as_good = sum(o.validate_gap <= 0 for o in validated)
        measured.append(
            f"validate(top={VALIDATE_TOP}, {VALIDATE_SEEDS:,} fresh seeds)'s pick at least as good "
            f"as the run's (the best by mean) in {as_good}/{len(validated)}"
        )
        worse = [o for o in validated if o.validate_gap > 0]
        why = (
            f"where worse, the median true-f gap {statistics.median(o.validate_gap for o in worse):.1e} is "
            f"{statistics.median(o.validate_gap / o.validate_se for o in worse):.2f} x the SE of the two's paired "
            "difference on the validation's seeds (the model's)"
            if worse
            else ""
        )
        targets.append(
            _target(
                "validate's pick as good >= 0.9", as_good >= 0.9 * len(validated), f"{as_good}/{len(validated)}; {why}"
            )
        )
    else:
        measured.append("validate: not available in this build")
    measured.append(f"95% intervals hold the true f in {coverage:.3f} of {n_intervals} complete trials")
    targets.append(
        _target("coverage 0.95 +- 0.03", abs(coverage - 0.95) <= 0.03, f"{coverage:.3f}: {_coverage_reason(runs)}")
    )
    mode = config.label
    if config.name == "fixed":
        mode += (
            f" ({shape.n_trials} trials x {shape.n_seeds:,} seeds, chunks of {shape.chunk_size}, TPE, "
            f"{repeats} sampler seeds, 1 process)"
        )
    return {
        "Case": "15 seeds",
        "Mode": f"bench_noise_bowl, {mode}",
        "Seeds": f"{seeds:,.0f} per run",
        "Wall time": f"{wall:.2f} s per run (median, n={repeats})",
        "Seeds/s": f"{seeds / wall:,.0f}",
        "Measured": "; ".join(measured),
        "Target": "; ".join(targets),
    }


def _missing_row(config: Config) -> dict[str, str]:
    return {
        "Case": "15 seeds",
        "Mode": f"bench_noise_bowl, {config.label}",
        "Seeds": "-",
        "Wall time": "-",
        "Seeds/s": "-",
        "Measured": f"not available in this build (no {config.missing})",
        "Target": "-",
    }


def case_seeds(tmp: Path, quick: bool) -> list[dict[str, str]]:
    """Rows (run.py's columns): one per configuration, each beside fixed n_seeds."""
    shape = Shape(15, 2000, 4) if quick else Shape(30, 2000, 20)
    available = [c for c in CONFIGS if c.missing is None]
    runs: dict[str, list[RunFigures]] = {c.name: [] for c in available}
    for repeat in range(shape.repeats):  # interleaved, so load on the machine hits every configuration alike
        for config in available:
            runs[config.name].append(_one_run(tmp, config, shape, repeat))
    return [
        _config_row(c, runs[c.name], runs["fixed"], shape) if c.missing is None else _missing_row(c) for c in CONFIGS
    ]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer trials and sampler seeds")
    args = parser.parse_args()
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="slurptuna_bench_seeds_") as tmp:
        rows = case_seeds(Path(tmp), args.quick)
    print("| " + " | ".join(rows[0]) + " |")
    print("|" + "---|" * len(rows[0]))
    for row in rows:
        print("| " + " | ".join(row.values()) + " |")
    print(f"({time.perf_counter() - started:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
