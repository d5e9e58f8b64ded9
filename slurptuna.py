"""slurptuna: tune a stochastic model's parameters with Optuna, one trial = the mean
of a loss over many random seeds, evaluated locally or on a Slurm cluster.

The contract, in the order a run happens:

* ``@loss`` registers ``fn(params, seed)`` (or ``fn(params, seed, context)``) with
  its parameter space. ``optimize_run`` asks Optuna for parameters, evaluates the
  loss on every seed and tells Optuna the mean.
* The seeds of a trial are cut into chunks of ``chunk_size``. Each chunk is one
  task: ``python -m slurptuna worker chunk RUN_DIR TRIAL`` evaluates its seeds in
  ``worker_parallelism`` processes and writes one small JSON file of statistics
  (count, mean, M2, min, max, component means). ``worker reduce`` merges the chunk
  files exactly (Chan's pooled variance) into the trial's ``summary.json``.
* ``single`` mode runs those tasks as local processes, never more at once than
  the machine has cores; ``distributed`` mode submits them to Slurm as one array
  job per trial plus a reduce job that depends on it, and polls ``squeue``.
* Everything is a file under ``runs/<loss>_v0001/``, written atomically; the
  Optuna study lives in ``optuna.journal`` beside them. Re-running with ``run_name``
  of an existing run resumes it: finished trials stay, interrupted ones are
  finished with their old parameters, reusing every chunk already computed and
  adopting Slurm jobs that are still queued.

Workers never import optuna: only the controller does, lazily.
This file is the whole tool (stdlib + optuna); copy it into a project to use it.
"""

from __future__ import annotations

import collections
import contextlib
import copy
import errno
import functools
import importlib
import importlib.util
import inspect
import itertools
import json
import math
import numbers
import os
import re
import signal
import sys
import threading
import time
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, make_dataclass, replace
from datetime import datetime, timedelta, timezone
from enum import Enum
from functools import cached_property, partial
from pathlib import Path
from typing import IO, TYPE_CHECKING, Annotated, Any, NoReturn, Protocol

if TYPE_CHECKING:  # types only: workers never import optuna (see below)
    import subprocess
    from typing import Self

    import optuna

# Imported where used, not here: a worker starts in well under 0.1 s, and never loads
# optuna, multiprocessing, subprocess, concurrent.futures, logging or traceback unless it
# needs them.

__version__ = "0.1.0"
__all__ = [
    "BestSetTrial",
    "ConfigError",
    "ExecutionMode",
    "LossDefinition",
    "LossError",
    "MultiOptimizeResult",
    "OptimizeResult",
    "RunDirError",
    "SearchParam",
    "SlurmError",
    "SlurptunaError",
    "ValidationCandidate",
    "ValidationResult",
    "execution_mode",
    "loss",
    "optimize_entries",
    "optimize_run",
    "search_param",
    "validate",
]


class _Logger:
    """The ``slurptuna`` logger, made on first use: a worker that logs nothing never imports logging."""

    def __getattr__(self, name: str) -> Any:
        import logging

        return getattr(logging.getLogger("slurptuna"), name)


logger = _Logger()

ParamValue = float | int | str | bool | None


# ============================================================================
# Public API: losses, parameter spaces, modes, results
# ============================================================================


class SlurptunaError(Exception):
    """Base class of every error slurptuna raises on purpose."""


class ConfigError(SlurptunaError, ValueError):
    """Bad arguments or a resume that does not match the run: raised before any work."""


class LossError(SlurptunaError):
    """The loss could not be imported, raised, or returned something that is not a finite number."""


class SlurmError(SlurptunaError):
    """A Slurm command failed; the message carries the command, exit code and its output."""


class RunDirError(SlurptunaError, SystemExit):
    """The run's files could not be written (disk full, over quota, read-only): the run stopped.

    Its jobs are cancelled as on Ctrl-C, the chunks written are kept and no trial failed for
    it; the one-line message names the file, the cause and the ``run_name`` that resumes.
    Also a ``SystemExit``: a script that does not catch it ends with that line and exit
    status 1, not a traceback; ``except SlurptunaError`` catches it like any other.
    """

    def __init__(self, message: str, path: str = "", errno_name: str = "", run_name: str | None = None) -> None:
        super().__init__(message)
        self.code = message  # what Python prints, uncaught (SystemExit's own __init__ is not the one run)
        self.path, self.errno_name, self.run_name = path, errno_name, run_name


class ExecutionMode(Enum):
    """Where the seeds of a trial run: local processes or a Slurm cluster."""

    SINGLE = "single"
    DISTRIBUTED = "distributed"


def execution_mode(mode: str | ExecutionMode) -> ExecutionMode:
    """Turn ``"single"`` or ``"distributed"`` into an ``ExecutionMode``."""
    if isinstance(mode, ExecutionMode):
        return mode
    with contextlib.suppress(ValueError):
        return ExecutionMode(str(mode).strip().lower())
    raise ConfigError(f"unknown mode {mode!r}: mode must be one of: single, distributed")


@dataclass(frozen=True)
class SearchParam:
    """One parameter's search space: a numeric ``range`` or a list of ``allowed`` values."""

    range: tuple[float, float] | None = None
    allowed: tuple[ParamValue, ...] | None = None
    dtype: str | None = None
    log: bool = False
    step: float | None = None


def search_param(
    *,
    range: tuple[float, float] | None = None,
    allowed: Sequence[ParamValue] | None = None,
    dtype: str | None = None,
    log: bool = False,
    step: float | None = None,
) -> SearchParam:
    """Describe a parameter: ``range=(low, high)`` (``dtype="int"``, ``log``, ``step``) or ``allowed=[...]``.

    It is checked by ``@loss``, where the error can name the parameter.
    """
    return SearchParam(
        range=range, allowed=None if allowed is None else tuple(allowed), dtype=dtype, log=log, step=step
    )


def _validate_search_param(name: str, spec: SearchParam) -> SearchParam:
    if (spec.range is None) == (spec.allowed is None):
        raise ConfigError(f"parameter {name!r}: give exactly one of range=(low, high) or allowed=[...]")
    if spec.allowed is not None:
        if not spec.allowed:
            raise ConfigError(f"parameter {name!r}: allowed must list at least one value")
        bad = [v for v in spec.allowed if not isinstance(v, (str, int, float, bool, type(None)))]
        if bad:
            raise ConfigError(f"parameter {name!r}: allowed values must be str, int, float, bool or None, got {bad!r}")
        return spec
    try:
        low, high = spec.range  # type: ignore[misc]
        low, high = float(low), float(high)
    except (TypeError, ValueError):
        raise ConfigError(
            f"parameter {name!r}: range must be a (low, high) pair of numbers, got {spec.range!r}"
        ) from None
    dtype = spec.dtype or "float"
    if dtype not in ("float", "int"):
        raise ConfigError(f"parameter {name!r}: dtype must be 'float' or 'int' for a range, got {dtype!r}")
    if not (math.isfinite(low) and math.isfinite(high)) or low > high:
        raise ConfigError(f"parameter {name!r}: range needs finite low <= high, got ({low}, {high})")
    if dtype == "int" and not (low.is_integer() and high.is_integer()):
        raise ConfigError(f"parameter {name!r}: an int range needs whole-number bounds, got ({low}, {high})")
    if spec.log and low <= 0:
        raise ConfigError(f"parameter {name!r}: log=True needs low > 0, got {low}")
    if spec.step is not None and (spec.step <= 0 or spec.log):
        raise ConfigError(f"parameter {name!r}: step must be > 0 and cannot be combined with log=True")
    if dtype == "int":
        return replace(spec, range=(int(low), int(high)), dtype="int")
    return replace(spec, range=(low, high), dtype="float")


def _normalize_parameter_space(space: Mapping[str, Any]) -> dict[str, Any]:
    """Accept ``(low, high)`` tuples, ``search_param(...)`` and Optuna distributions."""
    if not isinstance(space, Mapping) or not space:
        raise ConfigError("parameter_space must be a non-empty dict, e.g. {'alpha': (0.0, 1.0)}")
    normalized: dict[str, Any] = {}
    for name, spec in space.items():
        if isinstance(spec, SearchParam):
            normalized[name] = _validate_search_param(name, spec)
        elif isinstance(spec, (tuple, list)) and len(spec) == 2:
            normalized[name] = _validate_search_param(name, SearchParam(range=tuple(spec), dtype="float"))
        elif type(spec).__module__.startswith("optuna."):
            normalized[name] = spec  # an Optuna distribution, used as it is
        else:
            raise ConfigError(
                f"parameter {name!r}: expected a (low, high) tuple, search_param(...) or an Optuna "
                f"distribution, got {spec!r}"
            )
    return normalized


@dataclass(frozen=True)
class LossDefinition:
    """A registered loss: still callable like the function it wraps."""

    name: str
    description: str
    parameter_space: dict[str, Any]
    seed_loss_fn: Callable[..., Any]
    seed_start: int = 0
    default_chunk_size: int = 100
    default_num_chunks: int = 10
    source_file: str | None = field(default=None, compare=False)
    takes_context: bool = False
    context_by_keyword: bool = False  # the earlier package's fn(params, seed, *, context)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self.seed_loss_fn(*args, **kwargs)


_LOSSES: dict[str, LossDefinition] = {}


def loss(
    fn: Callable[..., Any] | None = None,
    *,
    name: str | None = None,
    description: str | None = None,
    parameter_space: Mapping[str, Any] | None = None,
    seed_start: int = 0,
    default_chunk_size: int = 100,
    default_num_chunks: int = 10,
) -> Any:
    """Register ``fn(params, seed)`` or ``fn(params, seed, context)`` as a loss.

    Workers find the loss again by ``name`` after importing its module, so it must be
    registered at module level (not under ``if __name__ == "__main__":``).
    """

    def register(function: Callable[..., Any]) -> LossDefinition:
        how_context = _takes_context(function)
        definition = LossDefinition(
            name=name or function.__name__,
            description=description or (function.__doc__ or "").strip(),
            parameter_space=_normalize_parameter_space(parameter_space or {}),
            seed_loss_fn=function,
            seed_start=int(seed_start),
            default_chunk_size=int(default_chunk_size),
            default_num_chunks=int(default_num_chunks),
            source_file=inspect.getsourcefile(function),
            takes_context=how_context != "no",
            context_by_keyword=how_context == "keyword",
        )
        _register(definition)
        return definition

    return register(fn) if fn is not None else register


def _takes_context(function: Callable[..., Any]) -> str:
    """How the loss takes ``context``: "positional", "keyword" (``*, context``) or "no"."""
    signature = inspect.signature(function)
    for args, kwargs, how in (((0, 1, 2), {}, "positional"), ((0, 1), {"context": 2}, "keyword"), ((0, 1), {}, "no")):
        try:
            signature.bind(*args, **kwargs)
            return how
        except TypeError:
            continue
    raise TypeError(
        f"loss {function.__name__}{signature} must take (params, seed), (params, seed, context) "
        "or (params, seed, *, context)"
    )


def _register(definition: LossDefinition) -> None:
    taken = _LOSSES.get(definition.name)
    if taken is not None and _function_id(taken.seed_loss_fn) != _function_id(definition.seed_loss_fn):
        raise ConfigError(
            f"loss name {definition.name!r} is already registered by "
            f"{'.'.join(_function_id(taken.seed_loss_fn))}; give @loss(name=...) another name"
        )
    _LOSSES[definition.name] = definition  # re-importing the same function replaces it


def _function_id(function: Callable[..., Any]) -> tuple[str, str]:
    return (getattr(function, "__module__", "?"), getattr(function, "__qualname__", "?"))


@dataclass(frozen=True)
class OptimizeResult:
    """What ``optimize_run`` returns; ``study`` is the live Optuna study."""

    loss_name: str
    best_value: float | None
    best_params: dict[str, ParamValue] | None  # None with several objectives: see best_trials
    n_trials: int
    study_name: str
    run_dir: str
    run_name: str
    mode: ExecutionMode = ExecutionMode.SINGLE
    n_complete: int = 0
    n_failed: int = 0
    n_pruned: int = 0
    best_standard_error: float | None = None  # the best trial's std / sqrt(n_seeds)
    study: optuna.Study | None = field(default=None, compare=False, repr=False)
    # Optuna's study.best_trials: with several objectives the Pareto set (best_value and best_params are None)
    best_trials: list[optuna.trial.FrozenTrial] = field(default_factory=list, compare=False, repr=False)
    # the best, then the trials a one-sided paired test on shared chunks cannot tell from it (one objective)
    best_set: list[BestSetTrial] = field(default_factory=list, compare=False, repr=False)


@dataclass(frozen=True)
class BestSetTrial:
    """A trial of the run's best set: the best, or one a paired test on shared chunks cannot tell from it."""

    number: int
    params: dict[str, ParamValue]
    mean: float
    standard_error: float
    n_seeds: int


@dataclass(frozen=True)
class MultiOptimizeResult:
    """What ``optimize_entries`` returns: one ``OptimizeResult`` per entry."""

    loss_name: str
    n_entries: int
    entries: list[str]
    results_by_entry: dict[str, OptimizeResult]
    best_values_by_entry: dict[str, float | None]
    best_params_by_entry: dict[str, dict[str, ParamValue] | None]
    run_dir: str
    mode: ExecutionMode = ExecutionMode.SINGLE
    best_trials_by_entry: dict[str, list[optuna.trial.FrozenTrial]] = field(default_factory=dict, repr=False)
    best_set_by_entry: dict[str, list[BestSetTrial]] = field(default_factory=dict, repr=False)


def optimize_run(
    loss: LossDefinition | str,
    *,
    n_trials: Annotated[
        int, _Option("the total the run should reach: a re-run finishes it, it does not add", "count")
    ] = 10,
    seeds: Annotated[Iterable[int] | None, _Option("an explicit list of seeds, honoured exactly", "seeds")] = None,
    n_seeds: Annotated[
        int | None, _Option("seeds `seed_start ..`; neither: `chunk_size * num_chunks`", "seeds")
    ] = None,
    chunk_size: Annotated[
        int | None, _Option("seeds per chunk (an array task); None: the loss's, 100", "seeds")
    ] = None,
    num_chunks: Annotated[
        int | None, _Option("chunks when `n_seeds` is not given; None: the loss's, 10", "seeds")
    ] = None,
    random_seed: Annotated[int, _Option("seeds the default `TPESampler` (see Resume)", "integer")] = 123,
    entry_id: Annotated[str | None, _Option("`context['entry_id']` of the loss", "text?", identity=True)] = None,
    direction: Annotated[str, _Option("`'minimize'` or `'maximize'`", "direction", identity=True)] = "minimize",
    objectives: Annotated[
        Mapping[str, str] | None,
        _Option(
            "loss components to optimize, each with its direction, e.g. `{'fit': 'minimize', 'shape': 'maximize'}`"
            " (see Optuna habits)",
            "objectives",
            identity=True,
        ),
    ] = None,
    mode: Annotated[
        ExecutionMode | str, _Option("`'single'` or `'distributed'` (or `execution_mode(...)`)", "mode")
    ] = ExecutionMode.SINGLE,
    run_root: Annotated[str | os.PathLike[str], _Option("the directory of runs", "path")] = "runs",
    run_name: Annotated[str | None, _Option("None: a new `<loss>_v%04d`; an existing name: resume it", "name?")] = None,
    loss_module: Annotated[
        str | None, _Option("a module name or `.py` path, if the loss's is not found", "loss")
    ] = None,
    slurm_poll_seconds: Annotated[float, _Option("the longest wait between two `squeue` calls", "positive")] = 15,
    slurm_timeout_minutes: Annotated[
        float | None, _Option("cancel (and retry) a trial attempt that takes longer", "positive?")
    ] = None,
    cpus_per_task: Annotated[
        int | None, _Option("`sbatch --cpus-per-task`; None: `worker_parallelism`", "count?")
    ] = None,
    mem_per_cpu: Annotated[str, _Option("`sbatch --mem-per-cpu`", "memory")] = "2G",
    max_concurrent_trials: Annotated[int, _Option("trials in flight at once", "count")] = 1,
    array_parallelism_limit: Annotated[int | None, _Option("the `%N` array throttle", "count?")] = None,
    worker_parallelism: Annotated[int, _Option("processes per chunk task (single mode: per trial)", "count")] = 1,
    worker_time_limit: Annotated[
        timedelta, _Option("`sbatch --time` of a chunk task; single mode kills a chunk past it", "duration")
    ] = timedelta(hours=2),
    slurm_qos: Annotated[str | None, _Option("`--qos`; None sends none", "text?")] = "short",
    trial_retry_attempts: Annotated[
        int, _Option("resubmissions of the missing chunks after a timeout or a killed task", "count0")
    ] = 1,
    fail_on_chunk_error: Annotated[
        bool, _Option("False: a trial whose loss failed in some chunks reports the mean of the others", "flag")
    ] = True,
    use_processes: Annotated[bool, _Option("False: threads instead of processes for a chunk's seeds", "flag")] = True,
    forward_sys_argv_to_workers: Annotated[
        bool, _Option("workers see the launcher's `sys.argv` while importing the loss", "flag")
    ] = True,
    sampler: Annotated[Any, _Option("an Optuna sampler; None: TPE seeded from `random_seed`", "object")] = None,
    storage: Annotated[Any, _Option("an Optuna storage; None: the run's `optuna.journal`", "object")] = None,
    pruner: Annotated[
        Any, _Option("an Optuna pruner, told of each chunk (see Seeds as a budget); None: no pruning", "object")
    ] = None,
    prune_report: Annotated[
        str, _Option("what the pruner is told: `'chunk'` means, `'running_mean'`, or `'auto'` (by pruner)", "report")
    ] = "auto",
    target_standard_error: Annotated[
        float | None,
        _Option(
            "a trial stops adding chunks once its standard error is at or below it, and races the best"
            " (see Seeds where they decide the ranking); None: every trial runs all `n_seeds`",
            "positive?",
        ),
    ] = None,
    racing_level: Annotated[
        float, _Option("the level of the one-sided paired t-test of a race and of the best set", "level")
    ] = 0.05,
    enqueue: Annotated[
        Sequence[Mapping[str, ParamValue]] | None,
        _Option("param dicts evaluated first, in order; a resume skips those the study already has", "points"),
    ] = None,
    callbacks: Annotated[
        Sequence[Callable[..., Any]] | None,
        _Option(
            "`callback(study, frozen_trial)` after each finished trial, as `study.optimize` calls them", "callbacks"
        ),
    ] = None,
    slurm_partition: Annotated[str | None, _Option("`--partition`", "text?")] = None,
    slurm_account: Annotated[str | None, _Option("`--account`", "text?")] = None,
    sbatch_args: Annotated[Sequence[str], _Option("extra sbatch options, e.g. `['--constraint=avx2']`", "texts")] = (),
    python: Annotated[str | None, _Option("the workers' interpreter; None: this one", "executable?")] = None,
    slurm_unavailable_minutes: Annotated[
        float, _Option("how long to keep asking while slurmctld does not answer (busy, restarting)", "positive")
    ] = 30,
    progress: Annotated[bool, _Option("one status line on a terminal (never in a log file)", "flag")] = True,
    resume_with_changed_loss: Annotated[
        bool, _Option("resume although the loss's code changed (its chunks are recomputed)", "flag")
    ] = False,
) -> OptimizeResult:
    """Run (or resume) a study whose objective is the loss's mean over seeds.

    ``n_trials`` is the total the run should reach, so re-running the same call after
    a crash finishes the run. ``run_name=None`` starts the next ``<loss>_v%04d``; the
    name of an existing run resumes it. Bad arguments raise ``ValueError`` before any
    work starts. Each option's help is in its annotation (and README.md's table, which
    ``python -m slurptuna options`` prints).
    """
    _refuse_inside_worker("optimize_run")
    given = locals()
    settings, objects = _resolve_settings(loss, {name: given[name] for name in _options()})
    with _StopSignal() as stop:
        return _run_study(settings, stop=stop, **objects)


def optimize_entries(
    loss: LossDefinition | str,
    *,
    entry_ids: Iterable[str],
    run_name_prefix: str | None = None,
    max_concurrent_entries: int | None = None,
    **run_options: Any,
) -> MultiOptimizeResult:
    """One independent study per entry (participant, condition), run concurrently.

    Each entry's run lives in ``<loss>_entries_v0001/<entry>/`` and sees its id as
    ``context["entry_id"]``; entry ``i`` samples with ``random_seed + i``. Other keyword
    arguments are those of ``optimize_run``, with its defaults.
    """
    _refuse_inside_worker("optimize_entries")
    entries = [str(e) for e in entry_ids]
    if not entries:
        raise ConfigError("entry_ids must list at least one entry")
    labels = [_check_name("entry id (as a directory name)", _safe_label(e)) for e in entries]
    if len(set(labels)) != len(labels):
        raise ConfigError(f"entry_ids must stay distinct as directory names, got {labels}")
    _optional(_at_least(1))("max_concurrent_entries", max_concurrent_entries)
    _optional(_check_name)("run_name_prefix", run_name_prefix)
    for bad in ("entry_id", "run_name", "storage"):
        if bad in run_options:
            raise ConfigError(f"optimize_entries sets {bad} itself (one run per entry, named by entry_ids)")
    unknown = run_options.keys() - _options().keys()
    if unknown:
        raise ConfigError(f"unknown option(s) {sorted(unknown)}; optimize_run takes: {', '.join(_options())}")
    options = {name: option.default for name, option in _options().items()} | run_options
    definition = _lookup_loss(loss)
    resolved = [  # every entry's arguments are checked before the first one starts
        _resolve_settings(
            definition,
            {**options, "entry_id": e, "random_seed": options["random_seed"] + i, "run_root": ".", "run_name": label},
        )
        for i, (e, label) in enumerate(zip(entries, labels, strict=True))
    ]
    if run_name_prefix is None:
        parent = _create_versioned_dir(Path(options["run_root"]), f"{definition.name}_entries")
    else:
        parent = Path(options["run_root"]) / run_name_prefix
        parent.mkdir(parents=True, exist_ok=True)
    results: dict[str, OptimizeResult] = {}

    at_once = min(max_concurrent_entries or len(entries), len(entries))
    cores = max(1, _usable_cores() // at_once)  # single mode: the entries' pools share the machine's cores

    def run_entry(entry: tuple[_RunSettings, dict[str, Any]]) -> OptimizeResult:
        settings, objects = entry
        return _run_study(replace(settings, run_root=str(parent)), stop=stop, cores=cores, **objects)

    from concurrent.futures import ThreadPoolExecutor

    with _StopSignal() as stop, ThreadPoolExecutor(max_workers=at_once) as pool:
        for entry, result in zip(entries, pool.map(run_entry, resolved), strict=True):
            results[entry] = result
            _write_entries_summary(parent, entries, results)
    return MultiOptimizeResult(
        loss_name=definition.name,
        n_entries=len(entries),
        entries=entries,
        results_by_entry=results,
        best_values_by_entry={e: r.best_value for e, r in results.items()},
        best_params_by_entry={e: r.best_params for e, r in results.items()},
        run_dir=str(parent),
        mode=execution_mode(options["mode"]),
        best_trials_by_entry={e: r.best_trials for e, r in results.items()},
        best_set_by_entry={e: r.best_set for e, r in results.items()},
    )


def _write_entries_summary(parent: Path, entries: list[str], results: Mapping[str, OptimizeResult]) -> None:
    _write_json_atomic(
        parent / "summary.json",
        {
            "entries": entries,
            "runs": {e: r.run_dir for e, r in results.items()},
            "best_params_by_entry": {e: r.best_params for e, r in results.items()},
            "best_values_by_entry": {e: r.best_value for e, r in results.items()},
            "best_trials_by_entry": {e: [t.number for t in r.best_trials] for e, r in results.items()},
        },
    )


def _safe_label(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", text).strip("_.") or "entry"


# ---------------------------------------------------------------- options: defined once, in optimize_run's signature
#
# Each option of optimize_run is one parameter whose annotation carries its help and the
# kind of value it takes (an ``_Option``). Everything else derives from that signature, as
# submitit derives its defaults from one: optimize_entries' defaults and checks, the
# record of a run (``_RunSettings``, its meta.json), the resume check, and README.md's
# table of options (``python -m slurptuna options``; a test compares the two).


@dataclass(frozen=True, eq=False)
class _Option:
    """One option: its line of help, the kind of value it takes, and whether a resume may change it.

    Written in the option's annotation; ``_options()`` adds its name and default from the signature.
    """

    help: str
    kind: str  # a key of _KINDS
    identity: bool = False  # part of the experiment: resuming with another value is refused
    name: str = ""
    default: Any = None

    @property
    def recorded(self) -> bool:
        """Kept in meta.json (the seeds, the loss's module and Optuna objects are not)."""
        return self.kind not in _NOT_RECORDED

    def check(self, value: Any) -> Any:
        """The value as the run keeps it; ConfigError if this option does not take it."""
        return _KINDS[self.kind](self.name, value)


def _at_least(minimum: int) -> Callable[[str, Any], int]:
    def check(name: str, value: Any) -> int:
        if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < minimum:
            raise ConfigError(f"{name} must be an integer >= {minimum}, got {value!r}")
        return int(value)

    return check


def _optional(check: Callable[[str, Any], Any]) -> Callable[[str, Any], Any]:
    return lambda name, value: None if value is None else check(name, value)


def _between(low: float, high: float, what: str) -> Callable[[str, Any], float]:
    def check(name: str, value: Any) -> float:
        if isinstance(value, bool) or not isinstance(value, numbers.Real) or not low < value < high:
            raise ConfigError(f"{name} must be {what}, got {value!r}")
        return float(value)

    return check


_positive_number = _between(0, math.inf, "a finite number > 0")


def _text(name: str, value: Any) -> str:
    if not isinstance(value, str) or not value.strip():
        raise ConfigError(f"{name} must be a non-empty string or None, got {value!r}")
    return value


def _texts(name: str, value: Any) -> list[str]:
    if isinstance(value, str) or not isinstance(value, Iterable) or not all(isinstance(a, str) for a in value):
        raise ConfigError(f"{name} must be a list of strings such as ['--constraint=avx2'], got {value!r}")
    return list(value)


def _choice(*allowed: str) -> Callable[[str, Any], str]:
    def check(name: str, value: Any) -> str:
        if value not in allowed:
            raise ConfigError(f"{name} must be one of {', '.join(map(repr, allowed))}, got {value!r}")
        return value

    return check


def _memory(name: str, value: Any) -> str:
    if not isinstance(value, str) or not re.fullmatch(r"\d+[KMGT]?", value.strip().upper()):
        raise ConfigError(f"{name} must look like '2G', '500M' or '1024', got {value!r}")
    return value.strip().upper()


def _duration(name: str, value: Any) -> int:
    """A positive ``timedelta``, kept as whole seconds."""
    if not isinstance(value, timedelta) or value.total_seconds() <= 0:
        raise ConfigError(f"{name} must be a positive datetime.timedelta, got {value!r}")
    return math.ceil(value.total_seconds())


def _executable(name: str, value: Any) -> str:
    if not isinstance(value, str) or _which(value) is None:
        raise ConfigError(f"{name}={value!r} is not an executable: give the workers' interpreter, or None for this one")
    return value


_NAME_LIMIT = 200


def _check_name(name: str, value: Any) -> str:
    """A name that becomes one directory under run_root: it never leads outside."""
    plain = isinstance(value, str) and value.strip() and value not in (".", "..") and len(value) <= _NAME_LIMIT
    if not plain or any(c in value for c in "/\\\0"):
        raise ConfigError(
            f"{name} must be a plain directory name (1 to {_NAME_LIMIT} characters, no '/' or '\\', "
            f"not '.' or '..'), got {value!r}"
        )
    return value


def _points(name: str, value: Any) -> list[dict[str, Any]]:
    """A list of param dicts; each is checked against the loss's parameter space in _resolve_settings."""
    if value is None:
        return []
    if isinstance(value, Mapping) or not isinstance(value, Iterable):
        raise ConfigError(f"{name} must be a list of param dicts such as [{{'alpha': 0.3}}], got {value!r:.200}")
    points = list(value)
    for i, point in enumerate(points):
        if not isinstance(point, Mapping) or not all(isinstance(k, str) for k in point):
            raise ConfigError(f"{name}[{i}] must be a dict of parameter name -> value, got {point!r:.200}")
    return [dict(point) for point in points]


def _objectives(name: str, value: Any) -> dict[str, str]:
    if (
        not isinstance(value, Mapping)
        or not value
        or not all(isinstance(k, str) and k and v in ("minimize", "maximize") for k, v in value.items())
    ):
        raise ConfigError(
            f"{name} must map loss component names to 'minimize' or 'maximize', e.g. "
            f"{{'fit': 'minimize', 'shape': 'maximize'}}, got {value!r:.200}"
        )
    return dict(value)


def _callables(name: str, value: Any) -> list[Callable[..., Any]]:
    if value is None:
        return []
    if callable(value) or not isinstance(value, Iterable) or not all(callable(c) for c in value):
        raise ConfigError(f"{name} must be a list of callables `callback(study, frozen_trial)`, got {value!r}")
    return list(value)


# What each kind of option accepts; "seeds", "loss", "object" and "callbacks" are not kept in
# meta.json (they are resolved into the seed plan and the loss's location, or are Python objects
# handed to the controller: not part of the run's record, nor of its resume identity).
_KINDS: dict[str, Callable[[str, Any], Any]] = {
    "count": _at_least(1),
    "count?": _optional(_at_least(1)),
    "count0": _at_least(0),
    "integer": _at_least(-(2**63)),
    "seeds": lambda name, value: value,  # checked by SeedPlan.resolve, which sees them together
    "text?": _optional(_text),
    "texts": _texts,
    "direction": _choice("minimize", "maximize"),
    "mode": lambda name, value: execution_mode(value).value,
    "path": lambda name, value: os.fspath(value),
    "name?": _optional(_check_name),
    "loss": _optional(_text),
    "positive": _positive_number,
    "positive?": _optional(_positive_number),
    "level": _between(0, 1, "a probability between 0 and 1 (exclusive), such as 0.05"),
    "memory": _memory,
    "duration": _duration,
    "flag": lambda name, value: bool(value),
    "object": lambda name, value: value,
    "callbacks": _callables,
    "points": _points,
    "objectives": _optional(_objectives),
    "report": _choice("auto", "chunk", "running_mean"),
    "executable?": _optional(_executable),
}
_NOT_RECORDED = frozenset({"seeds", "loss", "object", "callbacks"})
_HANDED_TO_CONTROLLER = frozenset({"object", "callbacks"})  # passed to _run_study as they are


@functools.cache
def _options() -> dict[str, _Option]:
    """optimize_run's options, in order, read from its signature and annotations (``Annotated[type, _Option]``)."""
    parameters = inspect.signature(optimize_run, eval_str=True).parameters.values()
    return {
        p.name: replace(p.annotation.__metadata__[0], name=p.name, default=p.default)
        for p in parameters
        if p.kind is inspect.Parameter.KEYWORD_ONLY
    }


def _options_table() -> str:
    """README.md's table of options, made from the signature (``python -m slurptuna options``)."""

    def default(option: _Option) -> str:
        value = option.default
        if isinstance(value, timedelta):
            return f"`{value}`"
        return f"`{value.value!r}`" if isinstance(value, Enum) else f"`{value!r}`"

    rows = [f"| `{o.name}` | {default(o)} | {o.help} |" for o in _options().values()]
    return "\n".join(["| option | default | meaning |", "|---|---|---|", *rows])


# The record of a run (meta.json): what the launcher resolved, then every recorded option.
_RunSettings = make_dataclass(
    "_RunSettings",
    [
        ("loss_name", str),
        ("loss_ref", dict),  # how workers import the loss (see _locate_loss)
        ("seeds", "SeedPlan"),  # every trial's seeds and chunks
        ("argv", list),  # the launcher's sys.argv, for the workers' import
        ("code_id", str),  # the loss's code (see _code_id): chunks of other code are recomputed
        *[(o.name, Any) for o in _options().values() if o.recorded],
        ("run_id", str, field(default="")),  # random, kept across resumes: tags the run's Slurm jobs
    ],
    frozen=True,
    namespace={
        "__doc__": "Every option of a run, checked and resolved; ``meta.json`` is this record.",
        "to_json": lambda self: {**asdict(self), "seeds": self.seeds.to_json()},
        "from_json": classmethod(
            lambda cls, record: cls(
                **{
                    **{o.name: o.check(o.default) for o in _options().values() if o.recorded},
                    **{k: v for k, v in record.items() if k in cls.__dataclass_fields__},  # older runs lack new options
                    "seeds": SeedPlan.from_json(record["seeds"]),
                }
            )
        ),
    },
)
_IDENTITY_FIELDS = ("loss_name", "seeds", *[o.name for o in _options().values() if o.identity])


def _which(program: str) -> str | None:
    import shutil

    return shutil.which(program)


def _lookup_loss(loss_or_name: LossDefinition | str) -> LossDefinition:
    if isinstance(loss_or_name, LossDefinition):
        _register(loss_or_name)
        return loss_or_name
    definition = _LOSSES.get(str(loss_or_name))
    if definition is None:
        known = ", ".join(sorted(_LOSSES)) or "none registered yet (import the module that defines it)"
        raise ConfigError(f"unknown loss {loss_or_name!r}; registered losses: {known}")
    return definition


def _resolve_settings(loss: LossDefinition | str, given: Mapping[str, Any]) -> tuple[_RunSettings, dict[str, Any]]:
    """Check every option (missing ones take their defaults); returns the run's record and the Optuna objects."""
    definition = _lookup_loss(loss)
    options = _options()
    values = {name: o.check(given.get(name, o.default)) for name, o in options.items()}
    values["cpus_per_task"] = values["cpus_per_task"] or values["worker_parallelism"]
    values["python"] = values["python"] or sys.executable
    values["enqueue"] = _check_enqueued(definition, values["enqueue"])
    _check_objectives(values)
    mode = ExecutionMode(values["mode"])
    settings = _RunSettings(
        loss_name=definition.name,
        loss_ref=_locate_loss(definition, values["loss_module"], mode),
        seeds=SeedPlan.resolve(
            definition, values["seeds"], values["n_seeds"], values["chunk_size"], values["num_chunks"]
        ),
        argv=list(sys.argv) if values["forward_sys_argv_to_workers"] else list(sys.argv[:1]),
        code_id=_code_id(definition),
        **{name: values[name] for name, o in options.items() if o.recorded},
    )
    return settings, {name: values[name] for name, o in options.items() if o.kind in _HANDED_TO_CONTROLLER}


def _check_objectives(values: Mapping[str, Any]) -> None:
    """``objectives`` against the options it cannot go with (yet), saying why."""
    objectives = values["objectives"]
    if objectives is None:
        return
    if values["direction"] != "minimize":
        raise ConfigError(
            f"direction={values['direction']!r} and objectives={objectives!r}: with objectives, each component's "
            "direction is given there; leave direction at its default"
        )
    if values["target_standard_error"] is not None:
        raise ConfigError(
            f"target_standard_error={values['target_standard_error']!r} cannot be used with objectives={objectives!r}"
            " (for now): its standard error and its races are those of the loss's mean, not of a component"
        )
    pruner = values["pruner"]
    if pruner is not None and type(pruner).__name__ != "NopPruner":
        why = (
            "Optuna prunes single-objective studies only"
            if len(objectives) > 1
            else f"the pruner would be told the loss's total, not the component {next(iter(objectives))!r}"
        )
        raise ConfigError(f"pruner={pruner!r} cannot be used with objectives={objectives!r} (for now): {why}")


def _directions(settings: _RunSettings) -> list[str]:
    """The study's directions: one per objective, or ``direction`` for the loss's mean."""
    return list(settings.objectives.values()) if settings.objectives else [settings.direction]


def _check_enqueued(definition: LossDefinition, points: list[dict[str, Any]]) -> list[dict[str, ParamValue]]:
    """Each enqueued point against the loss's parameter space, before any work starts; the
    error names the point, the parameter, its value and what is valid."""
    if not points:
        return []
    import optuna

    space = {name: _distribution(optuna, spec) for name, spec in definition.parameter_space.items()}
    checked = []
    for i, point in enumerate(points):
        unknown, missing = sorted(point.keys() - space.keys()), sorted(space.keys() - point.keys())
        if unknown or missing:
            problems = [f"unknown parameter(s) {unknown}"] * bool(unknown) + [f"no value for {missing}"] * bool(missing)
            raise ConfigError(
                f"enqueue[{i}] = {point!r:.200}: {'; '.join(problems)}; loss {definition.name!r} takes "
                f"{', '.join(space)}"
            )
        checked.append({name: _enqueued_value(f"enqueue[{i}][{name!r}]", point[name], space[name]) for name in space})
    return checked


def _enqueued_value(where: str, value: Any, distribution: Any) -> ParamValue:
    """The value as the distribution holds it (an int for an int range ...), or a ConfigError saying what is valid."""
    import optuna

    d = optuna.distributions
    number = isinstance(value, numbers.Real) and not isinstance(value, bool)
    if isinstance(distribution, d.CategoricalDistribution):
        for choice in distribution.choices:
            if value == choice and isinstance(value, bool) == isinstance(choice, bool):
                return choice
        valid = f"one of {list(distribution.choices)!r}"
    elif isinstance(distribution, (d.IntDistribution, d.FloatDistribution)):
        is_int = isinstance(distribution, d.IntDistribution)
        if is_int and number and float(value).is_integer() and distribution._contains(int(value)):
            return int(value)
        if not is_int and number and math.isfinite(value) and distribution._contains(float(value)):
            return float(value)
        valid = f"{'an integer' if is_int else 'a number'} in [{distribution.low}, {distribution.high}]"
        valid += " (log scale)" * distribution.log
        if distribution.step is not None and distribution.step != 1:
            valid += f" on the grid low + k * {distribution.step}"
    else:  # another Optuna distribution: its own check
        with contextlib.suppress(Exception):
            if distribution._contains(distribution.to_internal_repr(value)):
                return value
        valid = f"a value of {distribution}"
    raise ConfigError(f"{where} is {value!r}, not {valid}")


def _code_id(definition: LossDefinition) -> str:
    """A hash of the loss function's compiled code and its file's name.

    Compiled code, so comments, blank lines and moving the function do not count; a changed
    expression or constant does. Functions it calls are not followed.
    """
    import hashlib

    function = definition.seed_loss_fn
    code = getattr(function, "__code__", None)
    if code is None:
        return ""
    digest = hashlib.sha256(os.path.basename(definition.source_file or "").encode())

    def add(code: Any) -> None:
        digest.update(code.co_code)
        digest.update(repr((code.co_names, code.co_varnames, code.co_freevars)).encode())
        for const in code.co_consts:
            if hasattr(const, "co_code"):
                add(const)
            else:
                digest.update(repr(const).encode())

    add(code)
    return digest.hexdigest()[:16]


_FILE_MODULE_PREFIX = "_slurptuna_file_"


def _locate_loss(definition: LossDefinition, loss_module: str | None, mode: ExecutionMode) -> dict[str, Any]:
    """Record how a worker process imports the loss's module: by name, or from a file.

    A loss defined in the launched script lives in ``__main__``, which a worker cannot
    import by name: a script is imported from its file, a module launched with
    ``python -m pkg.fit`` by its name (as multiprocessing's spawn does), so that its
    relative imports work. A loss typed into a notebook or ``python -`` has neither: single
    mode's forked workers inherit it ("interactive"), Slurm's workers cannot.
    """
    if loss_module:
        if loss_module.endswith(".py") or os.path.isfile(loss_module):
            path = os.path.abspath(loss_module)
            return {"module": None, "file": path, "sys_path": [os.path.dirname(path), os.getcwd()]}
        return {"module": loss_module, "file": None, "sys_path": [os.getcwd()]}
    module_name = getattr(definition.seed_loss_fn, "__module__", None) or "__main__"
    module = sys.modules.get(module_name)
    path = getattr(module, "__file__", None) or definition.source_file
    if module_name == "__main__":
        launched_as = getattr(getattr(module, "__spec__", None), "name", None)
        if launched_as and launched_as != "__main__":
            module_name = launched_as  # python -m pkg.fit
    if module_name == "__main__" or module_name.startswith(_FILE_MODULE_PREFIX):
        if not path or not os.path.isfile(path):
            if mode == ExecutionMode.SINGLE:
                return {"module": None, "file": None, "sys_path": [os.getcwd()], "interactive": True}
            raise ConfigError(
                f"loss {definition.name!r} was defined interactively (a notebook or `python -`); Slurm's workers "
                "need it in a .py file: define it in a module, or pass loss_module='path/to/file.py' "
                "(single mode runs it as it is)"
            )
        path = os.path.abspath(path)
        return {"module": None, "file": path, "sys_path": [os.path.dirname(path), os.getcwd()]}
    root = os.getcwd()
    if path:
        root = os.path.abspath(path)
        depth = module_name.count(".") + 1 + (os.path.basename(root) == "__init__.py")
        for _ in range(depth):
            root = os.path.dirname(root)
    return {"module": module_name, "file": None, "sys_path": [root, os.getcwd()]}


# ============================================================================
# Run directory and files: names, versions, atomic JSON
# ============================================================================


def _write_json_atomic(path: Path, record: Any, indent: int | None = 1) -> None:
    """The record as JSON, written atomically (``_write_atomic``).

    ``indent=None`` writes one compact line (C's encoder, several times faster): for chunk
    files, of which a run may write thousands a second.
    """
    _write_atomic(path, (json.dumps(record, indent=indent) + "\n").encode())


def _write_atomic(path: Path, data: bytes) -> None:
    """Write to a temp file in the same directory, then rename: readers never see half a file.

    Plain ``os`` calls, as this runs for every chunk file of a Slurm task.
    """
    directory, name = os.path.split(path)
    tmp = os.path.join(directory, f".{name}.{os.getpid()}.{threading.get_ident()}.tmp")  # unique per writer
    flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | getattr(os, "O_CLOEXEC", 0)
    try:
        try:
            fd = os.open(tmp, flags, 0o666)
        except FileNotFoundError:
            os.makedirs(directory, exist_ok=True)
            fd = os.open(tmp, flags, 0o666)
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except BaseException as exc:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        if isinstance(exc, OSError) and exc.errno in _UNWRITABLE:  # name the file meant, not the temp file
            raise OSError(exc.errno, exc.strerror, str(path)) from None
        raise


# A run directory that cannot be written stops the run (RunDirError), never fails a trial;
# the value is what the user does before resuming.
_UNWRITABLE = {
    errno.ENOSPC: "once the disk has space",
    errno.EDQUOT: "once you are under your disk quota",
    errno.EROFS: "once the file system is writable",
}


def _check_writable(directory: Path) -> None:
    """Write and remove a file of a chunk file's size: raises the OSError (naming ``directory``) a task met, if any."""
    probe = directory / f".write_check.{os.getpid()}.json"
    try:
        _write_json_atomic(probe, {"room": "x" * 1000})
    except OSError as exc:
        raise OSError(exc.errno, exc.strerror, str(directory)) from None
    with contextlib.suppress(FileNotFoundError):
        os.unlink(probe)


def _read_json(path: Path | str) -> Any:
    """The file's content, or None when it is missing or unreadable (then it is recomputed)."""
    try:
        with open(path, "rb") as handle:  # bytes: json decodes UTF-8 itself, faster than a text file
            return json.loads(handle.read())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        logger.warning("ignoring unreadable %s: %s", path, exc)
        return None


_TRIALS_PER_DIR = 1000


def _group(number: int) -> str:
    """``00000-00999``: the directory of trial (or array) ``number``, at most 1,000 in one (Lustre, GPFS, NFS)."""
    first = number // _TRIALS_PER_DIR * _TRIALS_PER_DIR
    return f"{first:05d}-{first + _TRIALS_PER_DIR - 1:05d}"


def _file(name: str) -> property:
    """A file of the record's ``dir``."""
    return property(lambda self: self.dir / name)


@dataclass(frozen=True)
class TrialPaths:
    """Every file of one trial; the only place their names are built."""

    run_dir: Path
    number: int

    @property
    def name(self) -> str:
        return f"trial_{self.number:05d}"

    @cached_property
    def dir(self) -> Path:
        """``trials/00000-00999/trial_00042``; a run started before trials were grouped keeps ``trials/trial_00042``."""
        flat = self.run_dir / "trials" / self.name
        return flat if flat.is_dir() else self.run_dir / "trials" / _group(self.number) / self.name

    params = _file("params.json")
    summary = _file("summary.json")
    jobs = _file("jobs.json")
    # every chunk record of a finished trial, one JSON line each: one file instead of one per chunk
    merged_chunks = _file("chunks.jsonl")

    @cached_property
    def chunks_dir(self) -> Path:
        return self.dir / "chunks"

    @cached_property
    def errors_dir(self) -> Path:
        return self.dir / "errors"

    def chunk(self, index: int) -> Path:
        """What a Slurm chunk task writes (one file per running task)."""
        return self.chunks_dir / f"chunk_{index:05d}.json"

    def worker_records(self, pid: int) -> Path:
        """What a single-mode pool worker appends its whole chunks of this trial to, one JSON line each."""
        return self.chunks_dir / f"worker_{pid}.jsonl"

    def chunk_error(self, index: int) -> Path:
        return self.errors_dir / f"chunk_{index:05d}.json"


@dataclass(frozen=True)
class RunPaths:
    """The files of a run directory ``runs/<loss>_v0001/``."""

    dir: Path

    meta = _file("meta.json")
    summary = _file("summary.json")
    journal = _file("optuna.journal")  # the study (see _study_storage)
    optuna_db = _file("optuna.db")  # the study of runs made before optuna.journal (SQLite); such a run keeps it
    trials_index = _file("trials.jsonl")  # a FinishedTrial line per finished trial: what status reads
    lock = _file(".controller.lock")
    validation = _file("validation.json")  # the latest validate result (validation_v%04d/ child runs keep theirs)
    batch_script = _file("slurm_logs/slurptuna_task.sh")

    def worker_log(self, name: str) -> Path:
        """The stdout and stderr of one single-mode pool process (it runs chunks of many trials)."""
        return self.dir / "slurm_logs" / f"local_worker_{name}.log"

    def array_logs(self, number: int) -> Path:
        """``slurm_logs/arrays_00000-00999/array_00042``: the logs of array ``number`` (chunks of one or several
        trials) and its reduce job."""
        return self.dir / "slurm_logs" / f"arrays_{_group(number)}" / f"array_{number:05d}"

    @staticmethod
    def task_log(logs: Path, task: str | int) -> Path:
        """One array task's stdout and stderr; ``%a`` in sbatch's pattern."""
        return logs / f"task_{task}.log"

    @staticmethod
    def reduce_log(logs: Path, job_id: str | int) -> Path:
        return logs / f"reduce_{job_id}.log"

    @staticmethod
    def folded_log(logs: Path) -> Path:
        """The non-empty logs of the array's tasks that succeeded, folded into one file once their trial ends."""
        return logs / "succeeded_tasks.log"

    def trial(self, number: int) -> TrialPaths:
        return TrialPaths(self.dir, number)


# ---------------------------------------------------------------- the run's file records
#
# Each file a run writes is one frozen dataclass with ``to_json``/``from_json``; the paths
# are TrialPaths'. params.json says what every chunk and summary of a trial must have been
# computed for; a chunk file or summary that does not match it is never trusted.


class _Record:
    """A record saved as one JSON object of its fields; a record with other fields overrides both methods."""

    def to_json(self) -> dict[str, Any]:
        return asdict(self)  # type: ignore[call-overload]

    @classmethod
    def from_json(cls, record: Mapping[str, Any]) -> Self:
        return cls(**record)


@dataclass(frozen=True)
class TrialParams(_Record):
    """``params.json``: what every chunk and the summary of a trial must have been computed for."""

    trial_number: int
    params: dict[str, ParamValue]
    seeds: dict[str, Any]
    entry_id: str | None = None
    code_id: str = ""  # the loss's code (see _code_id)

    @cached_property
    def plan(self) -> SeedPlan:
        return SeedPlan.from_json(self.seeds)

    def loss_context(self, chunk_index: int, run_dir: Path) -> dict[str, Any]:
        """The ``context`` a loss taking three arguments sees while it evaluates this chunk."""
        return {
            "entry_id": self.entry_id,
            "trial_number": self.trial_number,
            "chunk_index": chunk_index,
            "run_dir": str(run_dir),
        }

    @classmethod
    def load(cls, trial: TrialPaths) -> TrialParams:
        record = _read_json(trial.params)
        if record is None:
            raise SlurptunaError(f"{trial.params} is missing or unreadable")
        return cls.from_json(record)


@dataclass(frozen=True)
class ChunkResult(_Record):
    """One chunk file: which seeds and params it was computed for, and their statistics."""

    trial_number: int
    chunk_index: int
    seeds: dict[str, Any]
    params: dict[str, ParamValue]
    stats: ChunkStats
    elapsed_seconds: float
    processes: int
    code_id: str = ""  # the loss's code that computed it (see _code_id)
    finished_at: float = 0.0  # Unix time; 0 in chunks of runs made before it was kept (their file's mtime tells)

    def to_json(self) -> dict[str, Any]:
        return {**vars(self), "stats": self.stats.to_json()}  # not asdict: no deep copy, for every chunk

    @classmethod
    def from_json(cls, record: Mapping[str, Any]) -> ChunkResult:
        return cls(**{**record, "stats": ChunkStats.from_json(record["stats"])})

    @classmethod
    def of(cls, expected: TrialParams, index: int, stats: ChunkStats, seconds: float, processes: int) -> ChunkResult:
        """The record of chunk ``index`` of the trial that ``expected`` describes."""
        seeds = _describe_seeds(expected.plan.chunk(index))
        seconds = round(seconds, 6)
        code_id = expected.code_id
        now = time.time()
        return cls(expected.trial_number, index, seeds, expected.params, stats, seconds, processes, code_id, now)


@dataclass(frozen=True)
class ChunkFailure(_Record):
    """Why a chunk has no result: the loss raised, returned a non-number, or could not be imported."""

    trial_number: int
    chunk_index: int
    loss_name: str
    kind: str  # "raised", "bad_value", "crashed" (the process died) or "import"
    message: str
    seed: int | None = None
    params: dict[str, ParamValue] = field(default_factory=dict)
    traceback: str = ""
    log: str = ""  # the log of the process that ran the chunk, when the worker knows it

    def describe(self) -> str:
        where = f" at seed {self.seed}" if self.seed is not None else ""
        text = (
            f"loss {self.loss_name!r} failed{where} (chunk {self.chunk_index}) with params "
            f"{self.params}: {self.message}"
        )
        return text + (f"\n{self.traceback.rstrip()}" if self.traceback else "")


@dataclass(frozen=True)
class TrialSummary(_Record):
    """A trial's ``summary.json``: the pooled statistics of all its chunks."""

    trial_number: int
    params: dict[str, ParamValue]
    seeds: dict[str, Any]
    n_seeds: int
    n_chunks: int
    mean: float
    std: float
    min: float
    max: float
    components: dict[str, float]
    chunk_seconds: float
    missing_chunks: list[int] = field(default_factory=list)
    code_id: str = ""
    standard_error: float | None = None  # std / sqrt(n_seeds): how far the mean may be from the loss's
    component_standard_errors: dict[str, float] = field(default_factory=dict)  # the same, per component
    # chunks of the plan it did not need (target_standard_error reached): not missing, never run
    chunks_skipped: int = 0

    def to_json(self) -> dict[str, Any]:
        return {**asdict(self), "mean_total_loss": self.mean}  # the earlier package's name for the mean, too

    @classmethod
    def from_json(cls, record: Mapping[str, Any]) -> TrialSummary:
        return cls(**{k: v for k, v in record.items() if k != "mean_total_loss"})


@dataclass(frozen=True)
class FinishedTrial(_Record):
    """One line of the run's ``trials.jsonl``: a finished trial as Optuna was told, and its chunks' totals.

    ``status`` at 10,000 trials cannot replay the study and read every trial's records each
    time (31.7 s): the controller appends this line once per finished trial, and status reads
    these lines, summary.json and only the running trials' files. It reads like an Optuna
    FrozenTrial where status needs one (``number``, ``value(s)``, ``params``, ``user_attrs``).
    """

    number: int
    state: str  # COMPLETE, PRUNED or FAIL: Optuna's TrialState name
    values: list[float] | None
    params: dict[str, ParamValue]
    user_attrs: dict[str, Any]  # slurptuna's attributes that status shows (_STATUS_ATTRS)
    seeds: int  # over its valid chunks
    core_seconds: float  # chunk compute: elapsed seconds x processes
    spans: list[list[float]]  # [start, end] (Unix time) of its chunk work, pauses up to _ACTIVE_GAP_SECONDS joined

    @property
    def value(self) -> float | None:
        return self.values[0] if self.values else None

    @classmethod
    def of(cls, frozen: Any, chunks: Iterable[tuple[ChunkResult, float]]) -> FinishedTrial:
        """The line of a finished Optuna trial whose valid chunks (each with when it ended) are ``chunks``."""
        seeds, core_seconds, spans = _chunk_totals(chunks)
        attrs = {k: v for k, v in frozen.user_attrs.items() if k in _STATUS_ATTRS}
        if "fail_reason" in attrs:  # status shows this; the traceback (up to 20,000 characters) stays in the study
            failed = _failed_trial(frozen)
            attrs["fail_reason"] = failed.reason + (f"\nlog: {failed.log}" if failed.log else "")
        values = list(frozen.values) if frozen.values is not None else None
        return cls(frozen.number, frozen.state.name, values, dict(frozen.params), attrs, seeds, core_seconds, spans)


_STATUS_ATTRS = ("n_seeds", "std", "standard_error", "component_standard_errors", "fail_reason")


def _chunk_totals(chunks: Iterable[tuple[ChunkResult, float]]) -> tuple[int, float, list[list[float]]]:
    """(seeds, core seconds, the spans they ran in) of chunks, each with when it ended."""
    chunks = list(chunks)
    seeds = sum(c.stats.loss.count for c, _ in chunks)
    core_seconds = math.fsum(c.elapsed_seconds * c.processes for c, _ in chunks)
    spans = _active_spans([(end - c.elapsed_seconds, end) for c, end in chunks], _ACTIVE_GAP_SECONDS)
    return seeds, core_seconds, spans


def _standard_error_of(*records: Mapping[str, Any] | None) -> float | None:
    """A trial's standard error from the first record that tells it: its summary.json, its Optuna user attributes.

    Records written before standard errors were kept hold only ``std`` and ``n_seeds``: for them
    it is std / sqrt(n_seeds), here and nowhere else (new ones carry ``_Moments.standard_error``).
    """
    for record in records:
        if not isinstance(record, Mapping):
            continue
        value = record.get("standard_error")
        if isinstance(value, numbers.Real):
            return float(value)
        std, n_seeds = record.get("std"), record.get("n_seeds")
        if isinstance(std, numbers.Real) and isinstance(n_seeds, numbers.Integral) and n_seeds >= 1:
            return std / math.sqrt(n_seeds)
    return None


@dataclass(frozen=True)
class JobRef(_Record):
    """A submitted job of a trial, as recorded in ``jobs.json``."""

    job_id: str
    kind: str  # "tasks" (an array: chunks[i] is task offset + i), "reduce", or "chunks" (runs before: chunk - offset)
    chunks: tuple[int, ...] = ()
    offset: int = 0
    attempt: int = 0
    logs: str = ""  # the array's log directory, relative to the run's

    def task_of(self, chunk: int) -> int:
        """The array task id that runs ``chunk``."""
        return self.offset + self.chunks.index(chunk) if self.kind == "tasks" else chunk - self.offset

    def task_log(self, run: RunPaths, task: int) -> Path:
        return RunPaths.task_log(run.dir / self.logs, task)

    def to_json(self) -> dict[str, Any]:
        return {**vars(self), "chunks": list(self.chunks)}  # not asdict: a long tuple, not deep-copied

    @classmethod
    def from_json(cls, record: Mapping[str, Any]) -> JobRef:
        return cls(**{**record, "chunks": tuple(record.get("chunks", ()))})


def _create_versioned_dir(root: Path, prefix: str) -> Path:
    """Make ``<prefix>_v%04d`` with the next free number; ``mkdir`` is the race-free claim."""
    root.mkdir(parents=True, exist_ok=True)
    pattern = re.compile(rf"^{re.escape(prefix)}_v(\d{{4,}})$")
    taken = [int(m.group(1)) for p in root.iterdir() if (m := pattern.match(p.name))]
    version = max(taken, default=0) + 1
    while True:
        candidate = root / f"{prefix}_v{version:04d}"
        try:
            candidate.mkdir()
            return candidate
        except FileExistsError:
            version += 1


def _open_run(settings: _RunSettings) -> tuple[RunPaths, _RunSettings]:
    """Create a new versioned run, or check that an existing one is the same experiment."""
    root = Path(settings.run_root)
    if settings.run_name is None:
        run = RunPaths(_create_versioned_dir(root, settings.loss_name).resolve())
    else:
        run = RunPaths((root / settings.run_name).resolve())
        run.dir.mkdir(parents=True, exist_ok=True)
    recorded = _read_json(run.meta)
    settings = replace(settings, run_name=run.dir.name, run_id=(recorded or {}).get("run_id") or os.urandom(6).hex())
    if recorded is not None:
        _check_same_experiment(recorded, settings.to_json(), run)
    _write_json_atomic(run.meta, {**settings.to_json(), "slurptuna_version": __version__, "updated_at": _now_iso()})
    return run, settings


def _check_same_experiment(recorded: Mapping[str, Any], wanted: Mapping[str, Any], run: RunPaths) -> None:
    """Refuse a resume that would mix two experiments in one study, naming each difference."""

    def describe(name: str, value: Any) -> str:
        return SeedPlan.from_json(value).describe() if name == "seeds" and value else repr(value)

    differences = [
        f"{name}: the run has {describe(name, recorded.get(name))}, this call asks for {describe(name, wanted[name])}"
        for name in _IDENTITY_FIELDS
        if recorded.get(name) != wanted[name]
    ]
    if recorded.get("code_id") != wanted["code_id"] and not wanted["resume_with_changed_loss"]:
        summaries = [*run.dir.glob("trials/trial_*/summary.json"), *run.dir.glob("trials/*/trial_*/summary.json")]
        computed = sorted(int(p.parent.name.split("_")[1]) for p in summaries)
        differences.append(
            f"the loss's code changed since trials {_format_ranges(computed) or '(none yet)'} were computed by it; "
            "a study would rank the two codes together (resume_with_changed_loss=True if that is intended: "
            "interrupted trials are then recomputed with the new code)"
        )
    if differences:
        raise ConfigError(
            f"cannot resume {run.dir}: it was started with different settings:\n  "
            + "\n  ".join(differences)
            + "\nuse a new run_name (or None) to start a new run with these settings"
        )


def _now_iso() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


# ============================================================================
# Seeds and chunks: which seeds a chunk holds, and the chunk runner
# ============================================================================


@dataclass(frozen=True)
class SeedPlan:
    """The seeds of every trial and how they are cut into chunks of ``chunk_size``."""

    chunk_size: int
    start: int = 0
    count: int = 0
    explicit: tuple[int, ...] | None = None  # an explicit list that is not one contiguous range

    @classmethod
    def resolve(
        cls,
        definition: LossDefinition,
        seeds: Iterable[int] | None,
        n_seeds: int | None,
        chunk_size: int | None,
        num_chunks: int | None,
    ) -> SeedPlan:
        """Explicit ``seeds``, else ``n_seeds`` from the loss's ``seed_start``, else ``chunk_size * num_chunks``."""
        chunk_size = _optional(_at_least(1))("chunk_size", chunk_size)
        num_chunks = _optional(_at_least(1))("num_chunks", num_chunks)
        if seeds is not None:
            explicit = _check_seeds(seeds, n_seeds)
            total = len(explicit)
        elif n_seeds is not None:
            total = _at_least(1)("n_seeds", n_seeds)
        else:
            total = (chunk_size or definition.default_chunk_size) * (num_chunks or definition.default_num_chunks)
        if chunk_size is None:
            chunk_size = math.ceil(total / num_chunks) if num_chunks else definition.default_chunk_size
        elif num_chunks is not None and num_chunks != math.ceil(total / chunk_size):
            n = math.ceil(total / chunk_size)
            logger.warning(f"num_chunks={num_chunks} ignored: {total} seeds in chunks of {chunk_size} make {n} chunks")
        if seeds is None:
            return cls(chunk_size=chunk_size, start=definition.seed_start, count=total)
        if explicit == list(range(explicit[0], explicit[0] + total)):
            return cls(chunk_size=chunk_size, start=explicit[0], count=total)
        return cls(chunk_size=chunk_size, count=total, explicit=tuple(explicit))

    @property
    def n_chunks(self) -> int:
        return math.ceil(self.count / self.chunk_size)

    def chunk(self, index: int) -> Sequence[int]:
        """The seeds of chunk ``index``: a ``range`` when contiguous (no list is built)."""
        if not 0 <= index < self.n_chunks:
            raise IndexError(f"chunk {index} out of range: this run has chunks 0..{self.n_chunks - 1}")
        lo, hi = index * self.chunk_size, min(self.count, (index + 1) * self.chunk_size)
        if self.explicit is not None:
            return self.explicit[lo:hi]
        return range(self.start + lo, self.start + hi)

    def to_json(self) -> dict[str, Any]:
        if self.explicit is not None:
            return {"seeds": list(self.explicit), "chunk_size": self.chunk_size}
        return {"start": self.start, "count": self.count, "chunk_size": self.chunk_size}

    @classmethod
    def from_json(cls, record: Mapping[str, Any]) -> SeedPlan:
        if "seeds" in record:
            return cls(chunk_size=record["chunk_size"], count=len(record["seeds"]), explicit=tuple(record["seeds"]))
        return cls(chunk_size=record["chunk_size"], start=record["start"], count=record["count"])

    def describe(self) -> str:
        where = (
            f"seeds {self.start}..{self.start + self.count - 1}"
            if self.explicit is None
            else f"an explicit list of {self.count} seeds"
        )
        return f"{where} in {self.n_chunks} chunks of {self.chunk_size}"


def _check_seeds(seeds: Iterable[int], n_seeds: int | None) -> list[int]:
    seed_list = list(seeds)
    if not seed_list:
        raise ConfigError("seeds must not be empty: give a list of ints, or n_seeds=N")
    if not all(isinstance(s, numbers.Integral) and not isinstance(s, bool) for s in seed_list):
        raise ConfigError("seeds must be a list of ints")
    seed_list = [int(s) for s in seed_list]
    if len(set(seed_list)) != len(seed_list):
        raise ConfigError("seeds must not repeat: a repeated seed would count twice in the mean")
    if n_seeds is not None and n_seeds != len(seed_list):
        raise ConfigError(f"n_seeds={n_seeds} contradicts the {len(seed_list)} seeds given")
    return seed_list


def _describe_seeds(seeds: Sequence[int]) -> dict[str, Any]:
    """What a chunk file records of its seeds: a range, or the list itself."""
    if isinstance(seeds, range) and seeds.step == 1:
        return {"start": seeds.start, "stop": seeds.stop}
    return {"seeds": list(seeds)}


@dataclass(frozen=True)
class _Moments(_Record):
    """Count, mean, M2 (sum of squared deviations), min and max of some losses."""

    count: int
    mean: float
    m2: float
    min: float
    max: float

    @classmethod
    def of(cls, values: Sequence[float]) -> _Moments:
        """Two passes with ``math.fsum``: exact mean, stable M2 (a list, not a generator: half the time)."""
        mean = math.fsum(values) / len(values)
        m2 = math.fsum([(v - mean) * (v - mean) for v in values])
        return cls(len(values), mean, m2, min(values), max(values))

    @classmethod
    def pool(cls, parts: Sequence[_Moments]) -> _Moments:
        """Chan et al.'s pooled mean and M2 of several groups: the same as over all values."""
        if len(parts) == 1:
            return parts[0]
        count = sum(p.count for p in parts)
        mean = math.fsum(p.count * p.mean for p in parts) / count
        m2 = math.fsum(p.m2 + p.count * (p.mean - mean) ** 2 for p in parts)
        return cls(count, mean, m2, min(p.min for p in parts), max(p.max for p in parts))

    @property
    def std(self) -> float:
        return math.sqrt(self.m2 / (self.count - 1)) if self.count > 1 else 0.0

    @property
    def standard_error(self) -> float:
        """std / sqrt(count): how far the mean may be from the loss's expectation over all seeds."""
        return self.std / math.sqrt(self.count)


@dataclass(frozen=True)
class ChunkStats:
    """The statistics of a chunk's losses and of each component of dict losses."""

    loss: _Moments
    components: dict[str, _Moments]

    @classmethod
    def pool(cls, parts: Sequence[ChunkStats]) -> ChunkStats:
        names = sorted({name for p in parts for name in p.components})
        return cls(
            _Moments.pool([p.loss for p in parts]),
            {n: _Moments.pool([p.components[n] for p in parts if n in p.components]) for n in names},
        )

    def to_json(self) -> dict[str, Any]:
        # vars, not asdict's deep copy: every chunk record is encoded through here
        return {**vars(self.loss), "components": {n: {**vars(m)} for n, m in self.components.items()}}

    @classmethod
    def from_json(cls, record: Mapping[str, Any]) -> ChunkStats:
        return cls(
            _Moments(record["count"], record["mean"], record["m2"], record["min"], record["max"]),
            {n: _Moments.from_json(m) for n, m in record.get("components", {}).items()},
        )


class _BadLossValue(Exception):
    pass


class _SeedError(Exception):
    """A seed's loss failed; carries (seed, kind, message, traceback text) across processes."""


def _real(value: Any) -> float | None:
    """``value`` as a float if it is one real number, else None.

    Python and numpy numbers; and, without importing numpy or torch, what array libraries
    give for one number (a 0-d or one-element numpy array, a torch or jax scalar: their
    ``.item()``) and any other object with ``__float__``. Never a bool or a complex number;
    an array of several numbers is not one number (its ``.item()`` raises).
    """
    if isinstance(value, numbers.Real):
        return None if isinstance(value, bool) else float(value)
    if isinstance(value, numbers.Complex):
        return None  # numpy's complex __float__ would drop the imaginary part
    item = getattr(value, "item", None)
    try:
        if callable(item):
            value = item()
            return float(value) if isinstance(value, numbers.Real) and not isinstance(value, bool) else None
        if hasattr(type(value), "__float__"):
            return float(value)
    except Exception:
        pass
    return None


def _numeric_items(mapping: Mapping[Any, Any]) -> dict[str, float]:
    return {str(k): number for k, v in mapping.items() if (number := _real(v)) is not None}


def _loss_value(value: Any, components: dict[str, list[float]]) -> float:
    """A loss's return value as one finite float; a dict's numeric entries become components.

    The earlier package's ``{"total_loss": x, "components": {...}}`` keeps the nested
    components too; without ``total_loss`` the value is the mean of the top-level numbers
    (or of the nested ones when there are none).
    """
    total = _real(value)
    if total is not None:
        pass  # one number (a float takes a faster path in _evaluate_block)
    elif isinstance(value, Mapping):
        top = _numeric_items(value)
        nested = _numeric_items(value["components"]) if isinstance(value.get("components"), Mapping) else {}
        if not top and not nested:
            raise _BadLossValue(f"returned a dict without numeric values: {value!r:.200}")
        for name, part in (top | nested).items():
            if not math.isfinite(part):
                raise _BadLossValue(f"returned {part} for component {name!r}")
            components.setdefault(name, []).append(part)
        averaged = top or nested
        total = top["total_loss"] if "total_loss" in top else math.fsum(averaged.values()) / len(averaged)
    elif isinstance(value, (list, tuple)) and value and None not in (items := [_real(v) for v in value]):
        total = math.fsum(items) / len(items)
    else:
        raise _BadLossValue(f"returned {type(value).__name__} {value!r:.200}, not a number, dict or list of numbers")
    if not math.isfinite(total):
        raise _BadLossValue(f"returned {total}")
    return total


_BLOCK_SEEDS = 1 << 16  # seeds whose losses are held in memory at once, then folded into moments


def _evaluate_seeds(
    definition: LossDefinition, params: dict[str, ParamValue], seeds: Sequence[int], context: dict[str, Any]
) -> ChunkStats:
    """Evaluate in blocks, so a chunk of millions of seeds needs the memory of one block."""
    function = call = definition.seed_loss_fn
    if definition.context_by_keyword:
        call = partial(function, context=context)
    elif definition.takes_context:
        call = lambda p, s: function(p, s, context)  # noqa: E731
    return ChunkStats.pool(
        [_evaluate_block(call, params, seeds[lo : lo + _BLOCK_SEEDS]) for lo in range(0, len(seeds), _BLOCK_SEEDS)]
    )


def _evaluate_block(call: Callable[..., Any], params: dict[str, ParamValue], seeds: Sequence[int]) -> ChunkStats:
    """The hot loop: one call per seed, plain floats appended, statistics at the end."""
    totals: list[float] = []
    components: dict[str, list[float]] = {}
    append = totals.append
    seed = None
    try:
        for seed in seeds:
            value = call(params, seed)
            if type(value) is float and value - value == 0.0:  # finite float: the fast path
                append(value)
            else:
                append(_loss_value(value, components))
    except _BadLossValue as exc:
        raise _SeedError(seed, "bad_value", str(exc), "") from None
    except Exception as exc:
        import traceback

        raise _SeedError(seed, "raised", f"{type(exc).__name__}: {exc}", traceback.format_exc()) from None
    return ChunkStats(_Moments.of(totals), {n: _Moments.of(v) for n, v in components.items()})


def _split_evenly(n_items: int, n_parts: int) -> list[tuple[int, int]]:
    """``n_parts`` contiguous (lo, hi) slices whose sizes differ by at most one."""
    n_parts = max(1, min(n_parts, n_items))
    bounds = [n_items * i // n_parts for i in range(n_parts + 1)]
    return list(itertools.pairwise(bounds))


def _die_with_parent(parent_pid: int) -> None:
    """Ask Linux to kill this process when its parent dies (PR_SET_PDEATHSIG).

    Local workers and the pool processes of every worker belong to whoever started them: a
    killed controller leaves no orphan computing chunks that a resumed one computes again.
    """
    if not sys.platform.startswith("linux"):
        return
    import ctypes

    ctypes.CDLL(None).prctl(1, signal.SIGKILL)  # 1 = PR_SET_PDEATHSIG
    if os.getppid() != parent_pid:  # the parent died before we asked
        os._exit(1)


def _describe_exit(code: int) -> str:
    """A process's return code (negative: killed by that signal) in words."""
    if code < 0:
        try:
            return f"killed by signal {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exit code {code}"


def _describe_seed_range(seeds: Sequence[int]) -> str:
    if not seeds:
        return "no seeds"
    if isinstance(seeds, range):
        return f"seeds {seeds.start}..{seeds.stop - 1}"
    return f"seeds {_format_ranges(seeds)}"


def _leave_forked_child(body: Callable[[], None]) -> NoReturn:
    """Run a forked child's ``body``, flush its output, and leave with ``os._exit``.

    ``os._exit``: the child must not run the parent's cleanup (atexit, finalizers, buffers).
    """
    code = 1
    try:
        body()
        code = 0
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else 1
    except BaseException:
        import traceback

        traceback.print_exc()
    finally:
        with contextlib.suppress(BaseException):
            sys.stdout.flush()
            sys.stderr.flush()
        os._exit(code)


def _evaluate_slices_in_children(
    definition: LossDefinition,
    params: dict[str, ParamValue],
    seeds: Sequence[int],
    context: dict[str, Any],
    slices: list[tuple[int, int]],
) -> list[ChunkStats]:
    """Fork one child per slice; each sends back its statistics as one JSON text.

    Not multiprocessing's pool: its processes are daemonic, and a daemonic process may not
    start processes, so a loss that uses a ``multiprocessing.Pool`` or joblib would fail.
    """
    parent = os.getpid()
    children = []
    sys.stdout.flush()
    sys.stderr.flush()
    for lo, hi in slices:
        read_fd, write_fd = os.pipe()
        pid = os.fork()
        if pid == 0:
            os.close(read_fd)
            evaluate = partial(_evaluate_seeds, definition, params, seeds[lo:hi], context)
            _leave_forked_child(partial(_send_stats, write_fd, parent, evaluate))
        os.close(write_fd)
        children.append((pid, read_fd, seeds[lo:hi]))
    parts: list[ChunkStats] = []
    errors: list[list[Any]] = []
    for pid, read_fd, part in children:
        with os.fdopen(read_fd, "rb") as handle:
            record = json.loads(handle.read() or b"null")
        code = os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])
        if record is None:
            died = f"the process evaluating {_describe_seed_range(part)} died ({_describe_exit(code)})"
            errors.append([part[0], "crashed", died, ""])
        elif "error" in record:
            errors.append(record["error"])
        else:
            parts.append(ChunkStats.from_json(record["stats"]))
    if errors:
        raise _SeedError(*errors[0])
    return parts


def _send_stats(write_fd: int, parent: int, evaluate: Callable[[], ChunkStats]) -> None:
    """A forked child's work: evaluate its slice, write the statistics (or the failing seed) to the pipe."""
    _die_with_parent(parent)
    try:
        record = {"stats": evaluate().to_json()}
    except _SeedError as exc:
        record = {"error": list(exc.args)}
    with os.fdopen(write_fd, "wb") as out:
        out.write(json.dumps(record).encode())


def run_chunk(
    definition: LossDefinition,
    params: dict[str, ParamValue],
    seeds: Sequence[int],
    context: dict[str, Any],
    processes: int = 1,
    use_processes: bool = True,
) -> ChunkStats:
    """Evaluate ``seeds`` in ``processes`` contiguous slices, one per process (or thread).

    One message per slice, never per seed. Raises ``_SeedError`` for the first failing seed.
    """
    slices = _split_evenly(len(seeds), processes)
    if len(slices) == 1:
        return _evaluate_seeds(definition, params, seeds, context)
    if use_processes:
        parts = _evaluate_slices_in_children(definition, params, seeds, context, slices)
    else:
        from concurrent.futures import ThreadPoolExecutor

        with ThreadPoolExecutor(max_workers=len(slices)) as pool:
            parts = list(pool.map(lambda b: _evaluate_seeds(definition, params, seeds[b[0] : b[1]], context), slices))
    return ChunkStats.pool(parts)


# ---------------------------------------------------------------- a chunk task, as a worker runs it


def _valid_chunk(record: Any, expected: TrialParams, where: Path | str) -> ChunkResult | None:
    """The record, if it was computed for these params, these seeds and this loss code; else None."""
    try:
        chunk = ChunkResult.from_json(record)
    except (TypeError, KeyError) as exc:
        logger.warning("ignoring a malformed chunk record in %s: %s", where, exc)
        return None
    index = chunk.chunk_index
    if (
        not 0 <= index < expected.plan.n_chunks
        or chunk.params != expected.params
        or chunk.seeds != _describe_seeds(expected.plan.chunk(index))
        or chunk.code_id != expected.code_id
    ):
        logger.warning("ignoring chunk %d in %s: computed for other params, seeds or loss code", index, where)
        return None
    return chunk


def _read_records(path: Path, offset: int = 0) -> tuple[list[Any], int]:
    """The whole JSON lines of a record file from byte ``offset``, and the offset after the last of them.

    Records are appended whole; a line that a crash cut (no newline, or not JSON) is no
    record, and its chunk is computed again.
    """
    try:
        with open(path, "rb") as handle:
            handle.seek(offset)
            data = handle.read()
    except FileNotFoundError:
        return [], offset
    end = data.rfind(b"\n") + 1
    lines = data[:end].splitlines()
    with contextlib.suppress(ValueError):  # one parse for all (10,000 lines of trials.jsonl); else line by line
        return json.loads(b"[" + b",".join(lines) + b"]"), offset + end
    records = []
    for line in lines:
        try:
            records.append(json.loads(line))
        except ValueError:
            logger.warning("ignoring a cut record in %s; its chunk will be recomputed", path)
    return records, offset + end


def _load_valid_chunk(trial: TrialPaths, expected: TrialParams, index: int) -> ChunkResult | None:
    """Chunk ``index``'s result, as a Slurm chunk task looks for it: its own file, else the merged records."""
    record = _read_json(trial.chunk(index))
    if record is not None:
        return _valid_chunk(record, expected, trial.chunk(index))
    merged, _ = _read_records(trial.merged_chunks)
    found = [c for r in merged if (c := _valid_chunk(r, expected, trial.merged_chunks)) and c.chunk_index == index]
    return found[0] if found else None


_CHUNK_FILE_NAME = re.compile(r"chunk_(\d+)\.json")  # TrialPaths.chunk's names


@dataclass(eq=False)
class _ChunkFiles:
    """The one reader of a trial's chunk records, incremental: what was read is not read again.

    A trial's records are in ``chunks.jsonl`` once it finished (merged), and while it runs in
    ``chunks/chunk_XXXXX.json`` (a Slurm task each) and ``chunks/worker_PID.jsonl`` (a pool
    worker each, appended). The controller, the reduce job, status and report read them here.
    """

    chunks: dict[int, ChunkResult] = field(default_factory=dict)
    file_times: dict[int, int] = field(default_factory=dict)  # per chunk: when it ended (ns since the epoch)
    read: dict[str, int] = field(default_factory=dict)  # per file: its mtime (whole files) or bytes read (records)

    def add(self, chunk: ChunkResult | None, ended_ns: int) -> bool:
        if chunk is None or chunk.chunk_index in self.chunks:
            return False
        self.chunks[chunk.chunk_index] = chunk
        self.file_times[chunk.chunk_index] = int(chunk.finished_at * 1e9) or ended_ns
        return True


def _read_new_chunks(trial: TrialPaths, expected: TrialParams, files: _ChunkFiles) -> bool:
    """Read the trial's chunk records written since the last look (validated, as everywhere); True if any.

    Looked at every poll for every trial in flight: a file already read costs its name only.
    """
    news = _read_appended(trial.merged_chunks, expected, files)
    with contextlib.suppress(FileNotFoundError), os.scandir(trial.chunks_dir) as entries:
        for entry in entries:
            name = entry.name
            if name.endswith(".jsonl"):  # appended records (pool workers)
                news |= _read_appended(Path(entry.path), expected, files)
                continue
            found = _CHUNK_FILE_NAME.fullmatch(name)
            if not found or int(found.group(1)) in files.chunks:
                continue  # a valid chunk is never rewritten: only missing chunks are run again
            with contextlib.suppress(FileNotFoundError):
                mtime = os.stat(entry.path).st_mtime_ns
                if files.read.get(name) != mtime:  # an invalid file is read again only once rewritten
                    files.read[name] = mtime
                    record = _read_json(entry.path)  # a str: pathlib's parsing costs as much as the reading
                    news |= record is not None and files.add(_valid_chunk(record, expected, entry.path), mtime)
    return news


def _read_appended(path: Path, expected: TrialParams, files: _ChunkFiles) -> bool:
    """The records appended to a ``.jsonl`` file of chunk records since the last look (or the merged ones)."""
    news = False
    records, files.read[path.name] = _read_records(path, files.read.get(path.name, 0))
    for record in records:
        news |= files.add(_valid_chunk(record, expected, path), 0)
    return news


def _read_valid_chunks(trial: TrialPaths, expected: TrialParams) -> dict[int, ChunkResult]:
    """Every valid chunk record of the trial, by index."""
    files = _ChunkFiles()
    _read_new_chunks(trial, expected, files)
    return files.chunks


def missing_chunks(trial: TrialPaths, expected: TrialParams) -> list[int]:
    """Chunks without a trustworthy file."""
    valid = _read_valid_chunks(trial, expected)
    return [i for i in range(expected.plan.n_chunks) if i not in valid]


def _import_loss(settings: _RunSettings, code_id: str | None = None) -> LossDefinition:
    """Import the loss's module the way the launcher recorded, then find the loss by name.

    With ``code_id``, the loss must be the code the run was started with (see ``_code_id``).
    """
    ref = settings.loss_ref
    for entry in reversed(ref["sys_path"]):
        if entry not in sys.path:
            sys.path.insert(0, entry)
    where = ref["module"] or ref["file"]
    saved, sys.argv = sys.argv, list(settings.argv)  # the launcher's, for the import only
    try:
        if ref["module"]:
            importlib.import_module(ref["module"])
        else:
            _import_file(ref["file"])
    except BaseException as exc:
        import traceback

        raise LossError(f"importing {where} failed: {type(exc).__name__}: {exc}\n{traceback.format_exc()}") from None
    finally:
        sys.argv = saved
    definition = _LOSSES.get(settings.loss_name)
    if definition is None:
        found = ", ".join(sorted(_LOSSES)) or "none"
        raise LossError(
            f"loss {settings.loss_name!r} is not registered after importing {where} (found: {found}). "
            "Workers import the module under a name other than __main__, so an @loss registered only "
            'inside `if __name__ == "__main__":` is never seen: move it to module level'
        )
    if code_id is not None and _code_id(definition) != code_id:
        raise LossError(
            f"loss {settings.loss_name!r} in {where} is not the code this run was started with (edited since?): "
            "restore it to finish the run, or resume with resume_with_changed_loss=True to recompute with the new code"
        )
    return definition


def _import_file(path: str) -> None:
    name = _FILE_MODULE_PREFIX + re.sub(r"\W", "_", Path(path).stem)
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise ImportError(f"cannot import {path}")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)


def run_chunk_task(run_dir: Path, trial_number: int, chunk_index: int, log: Path | None = None) -> int:
    """What ``python -m slurptuna worker chunk`` does; returns the process exit code.

    ``log``: where this task's stderr goes (Slurm's ``--error``), named in a failure's record.
    """
    run = RunPaths(Path(run_dir))
    settings = _RunSettings.from_json(_read_json(run.meta))
    trial = run.trial(trial_number)
    expected = TrialParams.load(trial)
    if _load_valid_chunk(trial, expected, chunk_index) is not None:
        print(f"chunk {chunk_index} of trial {trial_number} is already computed", file=sys.stderr)
        return 0
    seeds = expected.plan.chunk(chunk_index)
    failure = partial(
        ChunkFailure, trial_number, chunk_index, settings.loss_name, params=expected.params, log=str(log or "")
    )
    try:
        definition = _import_loss(settings, expected.code_id)
    except LossError as exc:
        return _record_failure(trial, failure("import", str(exc)), exit_code=2)
    context = expected.loss_context(chunk_index, run.dir)
    started = time.perf_counter()
    try:
        stats = run_chunk(
            definition, expected.params, seeds, context, settings.worker_parallelism, settings.use_processes
        )
    except _SeedError as exc:
        seed, kind, message, trace = exc.args
        return _record_failure(trial, failure(kind, message, seed=seed, traceback=trace), exit_code=1)
    processes = min(settings.worker_parallelism, len(seeds))
    _write_chunk_result(trial, ChunkResult.of(expected, chunk_index, stats, time.perf_counter() - started, processes))
    return 0


def _write_chunk_result(trial: TrialPaths, result: ChunkResult) -> None:
    """A chunk file, on one line. (The controller clears an earlier attempt's error file when it submits.)"""
    _write_json_atomic(trial.chunk(result.chunk_index), result.to_json(), indent=None)


def _write_chunk_failure(trial: TrialPaths, failure: ChunkFailure) -> None:
    _write_json_atomic(trial.chunk_error(failure.chunk_index), failure.to_json())


def _record_failure(trial: TrialPaths, failure: ChunkFailure, exit_code: int) -> int:
    _write_chunk_failure(trial, failure)
    print(failure.describe(), file=sys.stderr)
    return exit_code


# ---------------------------------------------------------------- a single-mode pool worker

_INSIDE_WORKER = False  # True in worker processes: a run started there (a script without a main guard) would nest


def _refuse_inside_worker(what: str) -> None:
    if _INSIDE_WORKER:
        raise ConfigError(
            f"{what} was called while a slurptuna worker imported the loss's module: the script starts a run "
            "when it is imported, so every worker would start a run of its own. Put the call under "
            '`if __name__ == "__main__":` (keep the @loss function at module level)'
        )


def serve_pool(
    settings: _RunSettings, commands: IO[bytes], results: IO[bytes], definition: LossDefinition | None = None
) -> None:
    """A single-mode pool worker: import the loss once, then evaluate work until the controller goes.

    Each command is one JSON line ``{"run_dir", "trial", "units": [[chunk, part, n_parts], ...]}``,
    a few ms of work (a unit is a chunk, or slice ``part`` of ``n_parts`` of it). Each unit is
    answered by one line as soon as it ends, so that when this process dies the controller
    knows which unit killed it: a whole chunk by its record, the very line appended to this
    worker's record file of the trial (``_RecordFile``: one open file, not a file per chunk);
    a part by its statistics (and a chunk whose record could not be written: the controller
    writes it); a failure by its ``ChunkFailure``. A reader thread takes the
    commands, so that the end of the pipe (the controller exited or died) ends this process
    even while a loss runs.
    """
    import queue

    inbox: queue.SimpleQueue[bytes] = queue.SimpleQueue()

    def read_commands() -> None:
        for line in commands:
            inbox.put(line)
        os._exit(0)

    def answer(line: bytes) -> None:
        results.write(line)
        results.flush()

    threading.Thread(target=read_commands, name="slurptuna-commands", daemon=True).start()
    try:
        definition = definition or _import_loss(settings, settings.code_id)
    except LossError as exc:
        answer(_json_line({"import_error": str(exc)}))
        return
    answer(_json_line({"ready": os.getpid()}))
    processes = 1 if settings.use_processes else settings.worker_parallelism  # threads: one process, p threads

    @functools.lru_cache(maxsize=64)
    def trial(run_dir: str, number: int) -> tuple[TrialPaths, TrialParams]:
        paths = RunPaths(Path(run_dir)).trial(number)
        return paths, TrialParams.load(paths)

    while True:
        command = json.loads(inbox.get())
        paths, expected = trial(command["run_dir"], command["trial"])
        records = _RecordFile(paths.worker_records(os.getpid()))  # per command: a trial merged meanwhile may race
        for unit in command["units"]:
            answer(_evaluate_unit(definition, paths, expected, records, unit, processes, settings.use_processes))
        records.close()


def _evaluate_unit(
    definition: LossDefinition,
    trial: TrialPaths,
    expected: TrialParams,
    records: _RecordFile,
    unit: tuple[int, int, int],
    processes: int,
    use_processes: bool,
) -> bytes:
    """One unit of pool work -> its answer: a whole chunk's record (appended to ``records``), or the statistics
    of a part (or of a chunk whose record cannot be written: the controller writes it), or the failing seed."""
    chunk, part, n_parts = unit
    seeds = _part_seeds(expected.plan, chunk, part, n_parts)
    started = time.perf_counter()
    try:
        stats = run_chunk(
            definition, expected.params, seeds, expected.loss_context(chunk, trial.run_dir), processes, use_processes
        )
    except _SeedError as exc:
        seed, kind, message, trace = exc.args
        failure = ChunkFailure(
            expected.trial_number, chunk, definition.name, kind, message, seed, expected.params, trace
        )
        print(failure.describe(), file=sys.stderr, flush=True)  # the worker's log tells it too
        return _json_line({"failure": failure.to_json()})
    seconds = time.perf_counter() - started
    if n_parts == 1:
        line = _json_line(ChunkResult.of(expected, chunk, stats, seconds, processes).to_json())
        if _append_or_leave_to_controller(records, line):
            return line
    return _json_line({"part": stats.to_json(), "seconds": seconds})


def _part_seeds(plan: SeedPlan, chunk: int, part: int, n_parts: int) -> Sequence[int]:
    """The seeds of part ``part`` of ``n_parts`` of a chunk (the whole chunk when ``n_parts`` is 1)."""
    seeds = plan.chunk(chunk)
    if n_parts == 1:
        return seeds
    lo, hi = _split_evenly(len(seeds), n_parts)[part]
    return seeds[lo:hi]


def _json_line(record: Mapping[str, Any] | list[Any]) -> bytes:
    return (json.dumps(record) + "\n").encode()


class _RecordFile:
    """An append-only file of JSON lines, kept open: a pool worker's chunk records of one trial.

    Each record is one ``write`` with O_APPEND, so a crash leaves whole records and at most
    one cut last line, which readers skip (its chunk is computed again).
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self._fd: int | None = None

    def append(self, record: Mapping[str, Any]) -> None:
        self.write(_json_line(record))

    def write(self, line: bytes) -> None:
        if self._fd is None:
            flags = os.O_WRONLY | os.O_APPEND | os.O_CREAT | getattr(os, "O_CLOEXEC", 0)
            try:
                self._fd = os.open(self.path, flags, 0o666)
            except FileNotFoundError:
                os.makedirs(self.path.parent, exist_ok=True)
                self._fd = os.open(self.path, flags, 0o666)
        view = memoryview(line)
        while view:
            view = view[os.write(self._fd, view) :]

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


def _append_or_leave_to_controller(records: _RecordFile, line: bytes) -> bool:
    """Append the chunk's record; if the disk is full (over quota, read-only), say so and leave it to the controller.

    The controller then writes it as it writes a split chunk's: if it cannot either, the run
    stops (``RunDirError``), and this chunk is not counted as the loss's failure.
    """
    try:
        records.write(line)
        return True
    except OSError as exc:
        if exc.errno not in _UNWRITABLE:
            raise
        with contextlib.suppress(OSError):  # the log may be on the same full disk
            print(f"slurptuna: cannot write {records.path}: {exc.strerror}; sent to the controller", file=sys.stderr)
        return False


# ============================================================================
# Reduce: chunk statistics -> the trial's summary.json, exactly
# ============================================================================


class _MissingChunks(SlurptunaError):
    pass


def reduce_trial(
    run: RunPaths,
    trial_number: int,
    allow_missing: bool = False,
    known: Mapping[int, ChunkResult] | None = None,
    ran: Collection[int] | None = None,
) -> TrialSummary:
    """Pool every chunk of a trial into ``summary.json``; refuse if one is missing or stale.

    ``known`` holds chunk results the caller just computed for this trial (single mode keeps
    them in memory); every other chunk is read from its file and checked. ``ran``: the chunks
    the trial ran when its standard error needed fewer than the plan's (None: all of them);
    the others are counted as ``chunks_skipped``, not as missing.
    """
    trial = run.trial(trial_number)
    expected = TrialParams.load(trial)
    known = known or {}
    n_chunks = expected.plan.n_chunks
    if len(known) < n_chunks:
        known = {**_read_valid_chunks(trial, expected), **known}
    needed = range(n_chunks) if ran is None else sorted(ran)
    missing = [i for i in needed if i not in known]
    present = [known[i] for i in needed if i in known]
    if (missing and not allow_missing) or not present:
        raise _MissingChunks(f"trial {trial_number}: chunks {_format_ranges(missing)} have no valid result")
    stats = ChunkStats.pool([c.stats for c in present])
    summary = TrialSummary(
        trial_number=trial_number,
        params=expected.params,
        seeds=expected.seeds,
        n_seeds=stats.loss.count,
        n_chunks=len(present),
        mean=stats.loss.mean,
        std=stats.loss.std,
        min=stats.loss.min,
        max=stats.loss.max,
        components={n: m.mean for n, m in stats.components.items()},
        chunk_seconds=round(math.fsum(c.elapsed_seconds for c in present), 6),
        missing_chunks=missing,
        code_id=expected.code_id,
        standard_error=stats.loss.standard_error,
        component_standard_errors={n: m.standard_error for n, m in stats.components.items()},
        chunks_skipped=n_chunks - len(needed),
    )
    _write_json_atomic(trial.summary, summary.to_json())
    return summary


def load_valid_summary(trial: TrialPaths, expected: TrialParams) -> TrialSummary | None:
    """The trial's summary, if it was reduced from these params and seeds; else None."""
    record = _read_json(trial.summary)
    if record is None:
        return None
    try:
        summary = TrialSummary.from_json(record)
    except TypeError:
        return None
    if summary.params != expected.params or summary.seeds != expected.seeds or summary.code_id != expected.code_id:
        logger.warning("ignoring %s: reduced for other params, seeds or loss code", trial.summary)
        return None
    return summary


def _format_ranges(numbers_: Iterable[int]) -> str:
    """``[0, 1, 2, 5, 7, 8]`` -> ``"0-2,5,7-8"``: Slurm's array syntax, also used in messages."""
    runs: list[list[int]] = []
    for n in sorted(numbers_):
        if runs and n == runs[-1][1] + 1:
            runs[-1][1] = n
        else:
            runs.append([n, n])
    return ",".join(str(a) if a == b else f"{a}-{b}" for a, b in runs)


# ============================================================================
# Executors: they run chunk tasks, on Slurm or in a local pool, one interface
# ============================================================================
#
# The controller owns the trial (what to run, when it is complete, what Optuna is told);
# an executor only runs chunk tasks. Success is never taken from the scheduler, only from
# results: chunk files, or results an executor holds in memory.


class Executor(Protocol):
    """What the controller asks of Slurm or of the local pool: run chunk tasks, nothing else.

    The contract, as Optuna's ``BaseStorage`` states its own:

    * ``start(trial, expected, chunks, attempt)`` queues these chunks of the trial (never a
      chunk already queued). The executor may hold some back (a site's submit limit) and
      start them later by itself; held chunks count as running.
    * A chunk task writes ``chunk_XXXXX.json`` or its error file (``ChunkFailure``), as
      ``run_chunk_task`` and ``serve_pool`` do. ``results(trial)`` returns the valid chunk
      results the executor knows of (in memory, or read from new files).
    * ``poll()`` looks once at what runs (at most one scheduler call); False when the
      scheduler did not answer: the queries keep their last answer and the controller waits.
    * ``running(trial)`` is a query: some chunk of the trial is queued, running or held back.
    * ``cancel(trials)`` stops every queued or running chunk task of these trials, in one call;
      it returns how many jobs (Slurm) or chunks (the pool) it stopped.
    * ``finished(trial)``: the controller is done with the trial; the executor forgets it.
    * ``explain(trial, chunks)``: how the tasks of these chunks ended, with their logs' tails.
    * ``has_room()``: a new trial may start (False while a limit holds work back).
    * ``adopt(trials)``: on resume, the chunks that a crashed controller left queued, per trial.
    * ``wait(seconds)``: let time pass (the pool works meanwhile); returns early on news or stop.
    * ``close()``: the controller is leaving: stop local processes (Slurm jobs stay, to be adopted).

    A new executor is one class with this interface and one row in ``_EXECUTORS``.
    """

    first_poll_seconds: float  # the pause after something changed; it grows to max_poll_seconds
    max_poll_seconds: float

    def start(self, trial: TrialPaths, expected: TrialParams, chunks: Sequence[int], attempt: int) -> None: ...
    def poll(self) -> bool: ...
    def running(self, trial: TrialPaths) -> bool: ...
    def results(self, trial: TrialPaths) -> Mapping[int, ChunkResult]: ...
    def cancel(self, trials: Iterable[TrialPaths]) -> int: ...
    def finished(self, trial: TrialPaths) -> None: ...
    def explain(self, trial: TrialPaths, chunks: Sequence[int]) -> str: ...
    def has_room(self) -> bool: ...
    def adopt(self, trials: Sequence[TrialPaths]) -> dict[int, frozenset[int]]: ...
    def wait(self, seconds: float) -> None: ...
    def close(self) -> None: ...


class _ChunkState(Enum):
    """How a chunk task stands or ended, in the words Slurm's accounting uses."""

    PENDING = "PENDING"
    RUNNING = "RUNNING"
    COMPLETED = "COMPLETED"
    FAILED = "FAILED"
    TIMEOUT = "TIMEOUT"
    CANCELLED = "CANCELLED"


_ACTIVE_STATES = frozenset(
    {"PENDING", "CONFIGURING", "REQUEUED", "REQUEUE_HOLD", "REQUEUE_FED", "RESV_DEL_HOLD", "SUSPENDED", "STOPPED"}
    | {"RUNNING", "COMPLETING", "RESIZING", "SIGNALING", "STAGE_OUT"}
)


def _worker_command(settings: _RunSettings, kind: str, run: RunPaths, *extra: str) -> list[str]:
    return [settings.python, "-m", "slurptuna", "worker", kind, str(run.dir), *extra]


def _worker_env(settings: _RunSettings) -> dict[str, str]:
    """The environment of worker processes: they must find this file and the loss's module."""
    here = os.path.dirname(os.path.abspath(__file__))
    paths = [here, *settings.loss_ref["sys_path"], *filter(None, [os.environ.get("PYTHONPATH")])]
    return {**os.environ, "PYTHONPATH": os.pathsep.join(dict.fromkeys(paths))}


def _compile_for_workers(settings: _RunSettings) -> None:
    """Leave the bytecode of this file and of the loss's file in ``__pycache__`` for the workers.

    Python reads a cached ``.pyc`` whose source has not changed since, but writes none with
    PYTHONDONTWRITEBYTECODE set (common in containers), nor for a script run as ``__main__``:
    every worker would compile them again at every start (this file: ~70 ms). A ``.pyc``
    newer than its source is kept; one left by an older copy of the file is replaced.
    """
    import py_compile

    loss = _LOSSES.get(settings.loss_name)
    for source in filter(None, [__file__ if sys.dont_write_bytecode else None, loss and loss.source_file]):
        with contextlib.suppress(OSError, ValueError, py_compile.PyCompileError):
            cached = importlib.util.cache_from_source(source)
            if not os.path.exists(cached) or os.path.getmtime(cached) < os.path.getmtime(source):
                py_compile.compile(source, cfile=cached, doraise=True)


def _tail(path: Path, max_lines: int = 15, max_bytes: int = 4000) -> str:
    """The end of a log file, marked as truncated when it is."""
    try:
        with open(path, "rb") as handle:
            handle.seek(0, os.SEEK_END)
            size = handle.tell()
            handle.seek(max(0, size - max_bytes))
            lines = handle.read().decode(errors="replace").splitlines()
    except OSError:
        return ""
    cut = size > max_bytes or len(lines) > max_lines
    return ("[... truncated ...]\n" if cut else "") + "\n".join(lines[-max_lines:])


def _explain_missing(chunks: Sequence[int], describe: Callable[[int], tuple[str, Path | None]]) -> str:
    """One line per end state of the missing chunks (``describe``: a chunk's state and log), with a log's tail."""
    by_state: dict[str, list[int]] = {}
    first_log: dict[str, Path] = {}
    for chunk in chunks:
        state, log = describe(chunk)
        by_state.setdefault(state, []).append(chunk)
        if log is not None:
            first_log.setdefault(state, log)
    lines = []
    for state, listed in by_state.items():
        log = first_log.get(state)
        lines.append(f"chunks {_format_ranges(listed)}: {state}" + (f" (log {log})" if log else ""))
        tail = _tail(log) if log else ""
        if tail:
            lines.append("    " + tail.replace("\n", "\n    "))
    return "\n".join(lines)


# ---------------------------------------------------------------- Slurm commands and their output


def _slurm_time(seconds: int) -> str:
    """Seconds -> Slurm's ``D-HH:MM:SS``."""
    days, rest = divmod(int(seconds), 86400)
    return f"{days}-{rest // 3600:02d}:{rest % 3600 // 60:02d}:{rest % 60:02d}"


def _parse_job_id(stdout: str) -> str:
    """``sbatch --parsable`` prints ``jobid`` or ``jobid;cluster``."""
    job_id = stdout.strip().splitlines()[-1].split(";")[0].strip() if stdout.strip() else ""
    if not job_id.isdigit():
        raise SlurmError(f"could not read a job id from sbatch's output {stdout!r}")
    return job_id


@dataclass(frozen=True)
class _QueueLine:
    """One line of ``squeue``: some tasks of a job in one state (squeue shows an array's pending tasks as one)."""

    state: str  # PENDING, RUNNING, COMPLETING, ... (%T)
    reason: str  # why it pends (%r): Dependency, JobArrayTaskLimit, ...; "" when not asked for
    task_ids: tuple[int | None, ...]  # the array tasks the line stands for; (None,) for a job that is no array

    @property
    def queued(self) -> bool:
        """Still pending or running (squeue -t all also lists jobs that just ended)."""
        return self.state in _ACTIVE_STATES


def _parse_squeue(stdout: str) -> dict[str, list[_QueueLine]]:
    """``%i|%T`` or ``%i|%T|%r`` lines (``12``, ``12_3``, ``12_[4-9%4]|PENDING|JobArrayTaskLimit``) -> per job."""
    jobs: dict[str, list[_QueueLine]] = {}
    for line in stdout.splitlines():
        fields = [f.strip() for f in line.split("|")]
        if len(fields) < 2:
            continue
        job, _, tasks = fields[0].partition("_")
        state = fields[1].split()[0] if fields[1] else ""
        reason = fields[2] if len(fields) > 2 else ""
        jobs.setdefault(job, []).append(_QueueLine(state, reason, _array_task_ids(tasks)))
    return jobs


def _array_task_ids(tasks: str) -> tuple[int | None, ...]:
    """``""`` -> (None,); ``"3"`` -> (3,); ``"[4-6,12%4]"`` -> (4, 5, 6, 12) (squeue collapses pending tasks)."""
    spec = tasks.strip("[]").split("%")[0]
    if not spec:
        return (None,)
    ids: list[int | None] = []
    for part in spec.split(","):
        bounds, _, step = part.partition(":")
        low, _, high = bounds.partition("-")
        with contextlib.suppress(ValueError):
            ids += range(int(low), int(high or low) + 1, int(step or 1))
    return tuple(ids) or (None,)


def _parse_active_tasks(stdout: str) -> dict[str, set[int | None]]:
    """``squeue -o %i|%T`` -> job id -> its tasks still queued or running (None for a job that is no array)."""
    jobs = _parse_squeue(stdout)
    active = {job: {t for line in lines if line.queued for t in line.task_ids} for job, lines in jobs.items()}
    return {job: tasks for job, tasks in active.items() if tasks}


def _parse_sacct(stdout: str) -> dict[tuple[str, int | None], str]:
    """``sacct -X -n -P -o jobid,state`` lines -> (job id, array task or None) -> state (read as squeue's are)."""
    return {
        (job, t): line.state for job, lines in _parse_squeue(stdout).items() for line in lines for t in line.task_ids
    }


class SlurmFailure(Enum):
    """What a failed Slurm command's answer means for the run, read from Slurm's own texts."""

    BAD_QOS = "bad QoS"  # no such QoS, or not the user's: go on without --qos
    LIMIT = "limit"  # a submit limit or a full job table: keep the QoS, wait for room
    TRANSIENT = "transient"  # slurmctld busy, restarting or unreachable, or the command timed out: retry
    OTHER = "other"  # anything else: stop


class SlurmBusy(SlurmError):
    """A limit refused the job for now: waiting for room and asking again can succeed."""

    kind = SlurmFailure.LIMIT


_TIMED_OUT = 124  # `_run_slurm`'s exit code for a command it had to kill, as timeout(1) gives
# The texts below are those of Slurm 22.05, recorded in tests/slurm_texts/. Slurm answers an
# unknown QoS and one the user may not use alike. A refused submission prints the limit's
# name on the line before "Job violates accounting/QOS policy (job submit limit, user's size
# and/or time limits)": a submit limit (...Submit...Limit) frees up as jobs leave the queue,
# while a size or time limit (QOSMaxWallDurationPerJobLimit with DenyOnLimit) never does.
# A full job table (MaxJobCount) makes sbatch retry for ~2 minutes, then fail with EAGAIN.
_BAD_QOS_TEXT = "Invalid qos specification"
_LIMIT_NAME = re.compile(r"^(?:\w+: error: )?(\w+Limit)\s*$", re.MULTILINE)
_POLICY_TEXT = "Job violates accounting/QOS policy (job submit limit"
_FULL_TEXTS = ("Slurm temporarily unable to accept job", "Slurm job queue full")
_TRANSIENT_TEXTS = (
    "Socket timed out on send/recv operation",
    "Unable to contact slurm controller",
    "Connection refused",
    "Resource temporarily unavailable",
)


def classify_slurm_failure(returncode: int, stderr: str) -> SlurmFailure:
    """Bad QoS, limit, transient or other: what sbatch/squeue/scancel/sacct's answer means."""
    if _BAD_QOS_TEXT in stderr:
        return SlurmFailure.BAD_QOS
    limits = _LIMIT_NAME.findall(stderr)
    if any("Submit" in name for name in limits) or any(text in stderr for text in _FULL_TEXTS):
        return SlurmFailure.LIMIT
    if _POLICY_TEXT in stderr and not limits:
        return SlurmFailure.LIMIT  # which limit is not said: assume the one that frees up
    if returncode == _TIMED_OUT or any(text in stderr for text in _TRANSIENT_TEXTS):
        return SlurmFailure.TRANSIENT
    return SlurmFailure.OTHER


def _run_slurm(
    argv: Sequence[str], env: Mapping[str, str] | None = None, timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    """Run a Slurm command (an argument list, never a shell string) and capture its output.

    The command runs in its own process group: a terminal's Ctrl-C goes to the controller,
    which decides what to cancel, and not to an sbatch halfway through a submission.
    """
    import subprocess

    try:
        return subprocess.run(
            list(argv), capture_output=True, text=True, env=env, timeout=timeout, check=False, start_new_session=True
        )
    except FileNotFoundError:
        raise SlurmError(f"{argv[0]} is not on PATH: distributed mode needs the Slurm commands") from None
    except subprocess.TimeoutExpired as expired:
        said = expired.stderr.decode(errors="replace") if isinstance(expired.stderr, bytes) else expired.stderr or ""
        return subprocess.CompletedProcess(list(argv), _TIMED_OUT, "", f"{said}{argv[0]} timed out after {timeout} s")


def _command_error(process: subprocess.CompletedProcess[str]) -> SlurmError:
    output = (process.stderr.strip() or process.stdout.strip() or "(no output)")[-2000:]
    return SlurmError(f"{' '.join(process.args)} failed with exit code {process.returncode}: {output}")


_INVALID_JOB_ID = "Invalid job id"  # squeue or scancel of a job id Slurm has already forgotten


@dataclass(eq=False)
class _Outage:
    """When to ask Slurm again while it does not answer: after 1 s, doubling up to 60 s, for ``limit`` s.

    One outage lasts from the first failed command to the next answer. Time is passed in.
    """

    limit: float
    first: float = 1.0
    cap: float = 60.0
    started: float | None = None
    delay: float = 0.0

    def next_delay(self, now: float) -> float | None:
        """Seconds to wait before asking again, or None when the outage has lasted ``limit`` s."""
        if self.started is None:
            self.started, self.delay = now, self.first
        else:
            self.delay = min(self.cap, self.delay * 2)
        left = self.started + self.limit - now
        return None if left <= 0 else min(self.delay, left)

    def end(self, now: float) -> float | None:
        """Slurm answered: how long the outage lasted (None if there was none)."""
        lasted = None if self.started is None else now - self.started
        self.started = None
        return lasted


_BATCH_SCRIPT = """#!/bin/sh
# Written by slurptuna: sbatch passes the worker command as arguments; no shell parsing.
exec "$@"
"""


# A site's limits, read once when a run starts (issue 15). Every array task counts as one job
# toward MaxJobCount and toward the submit limits (recorded in tests/slurm_texts/: an array
# that would pass one is refused whole; pending tasks count one each although squeue shows
# them as one line), so a run that knows them can split and throttle its arrays instead of
# being refused. MaxArraySize bounds an array's task ids; MaxJobCount the tasks of all users
# in slurmctld's table, ended ones included until MinJobAge (it holds MaxJobCount - 1).


def _parse_slurm_config(stdout: str) -> dict[str, str]:
    """``scontrol show config`` -> every ``Key = value`` it prints, as text (``"300 sec"``, ``"(null)"``)."""
    config: dict[str, str] = {}
    for line in stdout.splitlines():
        key, equals, value = line.partition("=")
        if equals and key.strip() and " " not in key.strip():
            config[key.strip()] = value.strip()
    return config


_SACCTMGR_QOS_FIELDS = (
    "Name,MaxSubmitJobsPerUser,MaxJobsPerUser,MaxSubmitJobsPerAccount,MaxJobsPerAccount,GrpSubmitJobs,GrpJobs"
)
_SACCTMGR_ASSOC_FIELDS = "Cluster,Account,User,Partition,QOS,DefaultQOS,MaxSubmitJobs,MaxJobs,GrpSubmitJobs,GrpJobs"


def _sacctmgr_qos_argv() -> list[str]:
    """The sacctmgr call whose answer `_parse_sacctmgr_job_limits` reads as ``qos_stdout`` (every QoS)."""
    return ["sacctmgr", "-n", "-P", "show", "qos", "format=" + _SACCTMGR_QOS_FIELDS]


def _sacctmgr_assoc_argv(user: str) -> list[str]:
    """The sacctmgr call whose answer `_parse_sacctmgr_job_limits` reads as ``assoc_stdout``: the user's rows."""
    return ["sacctmgr", "-n", "-P", "show", "assoc", f"user={user}", "format=" + _SACCTMGR_ASSOC_FIELDS]


def _sacctmgr_rows(stdout: str, fields: str) -> list[dict[str, str]]:
    names = fields.split(",")
    rows = [line.strip().split("|") for line in stdout.splitlines()]
    return [dict(zip(names, (v.strip() for v in row), strict=True)) for row in rows if len(row) == len(names)]


def _parse_sacctmgr_job_limits(
    assoc_stdout: str, qos_stdout: str, qos: str | None = None, account: str | None = None
) -> int | None:
    """The user's effective MaxSubmitJobs: the smallest submit limit on the run's jobs; None: none, or unknown.

    What applies: the association's own limits (a parent account's is shown on the user's row
    when the user has none: slurm_texts/sacctmgr_show_assoc_inherited.json) and those of the
    QoS the jobs run under: ``qos`` (the run's ``slurm_qos``), else the association's
    DefaultQOS, else its only QoS, else ``normal``, as slurmctld picks it. Grp* and per-account
    limits count other users' jobs too: they bound ours all the same. Under ``account`` only
    that account's associations count; without it, the smallest over all (never ask for
    more). Not read: partition QoSes, and limits on running jobs (over them tasks only pend).
    """
    qos_rows = {row["Name"]: row for row in _sacctmgr_rows(qos_stdout, _SACCTMGR_QOS_FIELDS)}
    submit: list[str] = []
    for row in _sacctmgr_rows(assoc_stdout, _SACCTMGR_ASSOC_FIELDS):
        if account is not None and row["Account"] != account:
            continue
        granted = [name for name in row["QOS"].split(",") if name]
        job_qos = qos_rows.get(qos or row["DefaultQOS"] or (granted[0] if len(granted) == 1 else "normal"), {})
        submit += [value for key, value in [*row.items(), *job_qos.items()] if "Submit" in key]
    return min((int(limit) for limit in submit if limit.isdigit()), default=None)  # blank (or -1): no limit


def _tasks_spec(trials: Sequence[tuple[int, Sequence[int]]]) -> str:
    """The (trial, chunks) of one array in task-id order -> ``5:0-99/6:0-49,60-99`` (task i: the i-th pair)."""
    return "/".join(f"{trial}:{_format_ranges(chunks)}" for trial, chunks in trials)


def _task_of_spec(spec: str, task: int) -> tuple[int, int]:
    """Task id ``task`` of an array made from ``_tasks_spec`` -> (trial, chunk)."""
    asked = task
    for part in spec.split("/"):
        trial, _, ranges = part.partition(":")
        for piece in ranges.split(","):
            first, _, last = piece.partition("-")
            size = int(last or first) - int(first) + 1
            if task < size:
                return int(trial), int(first) + task
            task -= size
    raise ValueError(f"task {asked} is not in {spec!r}")


@dataclass(eq=False)
class _SlurmTrial:
    """One trial on Slurm: the arrays holding its chunks (``jobs.json``), the chunks waiting for one."""

    paths: TrialPaths
    expected: TrialParams
    attempt: int = 0
    jobs: list[JobRef] = field(default_factory=list)  # its array jobs (and theirs reduce jobs), in order
    ended: list[JobRef] = field(default_factory=list)  # its jobs that ended before a retry or this controller
    held: list[int] = field(default_factory=list)  # chunks for the next array: just started, or held by a limit
    cancelled: bool = False  # its tasks were cancelled since it last started chunks
    files: _ChunkFiles = field(default_factory=lambda: _ChunkFiles())  # its valid chunk records read so far

    def save_jobs(self) -> None:
        jobs = [j.to_json() for j in self.jobs]
        _write_json_atomic(self.paths.jobs, {"attempt": self.attempt, "jobs": jobs}, indent=None)

    def queued(self, active: Mapping[str, set[int | None]]) -> Iterable[tuple[str, int, int]]:
        """(job id, task id, chunk) of each chunk whose task is queued or running in ``active`` (squeue's answer)."""
        for job in self.jobs:
            for chunk in job.chunks:
                if job.task_of(chunk) in active.get(job.job_id, ()):
                    yield job.job_id, job.task_of(chunk), chunk


@dataclass(eq=False)
class _CallBudget:
    """At most ``rate`` Slurm calls a second, ``burst`` at once: a site may rate-limit a user's calls.

    Slurm 23.02+ can answer a busy user with "telling to back off" (a token bucket, by default
    30 calls refilled at 2 a second); a run stays under it whatever its trials in flight.
    """

    rate: float
    burst: float
    tokens: float = 0.0
    updated: float | None = None

    def _refilled(self, now: float) -> float:
        return self.burst if self.updated is None else min(self.burst, self.tokens + (now - self.updated) * self.rate)

    def available(self, now: float, keep: float = 0.0) -> bool:
        """A call may be made now without waiting, leaving ``keep`` calls for others (nothing is taken)."""
        return self._refilled(now) >= 1 + keep

    def take(self, now: float) -> float:
        """Take a call's token; the seconds to wait before making the call (0: at once)."""
        self.tokens, self.updated = self._refilled(now) - 1, now
        return 0.0 if self.tokens >= 0 else -self.tokens / self.rate


_SLURM_CALLS_PER_SECOND = 2.0  # Slurm's own default refill; the spec's bound on a run's sustained calls
_SLURM_CALL_BURST = 10.0
# The calls a poll's squeue leaves in the budget: a trial's turn (scancel of the last one's reduce
# job, sbatch of the array and of its reduce job) never waits behind polls. The queue is still
# asked every slurm_poll_seconds; polls in between come from the surplus. Either way, no more
# often than the budget refills a turn's calls: polls never take the budget that trials need,
# and a busy run does not spend its whole budget (nor its CPU) on squeue.
_SLURM_CALLS_KEPT_FROM_POLLS = 3.0


class _SlurmExecutor:
    """Chunk tasks as Slurm array jobs, several trials' chunks in one array, a reduce job behind each.

    Chunks started in one poll cycle (several trials') go out as ONE array, task ids mapped to
    (trial, chunk) on the worker's command line, so a run's sbatch calls do not grow with its
    trials; cancelling one trial cancels only its own task ids. Behind each array, private to
    Slurm, a reduce job (``--dependency=afterany``) writes the summary of each of its trials
    whose chunks are all there, even when the controller died; the controller does not wait
    for it and cancels it once it has reduced those trials itself.

    Chunks that a site's limits leave no room for are held back (``_submit_held``), the calls
    are paced (``_call``). Time comes from ``clock``, waits go through ``sleep`` (True once
    the run is stopped), Slurm's answers from ``slurm``: the rules are tested, and a long run
    simulated, without waiting.
    """

    first_poll_seconds = 0.1  # a cycle reads the chunk files; squeue comes at most every 1.5 s whatever it is

    def __init__(
        self,
        settings: _RunSettings,
        run: RunPaths,
        stop: threading.Event,
        cores: int | None = None,
        *,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], bool] | None = None,
        slurm: Callable[..., subprocess.CompletedProcess[str]] | None = None,
    ) -> None:
        self._slurm = slurm or _run_slurm  # looked up now: tests and the benchmark replace _run_slurm
        if slurm is None and _which("sbatch") is None:
            raise ConfigError("distributed mode needs Slurm: sbatch is not on PATH (use mode='single' to run locally)")
        self._settings = settings
        self._run = run
        self._clock = clock
        self._sleep = sleep or stop.wait
        self._outage = _Outage(60 * settings.slurm_unavailable_minutes)
        self._budget = _CallBudget(_SLURM_CALLS_PER_SECOND, _SLURM_CALL_BURST)
        self.call_counts: collections.Counter[str] = collections.Counter()  # by command, for the benchmark
        self.budget_waited = 0.0  # seconds waited for the call budget
        self._tag = f"slurptuna:{settings.run_id}"  # every job's --comment starts with it
        self._qos = settings.slurm_qos
        self._env = _worker_env(settings)
        self._limits: tuple[int, int | None] | None = None  # MaxArraySize, the most tasks the user may queue
        self.max_poll_seconds = settings.slurm_poll_seconds
        self._trials: dict[int, _SlurmTrial] = {}
        self._active: dict[str, set[int | None]] = {}  # the user's queued or running tasks at the last poll, by job
        self._asked_at: float | None = None  # when squeue last answered a poll
        self._to_cancel: set[str] = set()  # job or task ids no longer needed: they go with the next scancel
        self._learned_cap: int | None = None  # the user's queued tasks a refusal showed to be too many
        self._under_limit = False  # chunks wait for room under a limit (said once per episode)
        self._arrays_made: int | None = None
        self._script = run.batch_script
        _compile_for_workers(settings)  # also on resume: this file or the loss's may have changed since
        if not self._script.exists():
            _write_atomic(self._script, _BATCH_SCRIPT.encode())
            self._script.chmod(0o755)

    # ---- the interface the controller uses

    def start(self, trial: TrialPaths, expected: TrialParams, chunks: Sequence[int], attempt: int) -> None:
        """Hold the chunks for the array that the next ``poll`` submits (with other trials' chunks)."""
        state = self._trials.setdefault(trial.number, _SlurmTrial(trial, expected))
        state.attempt, state.cancelled = attempt, False
        state.ended += [j for j in state.jobs if j.job_id not in self._active]  # explained; their logs fold later
        state.jobs = [j for j in state.jobs if j.job_id in self._active]
        state.held = sorted(set(state.held) | set(chunks))

    def poll(self) -> bool:
        """Cancel what is no longer needed, ask ``squeue`` if due, submit the chunks held as room allows.

        Room is judged on squeue's last answer, which can only overstate the queue. A queue not
        yet due is asked only from the call budget's surplus (``_SLURM_CALLS_KEPT_FROM_POLLS``).
        """
        self._scancel()
        gap = _SLURM_CALLS_KEPT_FROM_POLLS / self._budget.rate  # polls take at most a third of the budget
        since = math.inf if self._asked_at is None else self._clock() - self._asked_at
        due = since >= max(self.max_poll_seconds, gap)
        if due and self._budget.available(self._clock()) and not self._poll_queue():
            return False
        if any(s.held for s in self._trials.values()) and self._budget.available(self._clock()):
            self._submit_held()
        if not due and since >= gap and self._budget.available(self._clock(), keep=_SLURM_CALLS_KEPT_FROM_POLLS):
            return self._poll_queue()
        return True

    def running(self, trial: TrialPaths) -> bool:
        state = self._trials.get(trial.number)
        return state is not None and (bool(state.held) or any(state.queued(self._active)))

    def results(self, trial: TrialPaths) -> Mapping[int, ChunkResult]:
        """The trial's valid chunk records, reading only those written since the last look."""
        state = self._trials.get(trial.number)
        if state is None:
            return {}  # nothing was started here
        _read_new_chunks(trial, state.expected, state.files)
        return state.files.chunks

    def cancel(self, trials: Iterable[TrialPaths]) -> int:
        """One scancel: these trials' own tasks (``A_[ranges]``), and reduce jobs no trial needs any more."""
        numbers = {t.number for t in trials}
        by_job: dict[str, list[int]] = {}
        for number in numbers & self._trials.keys():
            state = self._trials[number]
            state.held, state.cancelled = [], True
            for job_id, task, _ in state.queued(self._active):
                by_job.setdefault(job_id, []).append(task)
        self._to_cancel |= {f"{job_id}_[{_format_ranges(tasks)}]" for job_id, tasks in by_job.items()}
        return self._scancel(self._unneeded_reduce_jobs(numbers))

    def finished(self, trial: TrialPaths) -> None:
        """Fold the logs of its tasks that succeeded, forget the trial; a reduce job no trial needs goes next."""
        state = self._trials.get(trial.number)
        if state is None:
            return
        _fold_task_logs(self._run, state)
        if not state.cancelled:  # cancel() took its reduce job along already
            self._to_cancel |= self._unneeded_reduce_jobs({trial.number})
        del self._trials[trial.number]

    def explain(self, trial: TrialPaths, chunks: Sequence[int]) -> str:
        state = self._trials.get(trial.number)
        jobs = [j for j in state.jobs if j.kind != "reduce"] if state else []
        argv = ["sacct", "-X", "-n", "-P", "-j", ",".join(j.job_id for j in jobs), "-o", "jobid,state,exitcode"]
        process = self._call(argv, timeout=60) if jobs else None
        states = _parse_sacct(process.stdout) if process and process.returncode == 0 else {}

        def describe(chunk: int) -> tuple[str, Path | None]:
            job = next((j for j in reversed(jobs) if chunk in j.chunks), None)  # a retry's array wins
            if job is None:
                return "never submitted", None
            task = job.task_of(chunk)
            log = job.task_log(self._run, task)
            timed_out = "DUE TO TIME LIMIT" in _tail(log)
            return states.get((job.job_id, task)) or ("TIMEOUT" if timed_out else "ended without a result"), log

        return _explain_missing(chunks, describe)

    def has_room(self) -> bool:
        return not self._under_limit

    def adopt(self, trials: Sequence[TrialPaths]) -> dict[int, frozenset[int]]:
        """The chunks still queued for these trials, from their ``jobs.json`` and one ``squeue``.

        Jobs of this run that no ``jobs.json`` knows (sbatch answered after a crash) are
        cancelled: their chunks are not known, so the missing chunks are submitted again.
        The scheduler must answer before anything is submitted twice.
        """
        if not trials:
            return {}
        recorded = {t.number: _read_json(t.jobs) or {} for t in trials}
        jobs = {n: [JobRef.from_json(j) for j in r.get("jobs", [])] for n, r in recorded.items()}
        process, ours = self._jobs_tagged(self._tag)
        if process.returncode != 0:
            logger.warning("squeue failed, cannot look for unrecorded jobs: %s", _command_error(process))
        strays = sorted(set(ours) - {j.job_id for listed in jobs.values() for j in listed})
        if strays:
            logger.warning("cancelling job(s) %s of this run that a crash left out of jobs.json", ", ".join(strays))
            self._scancel(strays)
        while not self._poll_queue():
            if self._sleep(self.max_poll_seconds):
                raise _Interrupted("interrupted while waiting for Slurm to answer")
        adopted: dict[int, frozenset[int]] = {}
        for trial in trials:  # each kept, queued or not: its ended tasks' logs are folded when it finishes
            state = _SlurmTrial(trial, TrialParams.load(trial), recorded[trial.number].get("attempt", 0))
            state.jobs = [j for j in jobs[trial.number] if j.job_id in self._active]
            state.ended = [j for j in jobs[trial.number] if j.job_id not in self._active]
            self._trials[trial.number] = state
            queued = frozenset(chunk for _, _, chunk in state.queued(self._active))
            if queued:
                logger.info("trial %d: adopting queued chunks %s", trial.number, _format_ranges(queued))
                adopted[trial.number] = queued
        return adopted

    def wait(self, seconds: float) -> None:
        self._sleep(seconds)  # nothing happens here between polls: Slurm runs the jobs

    def close(self) -> None:
        """Queued chunk tasks belong to the run (a resume adopts them); reduce jobs no longer needed go."""
        self._scancel()

    # ---- submitting

    def _unneeded_reduce_jobs(self, leaving: set[int]) -> set[str]:
        """Reduce jobs whose arrays hold no chunk of a trial that stays (the ``leaving`` trials excepted)."""
        staying = {j.logs for n, s in self._trials.items() if n not in leaving and not s.cancelled for j in s.jobs}
        return {
            job.job_id
            for n in leaving & self._trials.keys()
            for job in self._trials[n].jobs
            if job.kind == "reduce" and job.logs not in staying and job.job_id in self._active
        }

    def _site_limits(self) -> tuple[int, int | None]:
        """MaxArraySize, and the most tasks the user may have queued: MaxSubmitJobs, MaxJobCount (None: no limit).

        Read once. sacctmgr answers only where accounting runs; elsewhere only a refusal tells.
        """
        if self._limits is None:
            import pwd

            config = _parse_slurm_config(self._call(["scontrol", "show", "config"], timeout=30).stdout)
            job_count = config.get("MaxJobCount", "").split()
            caps = [int(job_count[0]) - 1] if job_count and job_count[0].isdigit() else []
            assoc = self._call(_sacctmgr_assoc_argv(pwd.getpwuid(os.getuid()).pw_name), timeout=30)
            qos = self._call(_sacctmgr_qos_argv(), timeout=30)
            if assoc.returncode == qos.returncode == 0:
                caps += [_parse_sacctmgr_job_limits(assoc.stdout, qos.stdout, self._qos, self._settings.slurm_account)]
            max_array_size = int(config.get("MaxArraySize", "1001").split()[0])
            self._limits = (max_array_size, min((cap for cap in caps if cap is not None), default=None))
        return self._limits

    def _submit_held(self) -> None:
        """Arrays of the chunks held, as the limits leave room: MaxArraySize tasks each, its reduce job one more."""
        max_array_size, cap = self._site_limits()
        cap = min(cap or math.inf, self._learned_cap or math.inf)
        queued = sum(len(tasks) for tasks in self._active.values())
        while any(s.held for s in self._trials.values()):
            size = int(min(max_array_size, cap - queued - 1))
            if size <= 0:
                self._say_under_limit(f"the user may queue {cap} tasks (MaxSubmitJobs, MaxJobCount)")
                return
            batch: list[tuple[_SlurmTrial, list[int]]] = []
            for state in [s for s in self._trials.values() if s.held]:
                take = state.held[: size - sum(len(c) for _, c in batch)]
                if not take:
                    break
                batch.append((state, take))
            try:
                self._submit_array(batch)
            except SlurmBusy as busy:  # a limit the run could not read: learn it, halving the excess each time
                tried = sum(len(c) for _, c in batch) + 1
                self._learned_cap = max(2, min(cap, queued + tried) - max(1, tried // 2))
                self._say_under_limit(str(busy))
                return
            queued += sum(len(c) for _, c in batch) + 1
        if self._under_limit:
            self._under_limit = False
            logger.warning("submitted; no chunk waits for room under the Slurm limit now")

    def _say_under_limit(self, why: str) -> None:
        if not self._under_limit:  # one line per episode, not per poll
            self._under_limit = True
            logger.warning("waiting for room under a Slurm limit (QoS kept); no new trial meanwhile:\n%s", why)

    def _submit_array(self, batch: list[tuple[_SlurmTrial, list[int]]]) -> None:
        s = self._settings
        number = self._next_array_number()
        logs = self._run.array_logs(number)
        logs.mkdir(parents=True, exist_ok=True)
        relative = str(logs.relative_to(self._run.dir))
        n_tasks = sum(len(chunks) for _, chunks in batch)
        limit = s.array_parallelism_limit  # the %throttle is per trial
        tasks = _format_ranges(range(n_tasks)) + (f"%{limit * len(batch)}" if limit else "")
        options = self._options(
            f"a{number:05d}.chunks", s.cpus_per_task, s.worker_time_limit, RunPaths.task_log(logs, "%a")
        )
        spec = _tasks_spec([(state.paths.number, chunks) for state, chunks in batch])
        array = self._sbatch(
            [*options, f"--array={tasks}"],
            _worker_command(s, "chunk", self._run, "--tasks", spec, "--logs", relative),
        )
        self._active[array] = set(range(n_tasks))  # queued: a failure from here on cancels its tasks
        offset = 0
        for state, chunks in batch:
            state.jobs.append(JobRef(array, "tasks", tuple(chunks), offset, state.attempt, relative))
            state.held = state.held[len(chunks) :]
            offset += len(chunks)
            state.save_jobs()  # before the reduce's sbatch: a crash then leaves the array known, to adopt
        options = self._options(f"a{number:05d}.reduce", 1, 600, RunPaths.reduce_log(logs, "%j"))
        trials = ",".join(str(state.paths.number) for state, _ in batch)
        reduce = self._sbatch(
            [*options, f"--dependency=afterany:{array}"], _worker_command(s, "reduce", self._run, "--trials", trials)
        )
        self._active[reduce] = {None}
        for state, _ in batch:
            state.jobs.append(JobRef(reduce, "reduce", attempt=state.attempt, logs=relative))
            state.save_jobs()

    def _next_array_number(self) -> int:
        """The run's arrays are numbered (their log directories): the next number, found once per controller."""
        if self._arrays_made is None:
            found = [int(p.name.split("_")[1]) for p in self._run.dir.glob("slurm_logs/arrays_*/array_*")]
            self._arrays_made = max(found, default=0)
        self._arrays_made += 1
        return self._arrays_made

    def _options(self, name: str, cpus: int, seconds: int, output: Path) -> list[str]:
        """One job's sbatch options: the user's ``sbatch_args`` come before those each job sets."""
        s = self._settings
        options = [f"--job-name={s.run_name}.{name}", f"--mem-per-cpu={s.mem_per_cpu}"]
        options += [f"--partition={s.slurm_partition}"] if s.slurm_partition else []
        options += [f"--account={s.slurm_account}"] if s.slurm_account else []
        options += s.sbatch_args
        return [*options, f"--cpus-per-task={cpus}", f"--time={_slurm_time(seconds)}", f"--output={output}"]

    def _sbatch(self, options: list[str], command: list[str]) -> str:
        """Submit one job; its id.

        A refused QoS is dropped for the rest of the run, with a warning. While slurmctld does
        not answer, ask again with backoff for up to ``slurm_unavailable_minutes``, but first
        look for the job by its own ``--comment``: a timed-out sbatch may have queued it, and
        a chunk set must never be queued twice. A limit raises ``SlurmBusy`` (LIMIT): the
        chunks wait for room, keeping the QoS. Anything else raises ``SlurmError``.
        """
        comment = f"{self._tag}.{os.urandom(4).hex()}"
        while True:
            qos = [f"--qos={self._qos}"] if self._qos else []
            argv = ["sbatch", "--parsable", f"--comment={comment}", *options, *qos, str(self._script), *command]
            process = self._call(argv, env=self._env)
            if process.returncode == 0:
                self._slurm_answered()
                return _parse_job_id(process.stdout)
            kind = classify_slurm_failure(process.returncode, process.stderr)
            if kind is SlurmFailure.BAD_QOS and qos:
                logger.warning("sbatch refused --qos=%s (%s); no QoS from now on", self._qos, process.stderr.strip())
                self._qos = None
            elif kind is SlurmFailure.LIMIT:
                self._slurm_answered()
                raise SlurmBusy(str(_command_error(process)))
            elif kind is SlurmFailure.TRANSIENT:
                queued = self._queued_all_the_same(comment, process)
                if queued:
                    logger.warning("sbatch failed (%s) but queued job %s all the same", process.stderr.strip(), queued)
                    return queued
            else:
                raise _command_error(process)

    def _queued_all_the_same(self, comment: str, failed: subprocess.CompletedProcess[str]) -> str | None:
        """After a failed sbatch: the job it queued anyway, or None once squeue has surely shown there is none.

        A stopped or busy slurmctld holds the requests sent meanwhile and, when it resumes, may
        answer a squeue before it queues an sbatch sent earlier. So "none" counts only from a
        squeue sent after the pause that follows an answered one; until then, wait with backoff.
        ``-t all``: short tasks of that job may have run and ended already.
        """
        answered = False
        while True:
            process, found = self._jobs_tagged(comment, "-t", "all")
            if found:
                return found[0]
            if process.returncode == 0 and answered:
                return None
            answered = process.returncode == 0
            if self._sleep(self._outage_delay(failed if answered else process)):
                raise _Interrupted("interrupted while waiting for Slurm to answer")

    # ---- asking and cancelling

    def _call(self, argv: list[str], urgent: bool = False, **options: Any) -> subprocess.CompletedProcess[str]:
        """One Slurm command, within the run's call budget (``urgent``: a cancel, never delayed)."""
        delay = self._budget.take(self._clock())
        if delay and not urgent:
            self.budget_waited += delay
            if self._sleep(delay):
                raise _Interrupted("interrupted while pacing Slurm calls")
        self.call_counts[argv[0]] += 1
        return self._slurm(argv, **options)

    def _poll_queue(self) -> bool:
        """Keep the user's queued or running tasks, by job, from one ``squeue``; False if Slurm did not answer.

        All the user's jobs: each array task counts toward MaxSubmitJobs, whichever run queued
        it. Without an answer the queue keeps its last one and stays due.
        """
        asked = self._clock()
        process = self._call(["squeue", "-h", "--me", "-o", "%i|%T"], timeout=60)
        if process.returncode == 0:
            self._slurm_answered()
            self._active, self._asked_at = _parse_active_tasks(process.stdout), asked
        elif classify_slurm_failure(process.returncode, process.stderr) is SlurmFailure.TRANSIENT:
            self._outage_delay(process)  # the controller waits its poll interval; this raises once Slurm is gone
        else:
            logger.warning("squeue failed, will ask again: %s", _command_error(process))
        return process.returncode == 0

    def _jobs_tagged(self, tag: str, *options: str) -> tuple[subprocess.CompletedProcess[str], list[str]]:
        """One ``squeue``, and the jobs whose ``--comment`` is ``tag`` or ``tag.*``: how a run finds its own."""
        process = self._call(["squeue", "-h", "--me", *options, "-o", "%F|%k"], timeout=60)
        shown = (line.partition("|") for line in process.stdout.splitlines() if process.returncode == 0)
        return process, [job for job, _, comment in shown if comment == tag or comment.startswith(tag + ".")]

    def _scancel(self, more: Iterable[str] = ()) -> int:
        """One scancel of the ids no longer needed and ``more`` (never held back by the call budget); how many."""
        ids, self._to_cancel = sorted(self._to_cancel.union(more)), set()
        if ids:
            process = self._call(["scancel", *ids], urgent=True, timeout=60)
            if process.returncode != 0 and _INVALID_JOB_ID not in process.stderr:
                logger.warning("%s", _command_error(process))
        return len(ids)

    def _outage_delay(self, failed: subprocess.CompletedProcess[str]) -> float:
        """Slurm did not answer: the wait before the next try; SlurmError after slurm_unavailable_minutes."""
        first = self._outage.started is None
        delay = self._outage.next_delay(self._clock())
        if delay is None:
            raise SlurmError(
                f"Slurm has not answered for {self._settings.slurm_unavailable_minutes:g} minutes "
                f"(slurm_unavailable_minutes); last answer: {_command_error(failed)}"
            )
        if first:
            logger.warning(
                "Slurm does not answer %s (%s); asking again with backoff for up to %g minutes",
                failed.args[0],
                (failed.stderr.strip() or "no output").splitlines()[-1],
                self._settings.slurm_unavailable_minutes,
            )
        return delay

    def _slurm_answered(self) -> None:
        lasted = self._outage.end(self._clock())
        if lasted is not None:
            logger.warning("Slurm answers again after %.0f s", lasted)


def _fold_task_logs(run: RunPaths, state: _SlurmTrial) -> None:
    """The logs of a finished trial's tasks that succeeded: dropped when empty, else folded into one file.

    A site counts inodes: a task's own log stays only where it failed (its error names it).
    The tasks: those of the array that last took each chunk, also of arrays that ended before
    a retry or a resume (the records of a trial the reduce job completed are read here).
    """
    if len(state.files.chunks) < state.expected.plan.n_chunks:
        _read_new_chunks(state.paths, state.expected, state.files)
    last = {chunk: job for job in [*state.ended, *state.jobs] if job.kind == "tasks" for chunk in job.chunks}
    logs = {job.logs: run.dir / job.logs for job in last.values()}
    for chunk, job in last.items():
        if chunk not in state.files.chunks:
            continue
        task = job.task_of(chunk)
        log = RunPaths.task_log(logs[job.logs], task)
        try:
            text = log.read_text(errors="replace") if os.stat(log).st_size else ""  # most are empty: not opened
        except FileNotFoundError:
            continue
        if text.strip():
            with open(RunPaths.folded_log(log.parent), "a") as folded:
                folded.write(f"===== task {task} (trial {state.paths.number}, chunk {chunk}), job {job.job_id}\n{text}")
        with contextlib.suppress(FileNotFoundError):
            os.unlink(log)


# ---------------------------------------------------------------- local processes, same interface


@dataclass(eq=False)
class _PoolWorker:
    """A pool process as the controller sees it: its pipes, its log and the units sent to it."""

    pid: int
    commands: IO[bytes]
    results_fd: int
    log: Path
    process: subprocess.Popen[bytes] | None  # None for a forked worker
    ready: bool = False
    received: bytes = b""
    units: collections.deque[_Unit] = field(default_factory=collections.deque)  # sent, not yet answered, in order
    unit_started: float = 0.0  # when it began the unit it runs (its last answer)
    exit_code: int | None = None  # once killed and reaped

    def receive(self) -> list[dict[str, Any]] | None:
        """The whole answers that arrived; None once the pipe closed."""
        data = os.read(self.results_fd, 1 << 16)
        if not data:
            return None
        *lines, self.received = (self.received + data).split(b"\n")
        return json.loads(b"[" + b",".join(lines) + b"]")

    def kill(self) -> list[dict[str, Any]]:
        """Kill the worker and every process its loss started (its session), reap it; the answers it left unread.

        Once only: a second call returns nothing and closes no file descriptor again (its
        number may belong to another file by then).
        """
        if self.exit_code is not None:
            return []
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.pid, signal.SIGKILL)
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.pid, signal.SIGKILL)
        if self.process is not None:
            self.exit_code = self.process.wait()
        else:
            try:
                self.exit_code = os.waitstatus_to_exitcode(os.waitpid(self.pid, 0)[1])
            except ChildProcessError:
                self.exit_code = 0
        with contextlib.suppress(OSError):
            self.commands.close()
        answers: list[dict[str, Any]] = []
        os.set_blocking(self.results_fd, False)  # a process of its loss that left its session may hold the pipe
        with contextlib.suppress(OSError):
            while (more := self.receive()) is not None:
                answers += more
        os.close(self.results_fd)
        return answers


def _usable_cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def _pool_size(settings: _RunSettings, cores: int) -> int:
    """Never more processes than cores, nor than the trials in flight could use (worker_parallelism each)."""
    if not settings.use_processes:
        return 1  # threads: one process, worker_parallelism threads per chunk
    return max(1, min(cores, settings.worker_parallelism * settings.max_concurrent_trials))


def _uses_fork(settings: _RunSettings) -> bool:
    """Fork the pool where multiprocessing would (Linux), unless the workers need another interpreter."""
    import multiprocessing

    method = multiprocessing.get_start_method(allow_none=True) or ("fork" if sys.platform == "linux" else "spawn")
    return method == "fork" and hasattr(os, "fork") and settings.python == sys.executable


def _become_pool_worker(
    settings: _RunSettings, command_fd: int, result_fd: int, log: Path, close_fds: list[int]
) -> NoReturn:
    """The forked child: its own session, its log as stdout and stderr, then ``serve_pool``."""

    def serve() -> None:
        parent = os.getppid()
        os.setsid()  # the terminal's Ctrl-C goes to the controller, which stops the pool itself
        for signum in (signal.SIGINT, signal.SIGTERM):
            signal.signal(signum, signal.SIG_DFL)
        for fd in [*close_fds, *_CONTROLLER_LOCKS]:
            os.close(fd)
        out = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        null = os.open(os.devnull, os.O_RDONLY)
        os.dup2(null, 0)
        os.dup2(out, 1)
        os.dup2(out, 2)
        os.close(out)
        os.close(null)
        # The inherited sys.stdout may not write to fd 1 (a notebook's stream, pytest's capture)
        sys.stdout = open(1, "w", buffering=1, closefd=False)  # noqa: SIM115
        sys.stderr = open(2, "w", buffering=1, closefd=False)  # noqa: SIM115
        import faulthandler

        if faulthandler.is_enabled():  # a crash's Python traceback goes to the worker's log too
            faulthandler.enable(sys.stderr)
        _die_with_parent(parent)
        global _INSIDE_WORKER
        _INSIDE_WORKER = True
        inherited = _LOSSES.get(settings.loss_name) if settings.loss_ref.get("interactive") else None
        if inherited is None:  # import the module as a spawned worker would; its __main__ twin must make room
            for name in [n for n, d in _LOSSES.items() if getattr(d.seed_loss_fn, "__module__", "") == "__main__"]:
                del _LOSSES[name]
        serve_pool(settings, os.fdopen(command_fd, "rb"), os.fdopen(result_fd, "wb"), inherited)

    _leave_forked_child(serve)


@dataclass(eq=False)
class _LocalTrial:
    """A trial's chunks in the pool: the latest attempt of each, and the results held in memory."""

    paths: TrialPaths
    expected: TrialParams
    chunks: dict[int, _LocalChunk] = field(default_factory=dict)
    results: dict[int, ChunkResult] = field(default_factory=dict)
    n_wanted: int = 0  # chunks still pending or running: kept as they change, not counted per event


@dataclass(eq=False)
class _LocalChunk:
    """One chunk in the pool: where it stands; split among workers, its parts' statistics so far."""

    trial: _LocalTrial
    index: int
    n_parts: int
    state: _ChunkState = _ChunkState.PENDING
    log: Path | None = None
    parts: list[tuple[ChunkStats, float]] = field(default_factory=list)

    @property
    def wanted(self) -> bool:
        return self.state in (_ChunkState.PENDING, _ChunkState.RUNNING)


@dataclass(eq=False)
class _Unit:
    """Part ``part`` of a chunk's ``n_parts`` (the whole chunk when it has one): what a pool worker is sent."""

    chunk: _LocalChunk
    part: int = 0

    @property
    def seeds(self) -> int:
        return self.chunk.trial.expected.plan.chunk_size // self.chunk.n_parts  # about: the last chunk may be short


_BATCH_SECONDS = 0.005  # work sent to a worker at once, once the loss's speed is known: few messages, quick pruning


class _LocalExecutor:
    """Single mode: chunk tasks in one pool of worker processes per run, each importing the loss once.

    Forked where multiprocessing forks, else ``python -m slurptuna worker pool``; each in a
    session of its own (Ctrl-C reaches the controller, which stops them), answering over a
    pipe. The controller's chunks become units of work (a chunk, or a part of one when a
    trial has fewer chunks than the pool has processes), sent about ``_BATCH_SECONDS`` of
    work at a time, the next batch before a worker ends the last; each unit is answered
    as it ends, and its result held here. Workers write whole chunks' records, this
    executor the files of split chunks, so a trial's fixed cost is a few file writes, not a
    process start. A worker that dies (a crash in the loss, the OOM killer) or passes
    ``worker_time_limit`` is killed and replaced; only its chunk fails.
    """

    first_poll_seconds = 0.002
    max_poll_seconds = 0.25  # news from the pool ends a wait at once; this only paces the time limit

    def __init__(
        self,
        settings: _RunSettings,
        run: RunPaths,
        stop: threading.Event,
        cores: int | None = None,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        """``cores``: what this run may use (optimize_entries shares the machine's among its runs)."""
        self._settings = settings
        self._run = run
        self._stop = stop
        self._clock = clock
        self._fork = _uses_fork(settings)
        if not self._fork:
            _compile_for_workers(settings)
            if settings.loss_ref.get("interactive"):
                raise ConfigError(
                    f"loss {settings.loss_name!r} was defined interactively and this platform starts worker "
                    "processes afresh (spawn), so they cannot see it: define it in a .py file"
                )
        self._env = {**_worker_env(settings), "SLURPTUNA_CONTROLLER_PID": str(os.getpid())}
        self._n_started = 0
        self._workers: list[_PoolWorker] = []
        for _ in range(_pool_size(settings, cores or _usable_cores())):
            self._workers.append(self._start_worker())
        self._trials: dict[int, _LocalTrial] = {}
        self._queue: collections.deque[_Unit] = collections.deque()
        self._seconds_per_seed: float | None = None
        self._ended = False  # some trial's last running chunk ended: the controller should look

    # ---- the interface the controller uses

    def start(self, trial: TrialPaths, expected: TrialParams, chunks: Sequence[int], attempt: int) -> None:
        local = self._trials.setdefault(trial.number, _LocalTrial(trial, expected))
        split = math.ceil(len(self._workers) / len(chunks))  # fewer chunks than workers: each in parts
        for index in chunks:
            if index in local.chunks:
                self._settle(local.chunks[index], _ChunkState.CANCELLED)  # an earlier attempt's units are dropped
            n_parts = min(split, len(expected.plan.chunk(index))) if split > 1 else 1
            chunk = local.chunks[index] = _LocalChunk(local, index, n_parts)
            local.n_wanted += 1
            self._queue.extend([_Unit(chunk, part) for part in range(n_parts)])

    def poll(self) -> bool:
        return True  # the pool's news arrive during wait()

    def running(self, trial: TrialPaths) -> bool:
        local = self._trials.get(trial.number)
        return local is not None and local.n_wanted > 0

    def results(self, trial: TrialPaths) -> Mapping[int, ChunkResult]:
        local = self._trials.get(trial.number)
        return local.results if local else {}

    def cancel(self, trials: Iterable[TrialPaths]) -> int:
        numbers = {t.number for t in trials}
        cancelled = [c for n in numbers if n in self._trials for c in self._trials[n].chunks.values() if c.wanted]
        for chunk in cancelled:
            self._settle(chunk, _ChunkState.CANCELLED)
        for worker in [w for w in self._workers if w.units and w.units[0].chunk.trial.paths.number in numbers]:
            self._replace(worker)  # its unit is dropped, so stop it now
        return len(cancelled)

    def finished(self, trial: TrialPaths) -> None:
        self.cancel([trial])
        self._trials.pop(trial.number, None)

    def explain(self, trial: TrialPaths, chunks: Sequence[int]) -> str:
        local = self._trials.get(trial.number)

        def describe(index: int) -> tuple[str, Path | None]:
            chunk = local.chunks.get(index) if local else None
            if chunk is None:
                return "never submitted", None
            ended = chunk.state.value if chunk.state is not _ChunkState.COMPLETED else "ended without a result"
            return ended, chunk.log

        return _explain_missing(chunks, describe)

    def has_room(self) -> bool:
        return True

    def adopt(self, trials: Sequence[TrialPaths]) -> dict[int, frozenset[int]]:
        return {}  # pool workers die with their controller

    def wait(self, seconds: float) -> None:
        """Run the pool for up to ``seconds``: send work, take results, enforce the time limit.

        Returns early when a trial's last running chunk ends or the run is stopped, so the
        controller reacts at once.
        """
        import select

        deadline = self._clock() + seconds
        while True:
            self._step()
            if self._ended or self._stop.is_set():
                self._ended = False
                return
            left = deadline - self._clock()
            if left <= 0:
                return
            by_fd = {w.results_fd: w for w in self._workers}
            for fd in select.select(list(by_fd), [], [], min(left, self.max_poll_seconds))[0]:
                if by_fd[fd] in self._workers:  # not replaced meanwhile
                    self._take_answers(by_fd[fd])

    def close(self) -> None:
        """Stop every worker at once (the end of the run, an error or Ctrl-C)."""
        for worker in self._workers:
            worker.kill()
        self._workers = []

    # ---- units: sending, answers, failures

    def _step(self) -> None:
        """Enforce the time limit, then feed the workers: the idle ones first, then each one's next batch."""
        now = self._clock()
        limit = self._settings.worker_time_limit
        for worker in [w for w in self._workers if w.units and now - w.unit_started > limit]:
            chunk = worker.units[0].chunk
            with open(worker.log, "a") as log:
                log.write(
                    f"slurptuna: *** chunk {chunk.index} of trial {chunk.trial.paths.number} "
                    f"CANCELLED DUE TO TIME LIMIT ({limit} s) ***\n"
                )
            self._settle(chunk, _ChunkState.TIMEOUT)
            self._replace(worker)
        rate = self._seconds_per_seed
        for worker in sorted(self._workers, key=lambda w: len(w.units)):
            fed = worker.units and (rate is None or len(worker.units) * worker.units[0].seeds * rate >= _BATCH_SECONDS)
            if worker.ready and not fed:  # a busy worker: its next batch before it ends the last
                batch = self._next_batch()
                if not batch:
                    return
                self._send(worker, batch, now)

    def _next_batch(self) -> list[_Unit]:
        """The next units of one trial, about ``_BATCH_SECONDS`` of work, no more than a fair share of the queue."""
        queue = self._queue
        while queue and not queue[0].chunk.wanted:
            queue.popleft()  # its trial was cancelled or its chunk failed
        if not queue:
            return []
        batch = [queue.popleft()]
        trial = batch[0].chunk.trial
        if self._seconds_per_seed is not None:
            wanted = _BATCH_SECONDS / max(self._seconds_per_seed * batch[0].seeds, 1e-9)
            fair = (len(queue) + 1) / len(self._workers)
            while len(batch) < min(wanted, fair) and queue and queue[0].chunk.trial is trial:
                batch.append(queue.popleft())
        return batch

    def _send(self, worker: _PoolWorker, batch: list[_Unit], now: float) -> None:
        trial = batch[0].chunk.trial
        command = {
            "run_dir": str(trial.paths.run_dir),
            "trial": trial.paths.number,
            "units": [[u.chunk.index, u.part, u.chunk.n_parts] for u in batch],
        }
        if not worker.units:
            worker.unit_started = now
        worker.units.extend(batch)
        for unit in batch:
            unit.chunk.state, unit.chunk.log = _ChunkState.RUNNING, worker.log
        try:
            worker.commands.write(_json_line(command))
            worker.commands.flush()
        except BrokenPipeError:  # it died
            self._lost(worker)

    def _take_answers(self, worker: _PoolWorker) -> None:
        answers = worker.receive()
        if answers is None:
            self._lost(worker)
        else:
            self._take(worker, answers)
            worker.unit_started = self._clock()

    def _take(self, worker: _PoolWorker, answers: list[dict[str, Any]]) -> None:
        """Answers in the order of the units sent: a whole chunk's record, a part's statistics, or a failure."""
        for answer in answers:
            if "ready" in answer:
                worker.ready = True
                continue
            if "import_error" in answer:
                raise LossError(answer["import_error"])
            chunk = worker.units.popleft().chunk
            if not chunk.wanted:
                continue
            if "failure" in answer:
                self._fail(chunk, ChunkFailure.from_json({**answer["failure"], "log": str(worker.log)}))
            elif "part" in answer:
                self._add_part(chunk, ChunkStats.from_json(answer["part"]), answer["seconds"])
            else:
                self._complete(chunk, ChunkResult.from_json(answer))

    def _add_part(self, chunk: _LocalChunk, stats: ChunkStats, seconds: float) -> None:
        """A part's statistics; the last part completes the chunk, whose file is written here (not by a worker)."""
        chunk.parts.append((stats, seconds))
        self._learn_speed(seconds, stats.loss.count)
        if len(chunk.parts) == chunk.n_parts:
            pooled = ChunkStats.pool([s for s, _ in chunk.parts])
            seconds = sum(t for _, t in chunk.parts)
            result = ChunkResult.of(chunk.trial.expected, chunk.index, pooled, seconds, processes=chunk.n_parts)
            _write_chunk_result(chunk.trial.paths, result)
            self._complete(chunk, result)

    def _complete(self, chunk: _LocalChunk, result: ChunkResult) -> None:
        if not chunk.parts:  # a worker's record
            self._learn_speed(result.elapsed_seconds, result.stats.loss.count)
        chunk.trial.results[chunk.index] = result
        self._settle(chunk, _ChunkState.COMPLETED)

    def _learn_speed(self, seconds: float, n_seeds: int) -> None:
        rate = seconds / max(n_seeds, 1)
        self._seconds_per_seed = rate if self._seconds_per_seed is None else 0.8 * self._seconds_per_seed + 0.2 * rate

    def _fail(self, chunk: _LocalChunk, failure: ChunkFailure) -> None:
        _write_chunk_failure(chunk.trial.paths, failure)
        self._settle(chunk, _ChunkState.FAILED)

    def _settle(self, chunk: _LocalChunk, state: _ChunkState) -> None:
        """A wanted chunk ended (COMPLETED, FAILED, TIMEOUT or CANCELLED); its trial's last one wakes the wait."""
        if chunk.wanted:
            chunk.trial.n_wanted -= 1
            self._ended |= chunk.trial.n_wanted == 0
            chunk.state = state

    # ---- workers that die or are stopped

    def _lost(self, worker: _PoolWorker) -> None:
        """A worker ended by itself: after what it answered, its unit's chunk fails, saying how; the rest goes back."""
        self._take(worker, worker.kill())
        if not worker.ready:
            raise LossError(
                f"a worker process died while importing the loss ({_describe_exit(worker.exit_code)}); "
                f"log {worker.log}:\n{_tail(worker.log)}"
            )
        if worker.units and worker.units[0].chunk.wanted:
            unit = worker.units[0]
            expected = unit.chunk.trial.expected
            seeds = _part_seeds(expected.plan, unit.chunk.index, unit.part, unit.chunk.n_parts)
            died = f"the worker process died ({_describe_exit(worker.exit_code)})"
            failure = ChunkFailure(
                expected.trial_number,
                unit.chunk.index,
                self._settings.loss_name,
                "crashed",
                f"{died} while evaluating {_describe_seed_range(seeds)}",
                params=expected.params,
                log=str(worker.log),
            )
            self._fail(unit.chunk, failure)
        self._replace(worker)

    def _replace(self, worker: _PoolWorker) -> None:
        """Kill the worker (taking what it answered) and start another; its units still wanted go back to the queue."""
        self._take(worker, worker.kill())
        self._workers.remove(worker)  # before the fork: the new worker must not inherit its closed pipes
        self._workers.append(self._start_worker())
        for unit in reversed(worker.units):
            if unit.chunk.wanted:
                unit.chunk.state = _ChunkState.PENDING
                self._queue.appendleft(unit)

    def _start_worker(self) -> _PoolWorker:
        self._n_started += 1
        log = self._run.worker_log(f"{os.getpid()}_{self._n_started}")
        log.parent.mkdir(parents=True, exist_ok=True)
        command_read, command_write = os.pipe()
        result_read, result_write = os.pipe()
        process = None
        if self._fork:
            inherited = [fd for w in self._workers for fd in (w.commands.fileno(), w.results_fd)]
            sys.stdout.flush()
            sys.stderr.flush()
            pid = os.fork()
            if pid == 0:
                _become_pool_worker(
                    self._settings, command_read, result_write, log, [command_write, result_read, *inherited]
                )
        else:
            import subprocess

            argv = [self._settings.python, "-m", "slurptuna", "worker", "pool", str(self._run.dir)]
            with open(log, "ab") as out:
                process = subprocess.Popen(
                    [*argv, "--results-fd", str(result_write)],
                    stdin=command_read,
                    stdout=out,
                    stderr=subprocess.STDOUT,
                    pass_fds=(result_write,),
                    env=self._env,
                    start_new_session=True,
                )
            pid = process.pid
        os.close(command_read)
        os.close(result_write)
        return _PoolWorker(pid, os.fdopen(command_write, "wb"), result_read, log, process)


# ============================================================================
# Controller: the trial loop, polling, retries, resume, Ctrl-C
# ============================================================================


class _StopSignal:
    """Ctrl-C and SIGTERM set an event that the controller checks between polls.

    The controller then cancels the run's jobs in one call and exits; a second Ctrl-C
    interrupts at once. Handlers are installed only in the main thread.
    """

    def __enter__(self) -> _StopSignal:
        self.event = threading.Event()
        self.signum: int | None = None
        self._saved: dict[int, Any] = {}
        if threading.current_thread() is threading.main_thread():
            for signum in (signal.SIGINT, signal.SIGTERM):
                self._saved[signum] = signal.signal(signum, self._handle)
        return self

    def _handle(self, signum: int, frame: Any) -> None:
        if self.event.is_set():
            raise KeyboardInterrupt
        self.signum = signum
        self.event.set()

    def __exit__(self, *exc: object) -> None:
        for signum, handler in self._saved.items():
            signal.signal(signum, handler)


class _Interrupted(SlurptunaError):
    pass


# ---------------------------------------------------------------- the trial life cycle, decided apart from done


class _Next(Enum):
    """What to do next with a trial: ``_decide`` says it, ``_Controller._advance`` does it."""

    WAIT = "wait"
    STOP_RUN = "stop the run: the loss cannot be imported, every trial would fail alike"
    FAIL_LOSS = "fail: the loss failed in a chunk (fail_on_chunk_error)"
    COMPLETE = "complete: every chunk has its result; reduce them"
    AT_TARGET = "complete: the standard error reached target_standard_error; cancel the chunks still queued"
    PRUNE = "prune: the pruner says the trial cannot win; cancel its chunk tasks"
    START_MORE = "start the next chunks: the standard error is not at target_standard_error yet"
    CANCEL_OVERDUE = "cancel the attempt: over slurm_timeout_minutes"
    COMPLETE_PARTIAL = "reduce the chunks that worked (fail_on_chunk_error=False)"
    FAIL_ALL_CHUNKS = "fail: the loss failed in every chunk that has no result"
    RETRY = "start the missing chunks again"
    FAIL_NO_RESULT = "fail: no result after the retries"


@dataclass(frozen=True, eq=False)
class _TrialView:
    """What the results, the error files, the executor and the clock say about one trial."""

    n_chunks: int
    done_chunks: frozenset[int]  # chunks with a valid result
    failed_chunks: frozenset[int] = frozenset()  # chunks whose loss failed (their error files)
    running: bool = False  # some chunk task is queued, running or held back
    import_failed: bool = False
    overdue: bool = False
    prune: bool = False  # the pruner's answer to the chunks reported so far
    retries_left: bool = False
    fail_on_chunk_error: bool = True
    started: frozenset[int] | None = None  # with target_standard_error: the chunks started so far; None: all
    to_start: tuple[int, ...] = ()  # with target_standard_error: the next chunks it needs (_next_wave)
    target_reached: bool = False

    @property
    def missing_chunks(self) -> frozenset[int]:
        planned = frozenset(range(self.n_chunks)) if self.started is None else self.started
        return planned - self.done_chunks


def _decide(view: _TrialView) -> _Next:
    """The trial life cycle as a pure function: tested without Slurm, processes or sleeping."""
    if view.import_failed:
        return _Next.STOP_RUN
    if view.failed_chunks and view.fail_on_chunk_error:
        return _Next.FAIL_LOSS
    if len(view.done_chunks) == view.n_chunks:
        return _Next.COMPLETE  # no need to wait for anything else: the results are all there
    if view.target_reached:
        return _Next.AT_TARGET
    if view.running and view.prune:
        return _Next.PRUNE
    if view.to_start:
        return _Next.START_MORE
    if view.running:
        return _Next.CANCEL_OVERDUE if view.overdue else _Next.WAIT
    if view.failed_chunks and view.missing_chunks <= view.failed_chunks:
        return _Next.COMPLETE_PARTIAL if view.done_chunks else _Next.FAIL_ALL_CHUNKS
    return _Next.RETRY if view.retries_left else _Next.FAIL_NO_RESULT


# ---- target_standard_error: a trial's chunks start in waves, as many as its standard error needs
#
# A trial starts its first _min_chunks chunks, then as many more as the estimate (std /
# target)^2 seeds says it needs, in chunk index order (so chunk k holds the same seeds in
# every trial and two trials stay paired), and stops once std / sqrt(seeds) <= target.
# target_standard_error is not part of a run's identity: every trial records its own seeds
# and standard error, and races compare trials on the chunks they share, so a resume may
# tighten or loosen it (the trials told before keep the seeds they used).

_MIN_TARGET_CHUNKS = 4  # a paired t-test on 4 chunks has 3 degrees of freedom (one-sided 5%: t > 2.35)
_MIN_TARGET_SEEDS = 32  # std from 32 seeds is within about 25% (2 SE of it): a stop not made on a lucky std


def _min_chunks(plan: SeedPlan) -> int:
    """The chunks a trial runs before its standard error may stop it."""
    return min(plan.n_chunks, max(_MIN_TARGET_CHUNKS, math.ceil(_MIN_TARGET_SEEDS / plan.chunk_size)))


def _next_wave(
    plan: SeedPlan, done: _Moments | None, n_done: int, counted: int, started: Collection[int], target: float
) -> tuple[int, ...]:
    """The chunks to start next: the first ones not started, up to what the estimate says the trial needs.

    ``done``: the pooled losses of its ``n_done`` chunks with a result; ``counted``: the chunks
    started that have a result or may still get one (failed ones do not count).
    """
    wanted = _min_chunks(plan)
    if done is not None and n_done >= wanted:
        wanted = max(wanted, math.ceil((done.std / target) ** 2 / plan.chunk_size))
    more = min(plan.n_chunks, wanted) - counted
    if more <= 0:
        return ()
    return tuple(itertools.islice((c for c in range(plan.n_chunks) if c not in started), more))


def _target_reached(plan: SeedPlan, done: _Moments | None, n_done: int, target: float) -> bool:
    return done is not None and n_done >= _min_chunks(plan) and done.standard_error <= target


# ---- racing and the best set: one-sided paired t-tests on the chunks two trials share
#
# Chunk k holds the same seeds in every trial, so two trials' chunk means pair by chunk
# index: a paired test sees through the seeds' common noise. A trial replaces the run's best
# on fewer seeds only if the test says it is better (_race_step); the best set is the trials
# the test cannot tell from the best. The t distribution is computed here (no scipy: workers
# and controllers need only the standard library and optuna).


def _incomplete_beta(a: float, b: float, x: float) -> float:
    """The regularized incomplete beta function I_x(a, b), by its continued fraction (Lentz)."""
    if x <= 0.0 or x >= 1.0:
        return max(0.0, min(1.0, x))
    if x > (a + 1) / (a + b + 2):
        return 1.0 - _incomplete_beta(b, a, 1.0 - x)
    front = math.exp(math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log1p(-x))
    f, c, d = 1.0, 1.0, 0.0
    for i in range(400):
        m = i // 2
        if i == 0:
            step = 1.0
        elif i % 2 == 0:
            step = m * (b - m) * x / ((a + 2 * m - 1) * (a + 2 * m))
        else:
            step = -((a + m) * (a + b + m) * x) / ((a + 2 * m) * (a + 2 * m + 1))
        d = 1.0 + step * d
        d = 1.0 / (d if abs(d) > 1e-300 else 1e-300)
        c = 1.0 + step / c
        c = c if abs(c) > 1e-300 else 1e-300
        f *= c * d
        if abs(1.0 - c * d) < 1e-15:
            break
    return front * (f - 1.0) / a


def _t_survival(t: float, df: int) -> float:
    """P(T > t) for Student's t with ``df`` degrees of freedom."""
    tail = 0.5 * _incomplete_beta(df / 2, 0.5, df / (df + t * t))
    return tail if t > 0 else 1.0 - tail


def _paired_p(better: Mapping[int, float], than: Mapping[int, float], direction: str) -> float:
    """The p-value of a one-sided paired t-test that ``better`` has the better mean, on the chunks both have.

    1.0 with fewer than two shared chunks (nothing to test on).
    """
    sign = 1.0 if direction == "minimize" else -1.0
    gains = [sign * (than[k] - better[k]) for k in better.keys() & than.keys()]
    if len(gains) < 2:
        return 1.0
    spread = _Moments.of(gains)
    if spread.std == 0.0:
        return 0.0 if spread.mean > 0 else 1.0
    return _t_survival(spread.mean / spread.standard_error, len(gains) - 1)


@dataclass(frozen=True, eq=False)
class _Racer:
    """A complete trial as a race or the best set sees it: its chunks' losses by chunk index."""

    number: int
    chunks: Mapping[int, _Moments]
    n_chunks: int  # the plan's
    params: Mapping[str, ParamValue] = field(default_factory=dict)
    stuck: bool = False  # chunks started for it ended without a result: it gets no more

    @cached_property
    def pooled(self) -> _Moments:
        return _Moments.pool(list(self.chunks.values()))

    @cached_property
    def means(self) -> dict[int, float]:
        return {k: m.mean for k, m in self.chunks.items()}

    def record(self) -> BestSetTrial:
        loss = self.pooled
        return BestSetTrial(self.number, dict(self.params), loss.mean, loss.standard_error, loss.count)


@dataclass(frozen=True)
class _RaceStep:
    """A race's next step: the trial ranked first once it is over (else None), and the chunks to add."""

    first: int | None
    add: dict[int, tuple[int, ...]] = field(default_factory=dict)
    p_value: float = 1.0  # of the test that decided, or of the challenger being better


def _race_step(best: _Racer, challenger: _Racer, direction: str, level: float) -> _RaceStep:
    """One step of a race, as a pure function.

    Separated (the one-sided paired test at ``level``, either way): the better one ranks
    first. Else chunks go to the one with fewer seeds (both when equal), the next ones in
    chunk order, doubling its chunks (not past the other's, when fewer); once those cannot get
    more (n_seeds, or their chunks failed) the lower mean ranks first and both stay in the best set.
    """
    p_challenger = _paired_p(challenger.means, best.means, direction)
    if p_challenger < level:
        return _RaceStep(challenger.number, p_value=p_challenger)
    p_best = _paired_p(best.means, challenger.means, direction)
    if p_best < level:
        return _RaceStep(best.number, p_value=p_best)
    seeds = {r.number: r.pooled.count for r in (best, challenger)}
    growing = [r for r in (best, challenger) if seeds[r.number] <= min(seeds.values())]
    add = {}
    for racer in growing:
        other = challenger if racer is best else best
        more = len(racer.chunks) if len(growing) == 2 else min(len(racer.chunks), len(other.chunks) - len(racer.chunks))
        lacking = (k for k in range(racer.n_chunks) if k not in racer.chunks)
        chunks = tuple(itertools.islice(lacking, max(1, more)))
        if chunks and not racer.stuck:
            add[racer.number] = chunks
    if add:
        return _RaceStep(None, add, p_challenger)
    first = challenger if _better(challenger.pooled.mean, best.pooled.mean, direction) else best
    return _RaceStep(first.number, p_value=p_challenger)


def _best_set(best: _Racer, near: Iterable[_Racer], direction: str, level: float) -> list[_Racer]:
    """The best, then the trials a one-sided paired test cannot tell from it, by mean: at most _BEST_SET_MAX.

    The cap keeps a trial's end O(1) where the loss is flat (every trial tied with the best: a
    set of thousands tested and written at every trial was quadratic in the run's length).
    """
    tied = [r for r in near if r.number != best.number and _paired_p(best.means, r.means, direction) >= level]
    sign = 1.0 if direction == "minimize" else -1.0
    return [best, *sorted(tied, key=lambda r: (sign * r.pooled.mean, r.number))[: _BEST_SET_MAX - 1]]


_BEST_SET_MAX = 50  # the best set's members listed: the best means among the trials tied with the best


_NEAR_BEST = 3.0  # best-set candidates: within this many (unpaired) standard errors of the best's mean


@dataclass(eq=False)
class _ActiveTrial:
    """A trial the controller is waiting for: its results so far, its attempt, its reports to the pruner.

    A complete trial racing the best is one too, with no Optuna trial (Optuna was told already).
    """

    trial: optuna.trial.Trial | None
    paths: TrialPaths
    expected: TrialParams
    chunks: dict[int, ChunkResult] = field(default_factory=dict)  # valid results so far
    results_seen: int = 0  # how many results the executor had at the last look
    attempt: int = 0
    deadline: float | None = None
    reported: set[int] = field(default_factory=set)  # steps told the pruner (on resume: from the storage), once each
    asked_pruner: bool = False  # should_prune() asked at least once
    started: set[int] = field(default_factory=set)  # chunks started (or found done, or adopted)
    stuck: bool = False  # racing: chunks started for it ended without a result, it gets no more

    @property
    def n_chunks(self) -> int:
        return self.expected.plan.n_chunks

    def racer(self) -> _Racer:
        losses = {k: c.stats.loss for k, c in self.chunks.items()}
        return _Racer(self.expected.trial_number, losses, self.n_chunks, self.expected.params, self.stuck)


@dataclass(eq=False)
class _Tally:
    """The run's finished trials, counted as they finish, and its best: the run's ``summary.json``."""

    direction: str  # the first objective's
    racing: bool = False  # target_standard_error: a trial with fewer seeds than the best races it
    n_complete: int = 0
    n_failed: int = 0
    n_pruned: int = 0
    seeds_done: int = 0  # by this controller: its pace
    seeds_saved: int = 0  # seeds that pruned trials did not use
    best: Any = None  # the best complete FrozenTrial (one objective)
    pareto: list[Any] = field(default_factory=list)  # the complete trials no other beats (several objectives)
    # one objective: each complete trial's (mean, standard error or None, seeds), as races leave them (races
    # add seeds Optuna does not see)
    scores: dict[int, tuple[float, float | None, int]] = field(default_factory=dict)
    challengers: list[Any] = field(default_factory=list)  # complete trials waiting to race the best, in turn
    judged: int = 0  # complete trials judged against the best so far (their completion order)
    best_set: list[_Racer] = field(default_factory=list)  # the best first, then its members (_best_set)

    @classmethod
    def of_study(cls, study: optuna.Study, settings: _RunSettings, recorded: Mapping[str, Any] | None = None) -> _Tally:
        """The trials a study already holds (a resumed run), read once.

        With racing, the best and the challengers come from the run's ``summary.json``
        (``recorded``): the trials judged since it was written, in completion order, are judged again.
        """
        racing = settings.target_standard_error is not None and not settings.objectives
        tally = cls(_directions(settings)[0], racing)
        trials = study.get_trials(deepcopy=False)
        for frozen in trials:
            tally.count(frozen, settings, judge=not racing)
        tally.seeds_done = 0
        if racing:
            by_number = {t.number: t for t in trials if t.state.name == "COMPLETE"}
            race = (recorded or {}).get("race") or {}
            tally.best = by_number.get((recorded or {}).get("best_trial")) if race else None
            tally.challengers = [by_number[n] for n in race.get("challengers", []) if n in by_number]
            done = sorted(by_number.values(), key=lambda t: (t.datetime_complete or datetime.min, t.number))
            tally.judged = race.get("judged", 0) if tally.best else 0
            for frozen in done[tally.judged :]:
                tally.judge(frozen)
        return tally

    @property
    def n_finished(self) -> int:
        return self.n_complete + self.n_failed + self.n_pruned

    def count(self, frozen: optuna.trial.FrozenTrial, settings: _RunSettings, judge: bool = True) -> None:
        """One more finished trial (COMPLETE, FAIL or PRUNED; others are not counted)."""
        state = frozen.state.name
        n_seeds = frozen.user_attrs.get("n_seeds", 0) if state != "FAIL" else 0
        if state == "COMPLETE":
            self.n_complete += 1
            if len(settings.objectives or ()) > 1:
                self.pareto = _pareto_front([*self.pareto, frozen], _directions(settings))
            else:
                if settings.objectives:  # one objective: the component's
                    error = frozen.user_attrs.get("component_standard_errors", {}).get(next(iter(settings.objectives)))
                else:
                    error = _standard_error_of(frozen.user_attrs)
                self.scores[frozen.number] = (frozen.value, error, n_seeds)
                if judge:
                    self.judge(frozen)
        elif state == "FAIL":
            self.n_failed += 1
        elif state == "PRUNED":
            self.n_pruned += 1
            self.seeds_saved += max(0, settings.seeds.count - n_seeds)
        else:
            return
        self.seeds_done += n_seeds

    def judge(self, frozen: optuna.trial.FrozenTrial) -> None:
        """A complete trial against the run's best: it replaces it, waits to race it (racing: a better
        mean on fewer seeds), or neither."""
        self.judged += 1
        (mean, _, seeds), best = self.scores[frozen.number], self.best
        if best is not None and not _better(mean, self.scores[best.number][0], self.direction):
            return
        if best is not None and self.racing and seeds < self.scores[best.number][2]:
            self.challengers.append(frozen)
        else:
            self.best = frozen

    @property
    def best_value(self) -> float | None:
        return self.scores[self.best.number][0] if self.best else None

    def best_trials(self) -> list[Any]:
        """As Optuna's ``study.best_trials``: the Pareto set, or the one best trial."""
        return self.pareto if self.pareto else [self.best] if self.best else []

    @property
    def best_standard_error(self) -> float | None:
        return self.scores[self.best.number][1] if self.best else None

    def summary(self, settings: _RunSettings) -> dict[str, Any]:
        """The run's ``summary.json``; with several objectives, the Pareto set instead of one best."""
        several = len(settings.objectives or ()) > 1  # no best then, as Optuna's study.best_trial refuses
        return {
            "loss_name": settings.loss_name,
            "run_name": settings.run_name,
            **({"objectives": settings.objectives} if settings.objectives else {}),
            **({"best_trials": [_pareto_record(t, settings.objectives) for t in self.pareto]} if several else {}),
            "best_value": self.best_value,
            "best_standard_error": self.best_standard_error,
            "best_params": self.best.params if self.best else None if several else {},
            "best_trial": self.best.number if self.best else None,
            **({"best_set": [asdict(r.record()) for r in self.best_set]} if not settings.objectives else {}),
            # what a resume needs of the races (with best_trial): who waits to race, how many trials were judged
            **(
                {"race": {"challengers": [t.number for t in self.challengers], "judged": self.judged}}
                if self.racing
                else {}
            ),
            "n_trials": settings.n_trials,
            "n_complete": self.n_complete,
            "n_failed": self.n_failed,
            "n_pruned": self.n_pruned,
            "seeds_saved": self.seeds_saved,
            "updated_at": _now_iso(),
        }


class _Backoff:
    """Poll fast right after something changed, then slower, up to ``cap`` seconds."""

    def __init__(self, first: float, cap: float) -> None:
        self.first, self.cap, self.current = first, max(first, cap), first

    def next(self, changed: bool) -> float:
        self.current = self.first if changed else min(self.cap, self.current * 1.5)
        return self.current


class _Progress:
    """One status line on a terminal, redrawn at most twice a second; silent in log files."""

    def __init__(self, enabled: bool, total: int) -> None:
        self.enabled = enabled and sys.stderr.isatty()
        self.total = total
        self.started = time.monotonic()
        self.last = 0.0
        self.pruned: tuple[int, int] | None = None  # pruned trials and the seeds they did not use, when pruning

    def show(
        self, done: int, running: int, failed: int, best: float | None, seeds: int, waiting_for_room: bool = False
    ) -> None:
        now = time.monotonic()
        if not self.enabled or now - self.last < 0.5:
            return
        self.last = now
        rate = seeds / max(now - self.started, 1e-9)
        best_text = "-" if best is None else f"{best:.6g}"
        room = " | waiting for room under a Slurm limit" if waiting_for_room else ""
        pruned = f", {self.pruned[0]} pruned, {self.pruned[1]:,} seeds saved" if self.pruned else ""
        sys.stderr.write(
            f"\rslurptuna: trials {done}/{self.total} ({running} running, {failed} failed{pruned}) "
            f"best {best_text} | {rate:,.0f} seeds/s{room}\x1b[K"
        )
        sys.stderr.flush()

    def close(self) -> None:
        if self.enabled and self.last:
            sys.stderr.write("\n")


# ---- seeds as a budget: each chunk is reported to the pruner as it arrives
#
# Chunk k holds the same seeds in every trial, and a trial's chunks start in index order.
# WilcoxonPruner pairs the reports of two trials by step, so it is told each chunk's mean
# at step = chunk index (paired by seeds). Step-ordered pruners (Median, Percentile,
# SuccessiveHalving, Hyperband, Threshold, Patient) compare values at one step, so they are
# told the running mean of chunks 0..k-1 at step = the seeds in them: only the unbroken run
# of chunks from chunk 0 counts, so that a step means the same seeds in every trial.


def _report_form(optuna: Any, pruner: Any, chosen: str) -> str | None:
    """``'chunk'`` or ``'running_mean'`` (``prune_report``; ``'auto'`` by pruner), or None without a pruner."""
    if pruner is None or isinstance(pruner, optuna.pruners.NopPruner):
        return None
    if chosen != "auto":
        return chosen
    inner = pruner
    while isinstance(inner, optuna.pruners.PatientPruner) and inner._wrapped_pruner is not None:
        inner = inner._wrapped_pruner  # PatientPruner only delays the pruner it wraps
    return "chunk" if isinstance(inner, getattr(optuna.pruners, "WilcoxonPruner", ())) else "running_mean"


def _chunk_reports(chunks: Mapping[int, ChunkResult], form: str) -> dict[int, float]:
    """Step -> value for these chunks, in the given form (see above)."""
    if form == "chunk":
        return {index: chunk.stats.loss.mean for index, chunk in chunks.items()}
    unbroken = itertools.takewhile(chunks.__contains__, itertools.count())  # chunks 0, 1, ... up to the first gap
    running = itertools.accumulate((chunks[i].stats.loss for i in unbroken), lambda a, b: _Moments.pool([a, b]))
    return {m.count: m.mean for m in running}


class _Controller:
    """Keeps up to ``max_concurrent_trials`` trials in flight until the study has ``n_trials``.

    It owns each trial: it starts its chunks on the executor, reads its results, decides
    (``_decide``), reduces, and tells Optuna. Time comes from ``clock``; the waits between
    polls are the executor's (the local pool works during them), so the whole loop runs on
    simulated time when both are simulated.
    """

    def __init__(
        self,
        settings: _RunSettings,
        run: RunPaths,
        study: optuna.Study,
        executor: Executor,
        stop: _StopSignal,
        clock: Callable[[], float] = time.monotonic,
        callbacks: Sequence[Callable[[optuna.Study, optuna.trial.FrozenTrial], None]] = (),
    ) -> None:
        import optuna

        self._optuna = optuna
        self._callbacks = list(callbacks)
        self._settings = settings
        self._run = run
        self._study = study
        self._executor = executor
        self._stop = stop
        self._clock = clock
        self._distributions = {
            name: _distribution(optuna, spec) for name, spec in _LOSSES[settings.loss_name].parameter_space.items()
        }
        self.tally = _Tally.of_study(study, settings, _read_json(run.summary))
        self._index = _open_trial_index(run, study)
        self._active: list[_ActiveTrial] = []
        self._race: dict[int, _ActiveTrial] = {}  # the best and its challenger while they race, by trial number
        for frozen in [self.tally.best, *self.tally.challengers] if self.tally.racing and self.tally.best else []:
            trial = run.trial(frozen.number)  # races add seeds Optuna does not see: their summary.json has them
            self._rescore(frozen.number, load_valid_summary(trial, TrialParams.load(trial)))
        # One line per finished trial, through Optuna's logger: its format, its verbosity, and a
        # controller's log file tells the story (Optuna's tell() says nothing itself)
        self._trial_log = optuna.logging.get_logger("optuna.slurptuna")
        self._progress = _Progress(settings.progress, settings.n_trials)
        self._report_form = _report_form(optuna, study.pruner, settings.prune_report)
        if self._report_form == "chunk":  # WilcoxonPruner's first test imports scipy.stats: a second, not mid-run
            with contextlib.suppress(ImportError):
                importlib.import_module("scipy.stats")

    def run(self) -> None:
        """The thin loop: start trials, poll once, advance each trial, wait. Any error cancels the run's jobs."""
        backoff = _Backoff(self._executor.first_poll_seconds, self._executor.max_poll_seconds)
        # As inside study.optimize: a callback may call study.stop(), which Optuna allows only
        # in its optimize loop (a flag of this thread) and which sets study._stop_flag
        self._study._thread_local.in_optimize_loop = True
        self._study._stop_flag = False
        try:
            self._adopt_interrupted_trials()
            while True:
                changed = self._start_new_trials()
                if not self._active and not self._race:
                    return
                if self._executor.poll():
                    for active in list(self._active):
                        changed = self._advance(active) or changed
                    changed = self._advance_race() or changed
                t = self.tally
                if self._report_form is not None:
                    self._progress.pruned = (t.n_pruned, t.seeds_saved)
                waiting = not self._executor.has_room()
                self._progress.show(t.n_finished, len(self._active), t.n_failed, t.best_value, t.seeds_done, waiting)
                # a free slot is filled at once, and the last trial's (or race's) end ends the run
                pause = 0.0 if self._free_slot() or not (self._active or self._race) else backoff.next(changed)
                self._executor.wait(pause)
                if self._stop.event.is_set():
                    raise _Interrupted(f"interrupted by signal {self._stop.signum}")
        except BaseException as exc:  # Ctrl-C, a loss that cannot be imported, Slurm refusing: leave no job
            cancelled = self._executor.cancel([a.paths for a in [*self._active, *self._race.values()]])
            if isinstance(exc, _Interrupted):
                raise _Interrupted(f"{exc}; cancelled {cancelled} job(s)") from None
            raise
        finally:
            self._study._thread_local.in_optimize_loop = False
            self._progress.close()
            if self._index is not None:
                self._index.close()

    # ---- starting and adopting trials

    def _free_slot(self) -> bool:
        return (
            not self._study._stop_flag  # study.stop() from a callback: trials in flight finish, no new one
            and self.tally.n_finished + len(self._active) < self._settings.n_trials
            and len(self._active) + bool(self._race) < self._settings.max_concurrent_trials  # a race takes a slot
            and self._executor.has_room()  # under a submit limit: no new trial
        )

    def _start_new_trials(self) -> bool:
        started = self._begin_race()
        while self._free_slot() and not self._stop.event.is_set():  # no new trial once Ctrl-C came (in sbatch)
            self._begin(self._study.ask(self._distributions))
            started = True
        return started

    def _adopt_interrupted_trials(self) -> None:
        """Trials left RUNNING by a crash or Ctrl-C: same params, finished chunks kept, queued work adopted."""
        running = self._study.get_trials(deepcopy=False, states=(self._optuna.trial.TrialState.RUNNING,))
        racing = [self.tally.best.number, self.tally.challengers[0].number] if self.tally.challengers else []
        adopted = self._executor.adopt([self._run.trial(n) for n in [t.number for t in running] + racing])
        self._begin_race(adopted)  # with its chunks still queued
        for frozen in running:
            trial = self._optuna.trial.Trial(self._study, frozen._trial_id)
            attempt = frozen.user_attrs.get("attempts", 1) - 1
            self._begin(trial, adopted.get(frozen.number, frozenset()), attempt, set(frozen.intermediate_values))

    def _begin(
        self,
        trial: optuna.trial.Trial,
        queued: frozenset[int] = frozenset(),
        attempt: int = 0,
        reported: set[int] | None = None,
    ) -> None:
        """Start the trial's chunks that have neither a valid result nor a queued task (``queued``)."""
        paths = self._run.trial(trial.number)
        s = self._settings
        expected = TrialParams(trial.number, dict(trial.params), s.seeds.to_json(), s.entry_id, s.code_id)
        if _read_json(paths.params) != expected.to_json():
            _write_json_atomic(paths.params, expected.to_json())
        active = _ActiveTrial(trial, paths, expected, attempt=attempt, reported=reported or set())
        active.chunks = _read_valid_chunks(paths, expected)
        self._active.append(active)
        summary = load_valid_summary(paths, expected)
        if summary is not None and not summary.missing_chunks:
            self._complete(active, summary)
            return
        active.started = set(active.chunks) | queued
        if self._settings.target_standard_error is not None:
            to_run = list(self._wave(active, frozenset())[0])
        else:
            to_run = [c for c in range(active.n_chunks) if c not in active.started]
        if to_run:
            self._start_chunks(active, to_run)

    def _start_chunks(self, active: _ActiveTrial, chunks: Sequence[int]) -> None:
        """Start the chunks on the executor, their stale error files removed first: the one place those go."""
        active.started.update(chunks)
        stale: set[str] = set()
        with contextlib.suppress(FileNotFoundError):  # one look, not an unlink per chunk (2,000 chunks: 30 ms)
            stale = set(os.listdir(active.paths.errors_dir))
        for path in [active.paths.chunk_error(c) for c in chunks] if stale else []:
            if path.name in stale:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(path)
        self._executor.start(active.paths, active.expected, chunks, active.attempt)
        if self._settings.slurm_timeout_minutes:
            active.deadline = self._clock() + 60 * self._settings.slurm_timeout_minutes

    # ---- following a trial

    def _view(self, active: _ActiveTrial, running: bool, prune: bool) -> _TrialView:
        """The decision's input, as frozen data."""
        failures = _chunk_failures(active.paths)
        failed = frozenset(f.chunk_index for f in failures)
        target = self._settings.target_standard_error is not None
        to_start, reached = self._wave(active, failed) if target else ((), False)
        return _TrialView(
            n_chunks=active.n_chunks,
            done_chunks=frozenset(active.chunks),
            failed_chunks=failed,
            running=running,
            import_failed=any(f.kind == "import" for f in failures),
            overdue=active.deadline is not None and self._clock() > active.deadline,
            prune=prune,
            retries_left=active.attempt < self._settings.trial_retry_attempts,
            fail_on_chunk_error=self._settings.fail_on_chunk_error,
            started=frozenset(active.started) if target else None,
            to_start=to_start,
            target_reached=reached,
        )

    def _wave(self, active: _ActiveTrial, failed: frozenset[int]) -> tuple[tuple[int, ...], bool]:
        """The chunks the trial's standard error needs next, and whether it reached the target."""
        target, plan = self._settings.target_standard_error, active.expected.plan
        done = ChunkStats.pool([c.stats for c in active.chunks.values()]).loss if active.chunks else None
        counted = len(active.started - failed)
        to_start = _next_wave(plan, done, len(active.chunks), counted, active.started, target)
        return to_start, _target_reached(plan, done, len(active.chunks), target)

    def _take_results(self, active: _ActiveTrial) -> bool:
        """The results that arrived since the last look; True if there were any."""
        results = self._executor.results(active.paths)
        if len(results) == active.results_seen:  # an executor's results only grow
            return False
        active.results_seen = len(results)
        before = len(active.chunks)
        active.chunks.update(results)
        return len(active.chunks) > before

    def _advance(self, active: _ActiveTrial) -> bool:
        """Decide what the trial needs (``_decide``) and do it; True if anything changed.

        While its chunks run, the chunks that arrived are reported to Optuna first, and the
        pruner's answer is part of what is decided on.
        """
        news = self._take_results(active)
        running = self._executor.running(active.paths)
        reported = self._report_chunks(active) if news else False
        view = self._view(active, running, prune=running and self._should_prune(active, reported))
        action = _decide(view)
        if action is _Next.WAIT:
            return news
        if action in (_Next.PRUNE, _Next.FAIL_LOSS, _Next.FAIL_ALL_CHUNKS, _Next.CANCEL_OVERDUE, _Next.AT_TARGET):
            self._executor.cancel([active.paths])  # AT_TARGET: the chunks queued past the target are not needed
        if action is _Next.PRUNE:
            self._prune(active)
        elif action is _Next.START_MORE:
            self._start_chunks(active, view.to_start)
        elif action is _Next.STOP_RUN:
            raise LossError(next(f.message for f in _chunk_failures(active.paths) if f.kind == "import"))
        elif action in (_Next.FAIL_LOSS, _Next.FAIL_ALL_CHUNKS):
            first, *more = _chunk_failures(active.paths)
            log = f"\nlog: {first.log}" if first.log else ""
            self._fail(active, first.describe() + log + (f"\n({len(more)} more chunk(s) failed too)" if more else ""))
        elif action is _Next.CANCEL_OVERDUE:
            limit = self._settings.slurm_timeout_minutes
            logger.warning(
                "trial %d: over slurm_timeout_minutes=%s, cancelling its chunk tasks", active.trial.number, limit
            )
            active.deadline = None
        elif action in (_Next.COMPLETE, _Next.COMPLETE_PARTIAL, _Next.AT_TARGET):
            ran = None if view.started is None else view.done_chunks | view.failed_chunks
            partial_ok = action is _Next.COMPLETE_PARTIAL or bool(view.failed_chunks)
            summary = reduce_trial(self._run, active.trial.number, partial_ok, known=active.chunks, ran=ran)
            self._complete(active, summary)
        else:
            self._retry_or_fail(active, action, sorted(view.missing_chunks))
        return True

    def _retry_or_fail(self, active: _ActiveTrial, action: _Next, missing: list[int]) -> None:
        _check_writable(active.paths.dir)  # a task that could not write its file: stop the run, burn no attempt
        reason = self._executor.explain(active.paths, missing)
        if action is _Next.FAIL_NO_RESULT:
            self._fail(active, f"no result after {active.attempt + 1} attempt(s):\n{reason}")
            return
        active.attempt += 1
        active.trial.set_user_attr("attempts", active.attempt + 1)  # a resume goes on counting
        logger.warning(
            "trial %d: retry %d of %d, starting chunks %s again:\n%s",
            active.trial.number,
            active.attempt,
            self._settings.trial_retry_attempts,
            _format_ranges(missing),
            reason,
        )
        self._start_chunks(active, missing)

    # ---- telling Optuna: the one way a trial ends

    def _finish(
        self, active: _ActiveTrial, state: str, attrs: Mapping[str, Any], value: float | list[float] | None = None
    ) -> optuna.trial.FrozenTrial:
        """Set the trial's user attributes, let the executor forget it, merge its chunk records, tell
        Optuna, count it, rewrite summary.json, then call the user's callbacks as ``study.optimize``
        does (each gets its own copy).

        The records are merged before Optuna is told: a crash in between leaves a RUNNING
        trial whose chunks are all there, completed again on resume.
        """
        for key, attr in attrs.items():
            active.trial.set_user_attr(key, attr)
        self._executor.finished(active.paths)
        _merge_chunk_records(active.paths, active.chunks)
        frozen = self._study.tell(active.trial, value, state=self._optuna.trial.TrialState[state])
        self._active.remove(active)
        self.tally.count(frozen, self._settings)
        if frozen.state.name == "COMPLETE" and not self._settings.objectives:
            self._update_best_set(active.racer())
        if self._index is not None:
            self._index.append(FinishedTrial.of(frozen, ((c, c.finished_at) for c in active.chunks.values())).to_json())
        _write_json_atomic(self._run.summary, self.tally.summary(self._settings))
        for callback in self._callbacks:
            try:
                callback(self._study, copy.deepcopy(frozen))
            except Exception:  # re-raised as Optuna does; run() cancels the run's jobs on the way out
                logger.error(
                    "callback %s raised after trial %d: cancelling the run's jobs. Resume with run_name=%r",
                    getattr(callback, "__qualname__", callback),
                    frozen.number,
                    self._settings.run_name,
                )
                raise
        return frozen

    def _complete(self, active: _ActiveTrial, summary: TrialSummary) -> None:
        objectives = self._settings.objectives
        missing = [name for name in objectives or () if name not in summary.components]
        if missing:
            returned = sorted(summary.components) or "a number, not a dict of components"
            self._fail(
                active,
                f"loss {self._settings.loss_name!r} returned no component {missing[0]!r} of objectives="
                f"{objectives!r}; it returned {returned}",
            )
            return
        self._report_chunks(active)  # the best trial must have every step, for WilcoxonPruner
        attrs = {"n_seeds": summary.n_seeds, "std": summary.std, "standard_error": summary.standard_error}
        if summary.components:
            attrs.update(components=summary.components, component_standard_errors=summary.component_standard_errors)
        if summary.missing_chunks:
            attrs.update(missing_chunks=summary.missing_chunks)
        values = [summary.components[name] for name in objectives] if objectives else summary.mean
        frozen = self._finish(active, "COMPLETE", attrs, values)
        if objectives:
            errors = summary.component_standard_errors
            shown = ", ".join(f"{n} {summary.components[n]!r} ± {errors.get(n, math.nan):.3g}" for n in objectives)
            shown += f" (mean ± standard error over {summary.n_seeds} seeds)"
        else:
            error = math.nan if summary.standard_error is None else summary.standard_error  # an older run's summary
            shown = f"value: {summary.mean!r} (standard error {error:.3g} over {summary.n_seeds} seeds)"
        if len(objectives or ()) > 1:
            best = f"Pareto front: trials {[t.number for t in self.tally.pareto]}"
        else:
            best = f"Best is trial {self.tally.best.number} with value: {self.tally.best.value!r}"
        seconds = frozen.duration.total_seconds() if frozen.duration else 0.0
        self._trial_log.info(
            "Trial %d finished with %s and parameters: %s. %.1f s. %s.",
            frozen.number,
            shown,
            frozen.params,
            seconds,
            best,
        )

    def _fail(self, active: _ActiveTrial, reason: str) -> None:
        logger.error("trial %d failed: %s", active.trial.number, reason)
        self._finish(active, "FAIL", {"fail_reason": reason[-20000:]})

    def _prune(self, active: _ActiveTrial) -> None:
        """Tell Optuna the trial is pruned, with the statistics of the chunks it used; their files stay."""
        used = ChunkStats.pool([c.stats for c in active.chunks.values()]).loss
        attrs = {
            "n_seeds": used.count,
            "running_mean": used.mean,
            "std": used.std,
            "standard_error": used.standard_error,
        }
        self._finish(active, "PRUNED", attrs)
        self._trial_log.info(
            "Trial %d pruned after %d seeds (running mean %r, standard error %.3g) with parameters: %s.",
            *(active.trial.number, used.count, used.mean, used.standard_error, active.trial.params),
        )

    # ---- racing and the best set

    def _begin_race(self, queued: Mapping[int, frozenset[int]] | None = None) -> bool:
        """The first challenger races the best; one no longer better, or no longer on fewer seeds, need not."""
        t = self.tally
        while not self._race and t.challengers:
            challenger, best = t.challengers[0], t.best
            (mean, _, seeds), (best_mean, _, best_seeds) = t.scores[challenger.number], t.scores[best.number]
            if not _better(mean, best_mean, t.direction) or seeds >= best_seeds:
                self._end_turn(_better(mean, best_mean, t.direction))
                continue
            for number in (best.number, challenger.number):  # the best first; a resume goes on from their chunks
                side = self._race[number] = self._read_complete(number)
                side.started = set((queued or {}).get(number, ()))
            self._trial_log.info(
                "Trial %d (%r over %d seeds) races the best, trial %d (%r over %d seeds), on the chunks they share.",
                *(challenger.number, mean, seeds, best.number, best_mean, best_seeds),
            )
            return True
        return False

    def _advance_race(self) -> bool:
        """Take the race's new chunks; once none runs, decide (``_race_step``): add chunks, or end it."""
        news = [self._take_results(side) for side in self._race.values()]  # each side's, not the first's only
        if not self._race or any(self._executor.running(side.paths) for side in self._race.values()):
            return any(news)
        for number, side in self._race.items():
            if side.started - side.chunks.keys():
                logger.warning("trial %d: chunks started for its race ended without a result; it gets no more", number)
                side.stuck = True
            side.started = set()
        best, challenger = (side.racer() for side in self._race.values())
        step = _race_step(best, challenger, self.tally.direction, self._settings.racing_level)
        for number, chunks in step.add.items():
            self._start_chunks(self._race[number], chunks)
        if step.first is not None:
            self._end_race(step, best, challenger)
        return True

    def _end_race(self, step: _RaceStep, best: _Racer, challenger: _Racer) -> None:
        """Merge and reduce both trials again with their new chunks, rank them, rewrite the run's summary."""
        for number, side in self._race.items():
            self._executor.finished(side.paths)
            _merge_chunk_records(side.paths, side.chunks)
            self._rescore(number, reduce_trial(self._run, number, True, known=side.chunks, ran=side.chunks.keys()))
        self.tally.best_set = [r for r in self.tally.best_set if r.number not in self._race]  # their chunks grew
        self._race = {}
        self._trial_log.info(
            "Trial %d ranks first after its race with trial %d (%s; one-sided paired t-test p=%.3g on %d shared "
            "chunks): trial %d %r over %d seeds, trial %d %r over %d seeds.",
            *(step.first, challenger.number if step.first == best.number else best.number),
            "separated" if step.p_value < self._settings.racing_level else "not separated, lower mean first",
            *(step.p_value, len(best.chunks.keys() & challenger.chunks.keys())),
            *(best.number, best.pooled.mean, best.pooled.count),
            *(challenger.number, challenger.pooled.mean, challenger.pooled.count),
        )
        self._end_turn(step.first == challenger.number)

    def _end_turn(self, won: bool) -> None:
        """The first challenger's turn is over: it replaces the best if it won; the best set and summary follow."""
        challenger = self.tally.challengers.pop(0)
        if won:
            self.tally.best = challenger
        self._update_best_set(self._read_complete(challenger.number).racer())
        _write_json_atomic(self._run.summary, self.tally.summary(self._settings))

    def _update_best_set(self, new: _Racer) -> None:
        """The trials a paired test cannot tell from the best (``_best_set``), for the run's summary.json.

        Candidates are prefiltered by their unpaired means and standard errors (within _NEAR_BEST
        of the best's); while the best and its seeds stay, only the ``new`` trial can join. The
        members' chunks are kept, the others' read from their files.
        """
        t = self.tally
        if t.best is None or self._settings.objectives:
            return
        kept = {r.number: r for r in [*t.best_set, new]}
        best = kept.get(t.best.number) or self._read_complete(t.best.number).racer()
        sign = 1.0 if t.direction == "minimize" else -1.0

        def near(number: int) -> bool:
            mean, error, _ = t.scores[number]
            gap = sign * (mean - best.pooled.mean)
            return error is None or not gap > _NEAR_BEST * math.hypot(error, best.pooled.standard_error)

        last = t.best_set[0] if t.best_set else None  # the best the set was computed against
        same_best = last is not None and (last.number, last.pooled.count) == (best.number, best.pooled.count)
        candidates = [n for n in (kept if same_best else t.scores) if n in t.scores and near(n)]
        racers = [kept.get(n) or self._read_complete(n).racer() for n in candidates]
        t.best_set = _best_set(best, racers, t.direction, self._settings.racing_level)

    def _read_complete(self, number: int) -> _ActiveTrial:
        """A complete trial (Optuna was told) with its valid chunks on disk, to race or to rank in the best set."""
        paths = self._run.trial(number)
        expected = TrialParams.load(paths)
        return _ActiveTrial(None, paths, expected, _read_valid_chunks(paths, expected))

    def _rescore(self, number: int, summary: TrialSummary | None) -> None:
        if summary is not None:
            self.tally.scores[number] = (summary.mean, summary.standard_error, summary.n_seeds)

    # ---- seeds as a budget: reporting chunks, pruning

    def _report_chunks(self, active: _ActiveTrial) -> bool:
        """Tell Optuna of the trial's chunks that arrived since the last look; True if there was news."""
        if self._report_form is None:
            return False
        steps = _chunk_reports(active.chunks, self._report_form)
        new = sorted(step for step in steps if step not in active.reported)
        for step in new:
            active.trial.report(steps[step], step)
            active.reported.add(step)
        return bool(new)

    def _should_prune(self, active: _ActiveTrial, reported: bool) -> bool:
        """Ask the pruner after news (or once after a resume); never once every chunk is in."""
        if (
            self._report_form is None
            or not active.chunks
            or not active.reported
            or len(active.chunks) == active.n_chunks
            or (active.asked_pruner and not reported)
        ):
            return False
        active.asked_pruner = True
        return active.trial.should_prune()


def _merge_chunk_records(trial: TrialPaths, chunks: Mapping[int, ChunkResult]) -> None:
    """A finished trial's chunk records become one file, ``chunks.jsonl``, and ``chunks/`` goes.

    A site counts inodes, and a metadata server suffers many small files: a finished trial
    keeps a handful of files whatever its chunk count, and every per-chunk statistic stays
    readable (pruning, racing and resume need them). The merged file is written whole before
    any record file is removed, so a crash in between leaves both, and the reader takes each
    chunk once; failed chunks keep their error records.
    """
    if chunks:
        _write_atomic(trial.merged_chunks, _merged_records(trial, chunks))
    with contextlib.suppress(FileNotFoundError), os.scandir(trial.chunks_dir) as entries:
        for entry in list(entries):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(entry.path)
    with contextlib.suppress(OSError):  # gone already, or a cancelled task wrote meanwhile
        os.rmdir(trial.chunks_dir)


def _merged_records(trial: TrialPaths, chunks: Mapping[int, ChunkResult]) -> bytes:
    """The lines of the trial's record files when they hold just ``chunks`` (as many whole lines as
    chunks: no stale, repeated or cut record among them), else the records encoded anew.

    Encoding is the cost: 2,000 records take about as long as a pool evaluating 200,000 seeds of
    a no-op loss.
    """
    paths = [trial.merged_chunks]
    with contextlib.suppress(FileNotFoundError), os.scandir(trial.chunks_dir) as entries:
        paths += sorted(e.path for e in entries if e.name.endswith(".jsonl") or _CHUNK_FILE_NAME.fullmatch(e.name))
    lines: list[bytes] = []
    for path in paths:
        with contextlib.suppress(FileNotFoundError), open(path, "rb") as handle:
            data = handle.read()
            lines += data[: data.rfind(b"\n") + 1].splitlines()
    if len(lines) == len(chunks):
        return b"\n".join(lines) + b"\n"
    return "".join(json.dumps(chunks[i].to_json()) + "\n" for i in sorted(chunks)).encode()


def _open_trial_index(run: RunPaths, study: optuna.Study) -> _RecordFile | None:
    """The run's ``trials.jsonl`` to append to, with the finished trials it lacks; None for a run begun without it.

    A controller killed between telling Optuna and appending leaves a trial out: it is added
    here from the study and its records. A run whose study already had finished trials when
    there was no index keeps none (status reads its study, as before).
    """
    finished = [t for t in study.get_trials(deepcopy=False) if t.state.is_finished()]
    if run.trials_index.exists():
        _cut_half_written_record(run.trials_index)
        indexed = {r.get("number") for r in _read_records(run.trials_index)[0] if isinstance(r, dict)}
        finished = [t for t in finished if t.number not in indexed]
    elif finished:
        return None
    else:
        run.trials_index.touch()
    index = _RecordFile(run.trials_index)
    for frozen in finished:
        index.append(FinishedTrial.of(frozen, _ended_chunks(run.trial(frozen.number))).to_json())
    return index


def _chunk_failures(trial: TrialPaths) -> list[ChunkFailure]:
    try:
        names = sorted(os.listdir(trial.errors_dir))
    except FileNotFoundError:
        return []
    records = [_read_json(trial.errors_dir / n) for n in names if n.endswith(".json")]
    return [ChunkFailure.from_json(r) for r in records if r]


def _better(value: float, than: float, direction: str) -> bool:
    return value < than if direction == "minimize" else value > than


def _pareto_front(trials: Iterable[Any], directions: Sequence[str]) -> list[Any]:
    """The complete trials that no other dominates (as Optuna's ``study.best_trials``), by number."""
    signs = [1.0 if d == "minimize" else -1.0 for d in directions]

    def dominates(a: Any, b: Any) -> bool:  # no worse in every objective and better in one
        x, y = ([s * v for s, v in zip(signs, t.values, strict=True)] for t in (a, b))
        return all(p <= q for p, q in zip(x, y, strict=True)) and x != y

    front: list[Any] = []
    for trial in trials:
        if not any(dominates(f, trial) for f in front):
            front = [f for f in front if not dominates(trial, f)] + [trial]
    return sorted(front, key=lambda t: t.number)


def _pareto_record(frozen: Any, objectives: Mapping[str, str]) -> dict[str, Any]:
    """One trial of the Pareto set as summary.json and ``status --json`` show it."""
    errors = frozen.user_attrs.get("component_standard_errors", {})
    return {
        "trial": frozen.number,
        "values": dict(zip(objectives, frozen.values, strict=True)),
        "standard_errors": {name: errors.get(name) for name in objectives},
        "params": dict(frozen.params),
    }


def _distribution(optuna: Any, spec: Any) -> Any:
    d = optuna.distributions
    if not isinstance(spec, SearchParam):
        return spec
    if spec.allowed is not None:
        return d.CategoricalDistribution(list(spec.allowed))
    low, high = spec.range  # type: ignore[misc]
    if spec.dtype == "int":
        return d.IntDistribution(int(low), int(high), log=spec.log, step=int(spec.step or 1))
    return d.FloatDistribution(low, high, log=spec.log, step=spec.step)


def _default_sampler(optuna: Any, settings: _RunSettings, n_existing: int) -> Any:
    """TPE seeded from ``random_seed`` and the trials already there: a resume proposes new points."""
    seed = settings.random_seed if n_existing == 0 else (settings.random_seed * 1_000_003 + n_existing) % 2**32
    return optuna.samplers.TPESampler(seed=seed, constant_liar=settings.max_concurrent_trials > 1)


def _enqueue_points(study: optuna.Study, settings: _RunSettings) -> None:
    """Queue the ``enqueue`` points that the study has neither evaluated nor queued (a resume
    skips them); ``study.ask`` then pops them in order before the sampler proposes anything."""
    if not settings.enqueue:
        return
    before = len(study.get_trials(deepcopy=False))
    for point in settings.enqueue:
        study.enqueue_trial(point, skip_if_exists=True)
    states = collections.Counter(t.state.name for t in study.get_trials(deepcopy=False))
    added = sum(states.values()) - before
    logger.info("enqueued %d point(s); %d already in the study", added, len(settings.enqueue) - added)
    left = settings.n_trials - sum(n for state, n in states.items() if state != "WAITING")
    if states["WAITING"] > left:
        logger.warning(
            "%d enqueued point(s) wait in the study but %d trial(s) are left of n_trials=%d: "
            "the rest run when the run is resumed with a larger n_trials",
            states["WAITING"],
            max(left, 0),
            settings.n_trials,
        )


def _uses_sqlite(run: RunPaths) -> bool:
    return run.optuna_db.exists() and not run.journal.exists()


def _study_storage(run: RunPaths, writer: bool = False) -> Any:
    """The run's study: Optuna's journal file ``optuna.journal`` (an older run's ``optuna.db`` stays SQLite).

    Measured (benchmark/STORAGE.md): at 10,000 trials a journal costs the controller 9-14 ms a
    trial against SQLite's 44-65 ms; readers (status, optuna-dashboard) take no lock, so they
    never hold up the writer, also on NFS, where Optuna recommends it. The writer, which holds
    the run's controller lock, first cuts a record that a crash left half-written (Optuna
    would fail on the next write) and removes a stale lock file of a killed writer.
    """
    import optuna

    if _uses_sqlite(run):
        return f"sqlite:///{run.optuna_db}"
    try:
        from optuna.storages.journal import JournalFileBackend, JournalFileSymlinkLock
    except ImportError:  # optuna < 4.0
        from optuna.storages import JournalFileStorage as JournalFileBackend  # type: ignore[no-redef]
        from optuna.storages import JournalFileSymlinkLock  # type: ignore[no-redef]
    path = str(run.journal)
    if writer:
        _cut_half_written_record(run.journal)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path + ".lock")
    return optuna.storages.JournalStorage(JournalFileBackend(path, lock_obj=JournalFileSymlinkLock(path)))


def _cut_half_written_record(path: Path) -> None:
    """Truncate the file after its last newline: the rest is a record a crash cut."""
    try:
        with open(path, "rb+") as handle:
            handle.seek(0, os.SEEK_END)
            size = handle.tell()
            handle.seek(max(0, size - (1 << 20)))
            tail = handle.read()
            cut = tail.rfind(b"\n") + 1  # 0: no whole record in the tail
            if tail and not tail.endswith(b"\n") and (cut or len(tail) == size):  # a cut first record goes too
                handle.truncate(size - len(tail) + cut)
    except FileNotFoundError:
        pass


@contextlib.contextmanager
def _controller_lock(run: RunPaths) -> Iterable[None]:
    """One controller per run: a second one would submit every job twice.

    Forked pool workers close their copy of the lock's file (``_CONTROLLER_LOCKS``): a worker
    that outlives a killed controller for a moment must not keep the resume out.
    """
    import fcntl

    with open(run.lock, "a+") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            handle.seek(0)
            raise ConfigError(f"another controller (pid {handle.read().strip() or '?'}) is running {run.dir}") from None
        handle.truncate(0)
        handle.write(str(os.getpid()))
        handle.flush()
        _CONTROLLER_LOCKS.add(handle.fileno())
        try:
            yield
        finally:
            _CONTROLLER_LOCKS.discard(handle.fileno())


_CONTROLLER_LOCKS: set[int] = set()  # file descriptors of the controller locks this process holds


@contextlib.contextmanager
def _stops_when_unwritable(
    settings: _RunSettings, run: RunPaths | None = None, database: Path | None = None
) -> Iterable[None]:
    """Disk full, over quota or read-only: a ``RunDirError`` of one line instead of a traceback.

    By then ``_Controller.run`` has cancelled the run's jobs, as on Ctrl-C; no trial was told
    FAIL for it, so a resume finishes the trials in flight with the chunks they have.
    """
    try:
        yield
    except Exception as exc:
        cause = _unwritable_cause(exc, database)
        if cause is None:
            raise
        path = cause.filename or (run.dir if run else settings.run_root)
        cause_text = f"{os.strerror(cause.errno)} ({errno.errorcode[cause.errno]})"
        when = _UNWRITABLE[cause.errno]
        resume = f"Run it again {when}" if settings.run_name is None else f"{_resume_hint(settings)} {when}"
        jobs = "its Slurm jobs cancelled, " if settings.mode == ExecutionMode.DISTRIBUTED.value else ""
        stopped = f"the run stopped ({jobs}the chunks written are kept)"
        raise RunDirError(
            f"slurptuna: cannot write {path}: {cause_text}; {stopped}. {resume}.",
            str(path),
            errno.errorcode[cause.errno],
            settings.run_name,
        ) from exc


def _resume_hint(settings: _RunSettings) -> str:
    return f"Resume with run_name={settings.run_name!r} (run_root={settings.run_root!r})"


def _sqlite_file(storage: Any, run: RunPaths) -> Path | None:
    """The study's SQLite file: an older run's ``optuna.db``, or a ``storage="sqlite:///..."`` of the user's."""
    if storage is None:
        return run.optuna_db if _uses_sqlite(run) else None
    if isinstance(storage, str) and storage.startswith("sqlite:///"):
        return Path(storage.removeprefix("sqlite:///"))
    return None


def _unwritable_cause(exc: BaseException, database: Path | None) -> OSError | None:
    """The disk-full, over-quota or read-only error behind ``exc`` (through Optuna's own errors), or None."""
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, OSError) and exc.errno in _UNWRITABLE:
            return exc
        if type(exc).__module__ == "sqlite3" and database is not None:
            if "database or disk is full" in str(exc):
                return OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(database))
            try:  # SQLite says "disk I/O error" or "readonly database": a write beside it tells which
                _check_writable(database.parent)
            except OSError as probe:
                if probe.errno in _UNWRITABLE:
                    return OSError(probe.errno, probe.strerror, str(database))
            return None
        exc = exc.__cause__ or (None if exc.__suppress_context__ else exc.__context__)
    return None


# The executors, by mode: a new one is a class with the Executor interface and a row here. Each is
# made as ``cls(settings, run, stop_event, cores, clock=clock)``.
_EXECUTORS: dict[ExecutionMode, Callable[..., Executor]] = {
    ExecutionMode.SINGLE: _LocalExecutor,
    ExecutionMode.DISTRIBUTED: _SlurmExecutor,
}


def _run_study(
    settings: _RunSettings,
    *,
    sampler: Any,
    storage: Any,
    pruner: Any,
    stop: _StopSignal,
    callbacks: Sequence[Callable[..., Any]] = (),
    cores: int | None = None,
    clock: Callable[[], float] = time.monotonic,
) -> OptimizeResult:
    """Open (or resume) the run and its study, then run the controller with the mode's executor.

    ``clock``: the controller's and the executor's time (a simulation passes its own).
    """
    import optuna

    with _stops_when_unwritable(settings):
        run, settings = _open_run(settings)
    with _stops_when_unwritable(settings, run, _sqlite_file(storage, run)), _controller_lock(run):
        study = optuna.create_study(
            study_name=settings.run_name,
            storage=_study_storage(run, writer=True) if storage is None else storage,
            load_if_exists=True,
            directions=_directions(settings),
            pruner=optuna.pruners.NopPruner() if pruner is None else pruner,  # Optuna's default would be MedianPruner
            sampler=sampler,
        )
        if sampler is None:
            study.sampler = _default_sampler(optuna, settings, len(study.get_trials(deepcopy=False)))
        _enqueue_points(study, settings)
        executor = _EXECUTORS[execution_mode(settings.mode)](settings, run, stop.event, cores, clock=clock)
        controller = _Controller(settings, run, study, executor, stop, clock, callbacks)
        try:
            controller.run()
        except _Interrupted as exc:
            print(f"slurptuna: {exc}. {_resume_hint(settings)}", file=sys.stderr)
            raise SystemExit(130 if stop.signum == signal.SIGINT else 143) from None
        except SlurmError as exc:  # the run's jobs are cancelled; what was computed stays
            print(
                f"slurptuna: the run stopped: {exc}\n{_resume_hint(settings)} once Slurm accepts the jobs",
                file=sys.stderr,
            )
            raise
        finally:
            executor.close()
        summary = controller.tally.summary(settings)
        _write_json_atomic(run.summary, summary)
    return OptimizeResult(
        loss_name=settings.loss_name,
        best_value=summary["best_value"],
        best_params=summary["best_params"],
        n_trials=settings.n_trials,
        study_name=study.study_name,
        run_dir=str(run.dir),
        run_name=settings.run_name,
        mode=execution_mode(settings.mode),
        n_complete=summary["n_complete"],
        n_failed=summary["n_failed"],
        n_pruned=summary["n_pruned"],
        best_standard_error=summary["best_standard_error"],
        best_trials=controller.tally.best_trials(),
        best_set=[r.record() for r in controller.tally.best_set],
        study=study,
    )


# ============================================================================
# Validate: the run's best trials again, on fresh seeds
# ============================================================================
#
# The best of many noisy means is biased towards a lucky draw of seeds. `validate` evaluates
# the top trials again on seeds the run never used, as a child run ``RUN_DIR/validation_v0001/``
# made by ``_run_study`` from the run's own meta.json, with the candidates enqueued: resume,
# Slurm's faults, Ctrl-C and the files are a run's. Chunk k holds the same seeds for every
# candidate, so their chunk means are paired; the probability that each is the best is a
# bootstrap over chunk indices.

_VALIDATION_PREFIX = "validation"
_BOOTSTRAP_SAMPLES = 2000  # P(best) to within about +-0.01
_BOOTSTRAP_SEED = 0  # the same files give the same probabilities


@dataclass(frozen=True)
class ValidationCandidate:
    """One trial of the run evaluated again: its mean in the run and on the fresh seeds."""

    trial: int  # its number in the run
    params: dict[str, ParamValue]
    run_mean: float
    run_standard_error: float | None
    mean: float | None = None  # on the fresh seeds; None if the validation of it failed
    standard_error: float | None = None
    n_seeds: int = 0
    p_best: float = 0.0  # the share of bootstrap samples of the chunks in which its mean is the best


@dataclass(frozen=True)
class ValidationResult(_Record):
    """What ``validate`` returns and ``RUN_DIR/validation.json`` holds; ``pick`` is the chosen trial's number."""

    run_dir: str
    validation_dir: str
    direction: str
    seeds: dict[str, Any]  # the fresh seeds, as meta.json records a run's
    candidates: list[ValidationCandidate]
    pick: int | None
    method: str  # how p_best was estimated

    @property
    def best(self) -> ValidationCandidate | None:
        return next((c for c in self.candidates if c.trial == self.pick), None)

    @classmethod
    def from_json(cls, record: Mapping[str, Any]) -> ValidationResult:
        return cls(**{**record, "candidates": [ValidationCandidate(**c) for c in record["candidates"]]})


def validate(
    run_dir: str | os.PathLike[str],
    top: int | str = 5,
    n_seeds: int | None = None,
    *,
    seed_start: int | None = None,
    seeds: Iterable[int] | None = None,
    chunk_size: int | None = None,
    progress: bool = True,
) -> ValidationResult:
    """Evaluate the run's ``top`` trials by mean (or ``top="best-set"``: its best set) again on fresh seeds.

    The seeds are ``n_seeds`` (default: the run's count) from ``seed_start`` (default: right after
    the run's largest seed), or an explicit ``seeds`` list; seeds the run used are refused. The
    candidates run in the run's mode with everything it recorded (loss module, argv, code,
    chunk_size, Slurm options), all at once, in ``RUN_DIR/validation_v%04d/``. The same call again
    resumes an interrupted validation (finished chunks are kept); other candidates or seeds start
    the next ``validation_v%04d``. ``RUN_DIR/validation.json`` holds the latest result.

    P(best): the candidates share every chunk's seeds, so their chunk means are paired. The
    chunks are resampled with replacement (``_BOOTSTRAP_SAMPLES`` times, ``random.Random(0)``);
    a candidate's share of the samples in which its seed-weighted mean is the best (ties split)
    is its probability. The pick is the best validation mean.
    """
    _refuse_inside_worker("validate")
    run = RunPaths(Path(run_dir).resolve())
    if not run.meta.is_file():
        raise ConfigError(f"run_dir {os.fspath(run_dir)!r} is not a slurptuna run (no meta.json there)")
    settings = _read_run_settings(run)
    candidates = _validation_candidates(run, settings, top)
    definition = _load_run_loss(settings)
    plan = _fresh_seeds(definition, settings.seeds, n_seeds, seed_start, seeds, chunk_size)
    child = replace(
        settings,
        seeds=plan,
        enqueue=[c.params for c in candidates],
        n_trials=len(candidates),
        max_concurrent_trials=len(candidates),  # independent trials: all at once, sharing each chunk's seeds
        run_root=str(run.dir),
        run_id="",
        progress=progress,
        target_standard_error=None,  # every candidate gets every seed: no early stop, no race
    )
    child = replace(child, run_name=_validation_name(run, child))
    with _StopSignal() as stop:
        try:
            done = _run_study(child, sampler=None, storage=None, pruner=None, stop=stop)
        except SystemExit:
            print(f"slurptuna validate: the same validate call or command on {run.dir} resumes it", file=sys.stderr)
            raise
    result = _validation_result(run, settings, candidates, plan, done)
    for where in (run, RunPaths(Path(done.run_dir))):
        _write_json_atomic(where.validation, result.to_json())
    return result


def _validation_candidates(run: RunPaths, settings: _RunSettings, top: int | str) -> list[ValidationCandidate]:
    """The ``top`` complete trials by mean, best first, each params once; or the best set of summary.json."""
    directions = _directions(settings)
    if len(directions) > 1:
        raise ConfigError(
            f"{run.dir} optimizes {len(directions)} objectives {settings.objectives}: validate ranks trials by one "
            "mean; validate a run of one objective"
        )
    if top == "best-set":
        return _distinct(_best_set_candidates(run), None)
    if isinstance(top, bool) or not isinstance(top, numbers.Integral) or top < 1:
        raise ConfigError(f"top must be an integer >= 1 or 'best-set', got {top!r}")
    trials = _read_study_trials(run, settings.run_name or run.dir.name)
    complete = [t for t in trials if t.state.name == "COMPLETE" and t.value is not None]
    if not complete:
        raise ConfigError(f"{run.dir} has no complete trial to validate yet ({len(trials)} trial(s) in its study)")
    sign = 1 if directions[0] == "minimize" else -1
    ranked = sorted(complete, key=lambda t: (sign * t.value, t.number))
    error = partial(_best_standard_error, objectives=settings.objectives)  # read only for the trials kept
    kept = (ValidationCandidate(t.number, dict(t.params), t.value, error(run.trial(t.number), t)) for t in ranked)
    return _distinct(kept, top)


def _distinct(candidates: Iterable[ValidationCandidate], limit: int | None) -> list[ValidationCandidate]:
    """The first ``limit`` candidates with params of their own: Optuna's enqueue skips a repeated
    point, and the study would sample a new one in its place."""
    kept: list[ValidationCandidate] = []
    for candidate in candidates:
        if limit is not None and len(kept) == limit:
            break
        if all(k.params != candidate.params for k in kept):
            kept.append(candidate)
    return kept


def _best_set_candidates(run: RunPaths) -> list[ValidationCandidate]:
    record = _read_json(run.summary)
    best_set = record.get("best_set") if isinstance(record, dict) else None
    if not best_set:
        raise ConfigError(
            f"{run.summary} has no best_set (a run of one objective keeps one once a trial is complete): "
            "validate top=K instead"
        )
    return [
        ValidationCandidate(t.number, t.params, t.mean, t.standard_error) for t in (BestSetTrial(**r) for r in best_set)
    ]


def _load_run_loss(settings: _RunSettings) -> LossDefinition:
    """The run's loss in this process, with the code the run recorded (the controller needs its parameter space)."""
    definition = _LOSSES.get(settings.loss_name)
    if definition is not None and _code_id(definition) == settings.code_id:
        return definition
    if settings.loss_ref.get("interactive"):
        raise ConfigError(
            f"loss {settings.loss_name!r} was defined interactively: define it (the same code) in this session first"
        )
    return _import_loss(settings, settings.code_id)


def _fresh_seeds(
    definition: LossDefinition,
    used: SeedPlan,
    n_seeds: int | None,
    seed_start: int | None,
    seeds: Iterable[int] | None,
    chunk_size: int | None,
) -> SeedPlan:
    """The validation's seeds, checked as a run's; refused, naming the overlap, where the run used them."""
    last = used.start + used.count - 1 if used.explicit is None else max(used.explicit)
    if seeds is not None and seed_start is not None:
        raise ConfigError(f"give seeds or seed_start, not both (seed_start={seed_start!r})")
    if seed_start is not None and (isinstance(seed_start, bool) or not isinstance(seed_start, numbers.Integral)):
        raise ConfigError(f"seed_start must be an integer, got {seed_start!r}")
    count = used.count if n_seeds is None and seeds is None else n_seeds
    plan = SeedPlan.resolve(definition, seeds, count, used.chunk_size if chunk_size is None else chunk_size, None)
    if seeds is None:
        plan = replace(plan, start=last + 1 if seed_start is None else seed_start)
    x, y = (range(p.start, p.start + p.count) if p.explicit is None else frozenset(p.explicit) for p in (plan, used))
    small, large = sorted((x, y), key=len)  # membership in a range is arithmetic
    overlap = _format_ranges(s for s in small if s in large)  # "5-9,12"
    if overlap:
        raise ConfigError(
            f"{plan.describe()} overlap the run's {used.describe()} at seeds {overlap}: validation needs seeds "
            f"the run never used; give seed_start >= {last + 1} (the default) or seeds outside the run's"
        )
    return plan


def _validation_name(run: RunPaths, child: _RunSettings) -> str:
    """The validation of these candidates on these seeds if one was started (it resumes), else the next one."""
    for meta in sorted(run.dir.glob(f"{_VALIDATION_PREFIX}_v*/meta.json")):
        recorded = _read_json(meta) or {}
        if recorded.get("enqueue") == child.enqueue and recorded.get("seeds") == child.seeds.to_json():
            return meta.parent.name
    return _create_versioned_dir(run.dir, _VALIDATION_PREFIX).name


def _validation_result(
    run: RunPaths, settings: _RunSettings, candidates: list[ValidationCandidate], plan: SeedPlan, done: OptimizeResult
) -> ValidationResult:
    """Each candidate's validation mean, standard error and P(best), read from the child run's files."""
    child = RunPaths(Path(done.run_dir))
    objective = next(iter(settings.objectives)) if settings.objectives else None
    by_params = {json.dumps(t.params, sort_keys=True): t for t in done.study.get_trials(deepcopy=False)}
    measured, chunk_means = [], []
    for candidate in candidates:
        frozen = by_params.get(json.dumps(candidate.params, sort_keys=True))
        if frozen is None or frozen.state.name != "COMPLETE":
            measured.append(candidate)
            chunk_means.append(None)
            continue
        trial = child.trial(frozen.number)
        chunks = _read_valid_chunks(trial, TrialParams.load(trial))
        stats = {i: c.stats.components[objective] if objective else c.stats.loss for i, c in chunks.items()}
        chunk_means.append({i: (m.count, m.mean) for i, m in stats.items()})
        error = _best_standard_error(trial, frozen, settings.objectives)
        n_seeds = frozen.user_attrs["n_seeds"]
        measured.append(replace(candidate, mean=frozen.value, standard_error=error, n_seeds=n_seeds))
    direction = _directions(settings)[0]
    p_best, shared = _p_best(chunk_means, direction)
    sign = 1 if direction == "minimize" else -1
    ranked = sorted((c for c in measured if c.mean is not None), key=lambda c: (sign * c.mean, c.trial))
    return ValidationResult(
        run_dir=str(run.dir),
        validation_dir=str(child.dir),
        direction=direction,
        seeds=plan.to_json(),
        candidates=[replace(c, p_best=p) for c, p in zip(measured, p_best, strict=True)],
        pick=ranked[0].trial if ranked else None,
        method=f"paired bootstrap over {shared} shared chunks, {_BOOTSTRAP_SAMPLES} resamples, random.Random(0)",
    )


def _p_best(chunk_means: Sequence[Mapping[int, tuple[int, float]] | None], direction: str) -> tuple[list[float], int]:
    """Each candidate's probability of having the best mean, and the number of chunks they share.

    ``chunk_means``: per candidate, chunk index -> (seeds, mean), or None (its validation failed:
    probability 0). A bootstrap sample draws the shared chunk indices with replacement, the same
    draw for every candidate (paired); each candidate's mean over it is weighted by seeds, and
    the best wins the sample (ties split it). Compared by sums, as the seeds are the same.
    """
    import random

    measured = [m for m in chunk_means if m is not None]
    shared = sorted(set.intersection(*(set(m) for m in measured))) if measured else []
    if not shared:
        return [0.0] * len(chunk_means), 0
    sign = 1.0 if direction == "minimize" else -1.0
    sums = [[sign * m[i][0] * m[i][1] for i in shared] if m is not None else None for m in chunk_means]
    rng = random.Random(_BOOTSTRAP_SEED)
    wins = [0.0] * len(chunk_means)
    for _ in range(_BOOTSTRAP_SAMPLES):
        draw = rng.choices(range(len(shared)), k=len(shared))
        totals = {j: sum(map(s.__getitem__, draw)) for j, s in enumerate(sums) if s is not None}
        best = min(totals.values())
        winners = [j for j, total in totals.items() if total == best]
        for j in winners:
            wins[j] += 1 / len(winners)
    return [w / _BOOTSTRAP_SAMPLES for w in wins], len(shared)


_VALIDATION_COLUMNS = ("", "trial", "run mean ± SE", "validation mean ± SE", "P(best)", "params")


def _validation_cells(v: ValidationResult, c: ValidationCandidate) -> list[str]:
    mean = "failed" if c.mean is None else f"{c.mean:.6g}{_plus_minus(c.standard_error)}"
    run_mean = f"{c.run_mean:.6g}{_plus_minus(c.run_standard_error)}"
    return ["*" if c.trial == v.pick else "", str(c.trial), run_mean, mean, f"{c.p_best:.3f}", _format_params(c.params)]


def format_validation(v: ValidationResult) -> list[str]:
    """The validation as a table: run and validation mean +- SE and P(best) per candidate, the pick marked."""
    caption = f"validation on {SeedPlan.from_json(v.seeds).describe()} ({Path(v.validation_dir).name}), * = the pick:"
    widths = (1, 6, 22, 22, 7)
    rows = [_VALIDATION_COLUMNS, *(_validation_cells(v, c) for c in v.candidates)]
    return [caption] + [
        "  " + "  ".join([*(f"{cell:<{w}}" for cell, w in zip(row, widths, strict=False)), row[-1]]) for row in rows
    ]


def _validate_main(argv: Sequence[str]) -> int:
    import argparse

    parser = argparse.ArgumentParser(prog="python -m slurptuna validate", usage=_USAGE)
    parser.add_argument("run_dir", type=Path)
    parser.add_argument("--top", type=int, default=5, help="the number of best trials to validate (5)")
    parser.add_argument("--best-set", action="store_true", help="the run's best set instead of --top")
    parser.add_argument("--seeds", type=int, dest="n_seeds", help="fresh seeds per candidate (the run's count)")
    parser.add_argument("--seed-start", type=int, help="the first fresh seed (the run's largest + 1)")
    parser.add_argument("--chunk-size", type=int, help="seeds per chunk (the run's)")
    parser.add_argument("--json", action="store_true", help="print the result as one JSON object")
    args = parser.parse_args(argv)
    try:
        result = validate(
            args.run_dir,
            "best-set" if args.best_set else args.top,
            args.n_seeds,
            seed_start=args.seed_start,
            chunk_size=args.chunk_size,
        )
    except SlurptunaError as exc:
        return _command_failed("validate", exc)
    print(json.dumps(result.to_json(), indent=1) if args.json else "\n".join(format_validation(result)))
    return 0


# ============================================================================
# Status: what a run's files and the queue say, for a person or a script
# ============================================================================
#
# `python -m slurptuna status RUN_DIR` must never disturb a live run: every file it
# reads was written atomically or appended whole (trials.jsonl), an older run's study is
# read without a lock (optuna.db read-only), and the controller's lock is only tested (a
# shared, non-blocking flock released at once), never kept.
# Reading (`read_status`) is kept apart from drawing (`format_status`, pure).

_ACTIVE_GAP_SECONDS = 600  # a pause in chunk work longer than this (a dead controller) does not count in the pace


class StatusError(SlurptunaError):
    """A directory that status cannot show: not a run, an unknown file format, optuna.db kept locked."""


class _DatabaseBusy(StatusError):
    pass


@dataclass(frozen=True)
class JobStatus:
    """One Slurm job of a running trial, as one ``squeue`` call showed it."""

    job_id: str
    kind: str  # "chunks" (an array job) or "reduce"
    chunks: str  # the array job's chunks, "0-9"; "" for the reduce job
    tasks: dict[str, int] | None  # state -> array tasks in it; {} when Slurm no longer lists it; None: not asked
    pending_reasons: list[str]  # squeue's %r for pending tasks: Dependency, JobArrayTaskLimit, Priority ...


@dataclass(frozen=True)
class RunningTrial:
    number: int
    params: dict[str, ParamValue]
    chunks_done: int
    n_chunks: int
    seeds_done: int
    seeds_per_second: float | None  # since its first chunk started; None before a chunk is done
    jobs: list[JobStatus]


@dataclass(frozen=True)
class FailedTrial:
    number: int
    reason: str  # the first line of the trial's fail_reason
    log: str | None


@dataclass(frozen=True)
class ParetoTrial:
    """A trial of the Pareto set (several objectives): each objective's mean and standard error."""

    number: int
    values: dict[str, float]
    standard_errors: dict[str, float | None]
    params: dict[str, ParamValue]


@dataclass(frozen=True)
class RunStatus:
    """Everything ``status`` shows of one run, read at ``checked_at``."""

    run_dir: str
    run_name: str
    run_root: str
    loss_name: str
    mode: str
    n_trials: int
    n_complete: int
    n_running: int
    n_failed: int
    n_pruned: int
    best_trial: int | None
    best_value: float | None
    best_standard_error: float | None  # std / sqrt(n_seeds) of the best trial
    best_params: dict[str, ParamValue]
    running: list[RunningTrial]
    failed: list[FailedTrial]
    controller_holds_run: bool
    controller_pid: int | None
    core_hours: float  # chunk compute: elapsed seconds x processes, over every chunk file
    seeds_done: int
    seeds_per_second: float | None  # the run's pace over its active time
    hours_left: float | None
    core_hours_left: float | None
    notes: list[str]  # what could not be read, in one line each (squeue failing ...)
    checked_at: str
    objectives: dict[str, str] | None = None  # the run's objectives; None: the loss's mean
    best_trials: list[ParetoTrial] = field(default_factory=list)  # several objectives: the Pareto set, not one best
    validation: ValidationResult | None = None  # the latest `validate` of the run (validation.json)
    best_set: list[BestSetTrial] = field(default_factory=list)  # from the run's summary.json (one objective)

    @property
    def trials_left(self) -> int:
        return max(0, self.n_trials - self.n_complete - self.n_failed - self.n_pruned)

    @property
    def needs_resume(self) -> bool:
        return self.trials_left > 0 and not self.controller_holds_run

    def to_json(self) -> dict[str, Any]:
        return {"kind": "run", **asdict(self), "trials_left": self.trials_left, "needs_resume": self.needs_resume}


@dataclass(frozen=True)
class EntryStatus:
    entry: str
    run_dir: str
    run: RunStatus | None
    problem: str | None  # why the entry's run could not be read


@dataclass(frozen=True)
class EntriesStatus:
    """The parent directory of ``optimize_entries``: one run per entry."""

    dir: str
    entries: list[EntryStatus]

    def to_json(self) -> dict[str, Any]:
        entries = [{**asdict(e), "run": e.run.to_json() if e.run else None} for e in self.entries]
        return {"kind": "entries", "dir": self.dir, "entries": entries}


# ---------------------------------------------------------------- reading a run without disturbing it


def read_status(path: Path, now: float | None = None) -> RunStatus | EntriesStatus:
    """The status of a run directory, or of an ``optimize_entries`` parent directory."""
    now = time.time() if now is None else now
    if not path.is_dir():
        raise StatusError(f"{path} is not a directory")
    run = RunPaths(path.resolve())
    if run.meta.exists():
        return read_run_status(run, now, ask_queue=_ask_squeue)
    runs = _entry_runs(path)
    if not runs:
        inside = sorted(p.name for p in path.iterdir() if RunPaths(p).meta.exists())
        hint = f"; it holds the runs {', '.join(inside[:5])}{' ...' if len(inside) > 5 else ''}" if inside else ""
        raise StatusError(f"{path} is not a slurptuna run: it has no meta.json{hint}")
    return EntriesStatus(str(path), [_read_entry(entry, entry_run, now) for entry, entry_run in runs])


def _entry_runs(parent: Path) -> list[tuple[str, RunPaths]]:
    """The entries of an ``optimize_entries`` directory: from its summary.json, else its run subdirectories."""
    summary = _read_json(parent / "summary.json")
    if isinstance(summary, dict) and isinstance(summary.get("entries"), list):
        # summary.json is written as entries finish: entries not yet in "runs" are in <label>/
        runs = summary.get("runs") or {}
        return [(e, RunPaths(Path(runs.get(e) or parent / _safe_label(e)))) for e in summary["entries"]]
    metas = {p: _read_json(RunPaths(p).meta) for p in sorted(parent.iterdir()) if RunPaths(p).meta.exists()}
    return [(m["entry_id"], RunPaths(p)) for p, m in metas.items() if isinstance(m, dict) and m.get("entry_id")]


def _read_entry(entry: str, run: RunPaths, now: float) -> EntryStatus:
    try:
        return EntryStatus(entry, str(run.dir), read_run_status(run, now, ask_queue=None), None)
    except StatusError as exc:
        return EntryStatus(entry, str(run.dir), None, str(exc))


def read_run_status(
    run: RunPaths,
    now: float,
    ask_queue: Callable[[Sequence[str]], dict[str, list[_QueueLine]]] | None,
    trials: tuple[list[FinishedTrial], list[int]] | None = None,
) -> RunStatus:
    """Read meta.json, the trials (unless given, as ``_read_trials`` reads them), the lock and the running
    trials' files; ask Slurm once about their jobs."""
    settings = _read_run_settings(run)
    finished, running_numbers = trials or _read_trials(run, settings.run_name or run.dir.name)
    held, pid = _controller_holds(run)
    by_state: dict[str, list[FinishedTrial]] = {}
    for trial in finished:
        by_state.setdefault(trial.state, []).append(trial)
    started = run.journal.exists() or run.optuna_db.exists() or run.trials_index.exists()
    notes = [] if started else ["no optuna.journal yet: the controller has not started a trial"]
    running_chunks = {number: _ended_chunks(run.trial(number)) for number in running_numbers}
    running = [_running_trial(run.trial(n), settings, chunks, now) for n, chunks in running_chunks.items()]
    if settings.mode == ExecutionMode.DISTRIBUTED.value and ask_queue is not None:
        running, queue_note = _with_slurm_jobs(run, running, ask_queue)
        notes += [queue_note] if queue_note else []
    directions = _directions(settings)
    several = len(directions) > 1
    best = None if several else _best_trial(by_state.get("COMPLETE", []), directions[0])
    pareto = _pareto_front(by_state.get("COMPLETE", []), directions) if several else []
    totals = [(t.seeds, t.core_seconds, t.spans) for t in finished]
    totals += [_chunk_totals(chunks) for chunks in running_chunks.values()]
    core_seconds = math.fsum(core for _, core, _ in totals)
    seeds_done = sum(seeds for seeds, _, _ in totals)
    intervals = [(start, end) for _, _, spans in totals for start, end in spans]
    active = _active_seconds(intervals, now if held else None, _ACTIVE_GAP_SECONDS)
    pace = seeds_done / active if seeds_done and active > 0 else None
    used = by_state.get("COMPLETE", []) + by_state.get("PRUNED", [])
    per_trial = sum(t.seeds for t in used) / len(used) if used else settings.seeds.count
    seeds_left = max(0.0, (settings.n_trials - len(finished)) * per_trial - sum(r.seeds_done for r in running))
    ranking = _read_json(run.summary) or {}
    best_set = [BestSetTrial(**r) for r in ranking.get("best_set", [])]
    if "race" in ranking and best_set:  # races rank trials on seeds Optuna's values do not have
        best = next((t for t in by_state.get("COMPLETE", []) if t.number == ranking["best_trial"]), best)
    return RunStatus(
        run_dir=str(run.dir),
        run_name=settings.run_name or run.dir.name,
        run_root=settings.run_root,
        loss_name=settings.loss_name,
        mode=settings.mode,
        n_trials=settings.n_trials,
        n_complete=len(by_state.get("COMPLETE", [])),
        n_running=len(running),
        n_failed=len(by_state.get("FAIL", [])),
        n_pruned=len(by_state.get("PRUNED", [])),
        best_trial=best.number if best else None,
        best_value=(best_set[0].mean if best_set and best_set[0].number == best.number else best.value)
        if best
        else None,
        best_standard_error=_best_standard_error(run.trial(best.number), best, settings.objectives) if best else None,
        best_params=dict(best.params) if best else {},
        running=running,
        failed=[_failed_trial(t) for t in by_state.get("FAIL", [])],
        controller_holds_run=held,
        controller_pid=pid,
        core_hours=core_seconds / 3600,
        seeds_done=seeds_done,
        seeds_per_second=pace,
        hours_left=seeds_left / pace / 3600 if pace else None,
        core_hours_left=seeds_left * core_seconds / seeds_done / 3600 if seeds_done else None,
        notes=notes,
        checked_at=datetime.fromtimestamp(now, timezone.utc).isoformat(timespec="seconds"),
        objectives=settings.objectives,
        best_trials=[_pareto_trial(run.trial(t.number), t, settings.objectives) for t in pareto],
        validation=_read_validation(run),
        best_set=best_set,
    )


def _read_validation(run: RunPaths) -> ValidationResult | None:
    record = _read_json(run.validation)
    with contextlib.suppress(TypeError, KeyError, AttributeError):  # absent, or of another version: not shown
        return ValidationResult.from_json(record)
    return None


def _read_run_settings(run: RunPaths) -> _RunSettings:
    record = _read_json(run.meta)
    written_by = f"slurptuna {record.get('slurptuna_version', '?')}" if isinstance(record, dict) else "?"
    try:
        return _RunSettings.from_json(record)
    except (TypeError, KeyError, ValueError, AttributeError) as exc:
        raise StatusError(
            f"{run.meta} has a format this slurptuna ({__version__}) cannot read (written by {written_by}): "
            f"{type(exc).__name__}: {exc}"
        ) from None


def _read_trials(run: RunPaths, study_name: str) -> tuple[list[FinishedTrial], list[int]]:
    """The run's finished trials, and the numbers of the running ones: the trial directories not finished.

    From ``trials.jsonl`` (the last line of a trial wins); a run begun without that index from
    its study, replayed, and every trial's records, as the controller catches up its index.
    """
    if not run.trials_index.exists():
        trials = _read_study_trials(run, study_name)
        finished = [FinishedTrial.of(t, _ended_chunks(run.trial(t.number))) for t in trials if t.state.is_finished()]
    else:
        indexed: dict[int, FinishedTrial] = {}
        for record in _read_records(run.trials_index)[0]:
            with contextlib.suppress(TypeError, AttributeError):
                trial = FinishedTrial.from_json(record)
                indexed[trial.number] = trial
        finished = sorted(indexed.values(), key=lambda t: t.number)
    numbers = {t.number for t in finished}
    return finished, [n for n in _trial_numbers(run) if n not in numbers]


def _trial_numbers(run: RunPaths) -> list[int]:
    """The numbers of the trials that have a directory (grouped 1,000 a directory, or not in older runs)."""
    numbers = []
    with contextlib.suppress(FileNotFoundError), os.scandir(run.dir / "trials") as entries:
        for entry in entries:
            if entry.name.startswith("trial_"):
                numbers.append(int(entry.name[6:]))
            elif entry.is_dir():
                with os.scandir(entry.path) as group:
                    numbers += [int(e.name[6:]) for e in group if e.name.startswith("trial_")]
    return sorted(numbers)


def _read_study_trials(run: RunPaths, study_name: str, attempts: int = 4) -> list[Any]:
    """The study's trials, read without disturbing the writer.

    The journal is read up to where it was when the reading began (readers take no lock);
    an older run's SQLite file through a read-only connection, tried again while locked.
    """
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    if run.journal.exists():
        try:
            return optuna.load_study(study_name=study_name, storage=_study_storage(run)).get_trials(deepcopy=False)
        except KeyError:  # the controller has created the journal, not yet its study
            return []
    if not run.optuna_db.exists():
        return []
    import urllib.parse

    url = f"sqlite:///file:{urllib.parse.quote(str(run.optuna_db))}?mode=ro&uri=true"
    for attempt in range(attempts):
        try:
            storage = optuna.storages.RDBStorage(
                url, skip_table_creation=True, engine_kwargs={"connect_args": {"timeout": 0.5}}
            )
            try:
                study = optuna.load_study(study_name=study_name, storage=storage)
                return study.get_trials(deepcopy=False)
            finally:
                storage.remove_session()
                storage.engine.dispose()
        except KeyError:
            raise StatusError(f"{run.optuna_db} has no study named {study_name!r}") from None
        except Exception as exc:  # sqlalchemy's and optuna's errors: read their text, not their types
            text = " ".join(str(e) for e in _exception_chain(exc))
            if "locked" not in text and "busy" not in text:
                raise StatusError(f"cannot read {run.optuna_db}: {_first_line(str(exc))}") from None
            if attempt + 1 < attempts:
                time.sleep(0.25 * (attempt + 1))
    raise _DatabaseBusy(f"{run.optuna_db} stayed locked by its writer; try again in a moment")


def _exception_chain(exc: BaseException | None) -> Iterable[BaseException]:
    while exc is not None:
        yield exc
        exc = exc.__cause__ or exc.__context__


def _first_line(text: str) -> str:
    return next((line.strip() for line in text.splitlines() if line.strip()), "")


def _controller_holds(run: RunPaths) -> tuple[bool, int | None]:
    """Whether a controller holds the run's lock, and the pid it wrote; the lock is only tested."""
    import fcntl

    try:
        with open(run.lock) as handle:  # read-only: never created here
            try:
                fcntl.flock(handle, fcntl.LOCK_SH | fcntl.LOCK_NB)
            except OSError:
                text = handle.read().strip()
                return True, int(text) if text.isdigit() else None
            fcntl.flock(handle, fcntl.LOCK_UN)
            return False, None
    except FileNotFoundError:
        return False, None


def _trial_params(trial: TrialPaths) -> TrialParams | None:
    """The trial's params.json, or None before the controller wrote it (or if it cannot be read)."""
    with contextlib.suppress(SlurptunaError, TypeError):
        return TrialParams.load(trial)
    return None


def _ended_chunks(trial: TrialPaths) -> list[tuple[ChunkResult, float]]:
    """The trial's valid chunks, read as the controller reads them, each with when it ended (its file's mtime)."""
    expected = _trial_params(trial)
    if expected is None:
        return []
    files = _ChunkFiles()
    _read_new_chunks(trial, expected, files)
    return [(chunk, files.file_times[index] / 1e9) for index, chunk in files.chunks.items()]


def _running_trial(
    trial: TrialPaths, settings: _RunSettings, done: list[tuple[ChunkResult, float]], now: float
) -> RunningTrial:
    expected = _trial_params(trial)  # None before the controller wrote params.json
    plan = expected.plan if expected else settings.seeds
    seeds = sum(c.stats.loss.count for c, _ in done)
    first_start = min((mtime - c.elapsed_seconds for c, mtime in done), default=None)
    last_end = max((mtime for _, mtime in done), default=now)
    until = max(now, last_end) if len(done) < plan.n_chunks else last_end  # a chunk may end while status reads
    rate = seeds / (until - first_start) if first_start is not None and until > first_start else None
    params = expected.params if expected else {}
    return RunningTrial(trial.number, params, len(done), plan.n_chunks, seeds, rate, jobs=[])


def _with_slurm_jobs(
    run: RunPaths, running: list[RunningTrial], ask_queue: Callable[[Sequence[str]], Any]
) -> tuple[list[RunningTrial], str | None]:
    """The running trials with their jobs' states from jobs.json and one squeue call for all of them."""
    jobs = {r.number: _recorded_jobs(run.trial(r.number)) for r in running}
    job_ids = [j.job_id for listed in jobs.values() for j in listed]
    queue: dict[str, list[_QueueLine]] | None = {}
    note = None
    if job_ids:
        try:
            queue = ask_queue(job_ids)
        except SlurmError as exc:
            queue, note = None, f"Slurm's queue is not shown: {_first_line(str(exc))}"
    return [replace(r, jobs=[_job_status(j, queue) for j in jobs[r.number]]) for r in running], note


def _recorded_jobs(trial: TrialPaths) -> list[JobRef]:
    record = _read_json(trial.jobs) or {}
    try:
        return [JobRef.from_json(j) for j in record.get("jobs", [])]
    except TypeError:
        return []


def _job_status(job: JobRef, queue: Mapping[str, list[_QueueLine]] | None) -> JobStatus:
    chunks = _format_ranges(job.chunks) if job.kind != "reduce" else ""
    if queue is None:
        return JobStatus(job.job_id, job.kind, chunks, None, [])
    mine = {job.task_of(c) for c in job.chunks} if job.kind != "reduce" else {None}  # an array may hold other trials
    tasks: dict[str, int] = {}
    reasons: list[str] = []
    for line in queue.get(job.job_id, []):
        count = sum(1 for t in line.task_ids if t in mine)
        if not count:
            continue
        tasks[line.state] = tasks.get(line.state, 0) + count
        if line.state == "PENDING" and line.reason and line.reason not in reasons:
            reasons.append(line.reason)
    return JobStatus(job.job_id, job.kind, chunks, tasks, reasons)


def _ask_squeue(job_ids: Sequence[str]) -> dict[str, list[_QueueLine]]:
    """One ``squeue`` call for these jobs, with their pending reasons."""
    process = _run_slurm(["squeue", "-h", "-t", "all", "-j", ",".join(job_ids), "-o", "%i|%T|%r"], timeout=30)
    if process.returncode != 0:
        if _INVALID_JOB_ID in process.stderr:
            return {}  # a single job id that Slurm has already forgotten
        raise _command_error(process)
    return _parse_squeue(process.stdout)


def _best_trial(complete: list[FinishedTrial], direction: str) -> FinishedTrial | None:
    sign = 1 if direction == "minimize" else -1
    return min((t for t in complete if t.value is not None), key=lambda t: sign * t.value, default=None)


def _best_standard_error(trial: TrialPaths, frozen: Any, objectives: Mapping[str, str] | None) -> float | None:
    """The loss mean's standard error, or with one objective that component's."""
    if objectives:
        return _component_standard_errors(trial, frozen).get(next(iter(objectives)))
    return _standard_error_of(_read_json(trial.summary), frozen.user_attrs)


def _component_standard_errors(trial: TrialPaths, frozen: Any) -> dict[str, float]:
    """Each component's std / sqrt(n_seeds) from the trial's summary.json, else from the user attribute."""
    summary = _read_json(trial.summary) or {}
    return summary.get("component_standard_errors") or frozen.user_attrs.get("component_standard_errors") or {}


def _pareto_trial(trial: TrialPaths, frozen: Any, objectives: Mapping[str, str]) -> ParetoTrial:
    errors = _component_standard_errors(trial, frozen)
    return ParetoTrial(
        number=frozen.number,
        values=dict(zip(objectives, frozen.values, strict=True)),
        standard_errors={name: errors.get(name) for name in objectives},
        params=dict(frozen.params),
    )


def _failed_trial(frozen: Any) -> FailedTrial:
    reason = str(frozen.user_attrs.get("fail_reason") or "no reason recorded")
    log = re.search(r"\blog:? ([^\s()]+)", reason)
    return FailedTrial(frozen.number, _first_line(reason), log.group(1) if log else None)


def _active_spans(intervals: Iterable[tuple[float, float]], max_gap: float) -> list[list[float]]:
    """The intervals joined where they are at most ``max_gap`` apart: when work went on.

    Joining the spans of several sets of intervals gives what joining them all gives: each
    trial's spans are kept in ``trials.jsonl`` and status joins those.
    """
    spans: list[list[float]] = []
    for start, end in sorted(intervals):
        if spans and start - spans[-1][1] <= max_gap:
            spans[-1][1] = max(spans[-1][1], end)
        else:
            spans.append([start, end])
    return spans


def _active_seconds(intervals: Iterable[tuple[float, float]], now: float | None, max_gap: float) -> float:
    """The time chunks were being computed, with pauses up to ``max_gap`` counted; ``now`` if still going."""
    spans = _active_spans(intervals, max_gap)
    if spans and now is not None and 0 <= now - spans[-1][1] <= max_gap:
        spans[-1][1] = now
    return sum(end - start for start, end in spans)


# ---------------------------------------------------------------- drawing it


def format_status(status: RunStatus | EntriesStatus) -> str:
    return format_entries_status(status) if isinstance(status, EntriesStatus) else format_run_status(status)


def format_run_status(s: RunStatus) -> str:
    lines = [
        f"run {s.run_name} ({s.mode} mode, loss {s.loss_name}) in {s.run_dir}",
        f"trials: {s.n_complete} complete, {s.n_running} running, {s.n_failed} failed, {s.n_pruned} pruned"
        f" of {s.n_trials}",
        *_format_best_lines(s),
        *(format_validation(s.validation) if s.validation else []),
        f"controller: {_format_controller(s)}",
        f"compute: {_format_core_hours(s.core_hours)} of chunk compute so far, {s.seeds_done:,} seeds",
    ]
    if s.trials_left and s.seeds_per_second:
        lines.append(
            f"left: about {_format_duration(s.hours_left * 3600)} and {_format_core_hours(s.core_hours_left)}"
            f" at {_format_rate(s.seeds_per_second)} (the pace so far)"
        )
    if s.running:
        lines.append("running trials:" if s.controller_holds_run else "interrupted trials (no controller):")
    for trial in s.running:
        lines.append(
            f"  trial {trial.number}: chunks {trial.chunks_done}/{trial.n_chunks}, "
            f"{_format_rate(trial.seeds_per_second)}, {_format_params(trial.params)}"
        )
        lines += [f"    {_format_job(job)}" for job in trial.jobs]
    if s.failed:
        lines.append("failed trials:")
    for failed in s.failed:
        lines.append(f"  trial {failed.number}: {failed.reason}")
        lines += [f"    log: {failed.log}"] if failed.log else []
    lines += [f"note: {note}" for note in s.notes]
    return "\n".join(lines)


def format_entries_status(s: EntriesStatus) -> str:
    lines = [f"entries of {s.dir}:"]
    width = max((len(e.entry) for e in s.entries), default=0)
    for e in s.entries:
        if e.run is None:
            lines.append(f"  {e.entry:<{width}}  {e.problem}")
            continue
        r = e.run
        state = _format_controller(r) if r.controller_holds_run else "needs resume" if r.trials_left else "finished"
        lines.append(
            f"  {e.entry:<{width}}  {state}: {r.n_complete}/{r.n_trials} complete, {r.n_running} running, "
            f"{r.n_failed} failed, {r.n_pruned} pruned; best {_format_best(r)}"
        )
    if any(e.run and e.run.needs_resume for e in s.entries):
        lines.append(f"resume with optimize_entries(..., run_name_prefix={Path(s.dir).name!r})")
    return "\n".join(lines)


def _plus_minus(error: float | None) -> str:
    return "" if error is None else f" ± {error:.2g}"


def _format_values(values: Mapping[str, float], errors: Mapping[str, float | None]) -> str:
    """Each objective's mean ± its standard error."""
    return ", ".join(f"{name} {value:.6g}{_plus_minus(errors.get(name))}" for name, value in values.items())


def _format_best_lines(s: RunStatus) -> list[str]:
    """``best: ...``, or with several objectives the Pareto set, one line per trial."""
    if not s.objectives or len(s.objectives) < 2:
        tied = [
            f"  trial {t.number}: {t.mean:.6g}{_plus_minus(t.standard_error)} over {t.n_seeds:,} seeds; "
            f"{_format_params(t.params)}"
            for t in s.best_set[1 : _PARETO_LINES + 1]
        ]
        heading = f"best set: {len(s.best_set) - 1} more trial(s) a paired test cannot tell from the best:"
        return [f"best: {_format_best(s)}", *([heading, *tied] if tied else [])]
    directions = ", ".join(f"{name} {direction}" for name, direction in s.objectives.items())
    lines = [f"Pareto set ({directions}): {_format_best(s)}"]
    for t in s.best_trials[:_PARETO_LINES]:
        lines.append(f"  trial {t.number}: {_format_values(t.values, t.standard_errors)}; {_format_params(t.params)}")
    if len(s.best_trials) > _PARETO_LINES:
        lines.append(f"  ... {len(s.best_trials) - _PARETO_LINES} more (status --json lists them all)")
    return lines


_PARETO_LINES = 20


def _format_best(s: RunStatus) -> str:
    if s.objectives and len(s.objectives) > 1:
        numbers = ", ".join(str(t.number) for t in s.best_trials)
        return f"{len(s.best_trials)} trial(s) no other beats in every objective ({numbers})" if numbers else "-"
    if s.best_value is None:
        return "-"
    return (
        f"{s.best_value:.6g}{_plus_minus(s.best_standard_error)} (trial {s.best_trial}) {_format_params(s.best_params)}"
    )


def _format_controller(s: RunStatus) -> str:
    if s.controller_holds_run:
        return f"running (pid {s.controller_pid if s.controller_pid is not None else '?'})"
    if s.trials_left:
        return f"none; {s.trials_left} trial(s) left: resume with run_name={s.run_name!r} (run_root={s.run_root!r})"
    return "none, the run is finished"


def _format_job(job: JobStatus) -> str:
    what = f"array job {job.job_id} (chunks {job.chunks})" if job.kind != "reduce" else f"reduce job {job.job_id}"
    if job.tasks is None:
        return what
    if not job.tasks:
        return f"{what}: no longer in Slurm's queue"
    order = {"RUNNING": 0, "PENDING": 1}
    states = []
    for state, n in sorted(job.tasks.items(), key=lambda item: (order.get(item[0], 2), item[0])):
        reasons = f" ({', '.join(job.pending_reasons)})" if state == "PENDING" and job.pending_reasons else ""
        states.append((f"{n} {state}" if job.kind != "reduce" else state) + reasons)
    return f"{what}: {', '.join(states)}"


def _format_params(params: Mapping[str, ParamValue]) -> str:
    return " ".join(f"{k}={v:.6g}" if isinstance(v, float) else f"{k}={v}" for k, v in params.items())


def _format_core_hours(hours: float) -> str:
    return f"{hours:,.2f} core-hours" if hours >= 0.01 else f"{hours * 3600:.2g} core-seconds"


def _format_rate(seeds_per_second: float | None) -> str:
    if seeds_per_second is None:
        return "- seeds/s"
    return f"{seeds_per_second:,.0f} seeds/s" if seeds_per_second >= 100 else f"{seeds_per_second:.3g} seeds/s"


def _format_duration(seconds: float) -> str:
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 90 * 60:
        return f"{seconds / 60:.0f} min"
    if seconds < 48 * 3600:
        return f"{seconds // 3600:.0f} h {seconds % 3600 / 60:.0f} min"
    return f"{seconds / 86400:.1f} days"


# ---------------------------------------------------------------- the status command


def _status_main(argv: Sequence[str]) -> int:
    import argparse

    parser = argparse.ArgumentParser(prog="python -m slurptuna status", usage=_USAGE)
    parser.add_argument("run_dir", type=Path)
    parser.add_argument("--watch", type=float, nargs="?", const=5.0, metavar="SECONDS")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    if args.watch is not None and args.watch <= 0:
        parser.error("--watch SECONDS must be > 0")
    try:
        _show_status(args.run_dir, args.json, redraw=args.watch is not None)
        while args.watch is not None:
            time.sleep(args.watch)
            _show_status(args.run_dir, args.json, redraw=True)
    except KeyboardInterrupt:
        pass
    except BrokenPipeError:  # `status ... | head`: the reader has seen enough
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    except (StatusError, OSError) as exc:
        return _command_failed("status", exc)
    return 0


def _command_failed(command: str, exc: BaseException) -> int:
    """A reader's error as one line on stderr, and its exit code."""
    print(f"slurptuna {command}: {_first_line(str(exc))}", file=sys.stderr)
    return 2


def _show_status(run_dir: Path, as_json: bool, redraw: bool) -> None:
    """Print one status; while watching, a moment's lock on optuna.db shows as a line, not an exit."""
    try:
        status = read_status(run_dir)
    except _DatabaseBusy as exc:
        if not redraw:
            raise
        print(f"slurptuna status: {exc}", file=sys.stderr)
        return
    if as_json:
        print(json.dumps(status.to_json(), indent=None if redraw else 1), flush=True)
        return
    if redraw and sys.stdout.isatty():
        sys.stdout.write("\x1b[H\x1b[2J")  # home and clear: one screen, redrawn
    print(format_status(status) + ("\n" if redraw and not sys.stdout.isatty() else ""), flush=True)


# ============================================================================
# Report: a run as one self-contained HTML page of plots
# ============================================================================
#
# `python -m slurptuna report RUN_DIR` reads a run as `status` does (the same readers,
# never disturbing a live run) and draws it with Optuna's own plots. plotly is an
# optional extra (`pip install slurptuna[report]`) imported only in this section; its
# JavaScript is embedded once in the page, so the page opens offline, from a cluster's
# file system, with no network. Reading (`read_report`) is kept apart from drawing
# (`render_report`).

_REPORT_NEEDS = "the report needs plotly: pip install 'slurptuna[report]' (or: pip install plotly)"
_RATE_BINS = 60  # points of the seeds/s curve


@dataclass(frozen=True)
class TrialRow:
    """One trial as the report's table shows it."""

    number: int
    state: str  # COMPLETE, FAIL, PRUNED, RUNNING, WAITING
    value: float | None
    standard_error: float | None  # std / sqrt(n_seeds); None when the trial has no summary
    params: dict[str, ParamValue]
    n_seeds: int | None
    seconds: float | None  # from the trial's start to its end in Optuna
    fail_reason: str  # the first line of why it failed; "" unless FAIL
    values: dict[str, float] = field(default_factory=dict)  # several objectives: each one's mean
    standard_errors: dict[str, float | None] = field(default_factory=dict)  # ... and its standard error


@dataclass(frozen=True)
class RunReport:
    """Everything the report page shows of one run."""

    status: RunStatus
    direction: str  # the study's direction; with several objectives, see objectives
    trials: list[TrialRow]
    study_trials: list[Any]  # optuna FrozenTrials, for optuna.visualization
    seeds_per_second: list[tuple[float, float]]  # (unix time, seeds/s), the run's pace over its chunks
    objectives: dict[str, str] | None = None  # several: a multi-objective study (Pareto front plot)


def read_report(path: Path, now: float | None = None) -> RunReport:
    """Read one run for its report; an ``optimize_entries`` directory is refused with its runs named."""
    now = time.time() if now is None else now
    run = RunPaths(path.resolve())
    if not run.meta.exists():
        entries = _entry_runs(path) if path.is_dir() else []
        if not entries:
            read_status(path, now)  # raises the status command's error: not a directory, not a run
        examples = " ".join(str(entry_run.dir) for _, entry_run in entries[:2])
        raise StatusError(f"{path} holds one run per entry: make a report of one of them, e.g. {examples}")
    settings = _read_run_settings(run)
    trials = _read_trials(run, settings.run_name or run.dir.name)
    status = read_run_status(run, now, ask_queue=None, trials=trials)
    study_trials = _read_study_trials(run, status.run_name)  # for Optuna's plots, and its trials' durations
    durations = {t.number: t.duration for t in study_trials}
    rows = [_trial_row(run.trial(t.number), t, settings.objectives, durations.get(t.number)) for t in trials[0]]
    rows += [TrialRow(r.number, "RUNNING", None, None, r.params, None, None, "") for r in status.running]
    chunks = [c for row in rows for c in _ended_chunks(run.trial(row.number))]
    return RunReport(
        status=status,
        direction=_directions(settings)[0],
        objectives=settings.objectives,
        trials=sorted(rows, key=lambda row: row.number),
        study_trials=study_trials,
        seeds_per_second=_seeds_per_second_series(
            [(mtime - c.elapsed_seconds, mtime, c.stats.loss.count) for c, mtime in chunks], _RATE_BINS
        ),
    )


def _trial_row(
    trial: TrialPaths, finished: FinishedTrial, objectives: Mapping[str, str] | None, duration: timedelta | None
) -> TrialRow:
    """A finished trial's row: its value(s) and standard error(s) as status reads them (summary.json first)."""
    complete = finished.state == "COMPLETE"
    several = objectives is not None and len(objectives) > 1
    n_seeds = finished.user_attrs.get("n_seeds")
    if n_seeds is None and complete:
        n_seeds = (_read_json(trial.summary) or {}).get("n_seeds")
    pareto = _pareto_trial(trial, finished, objectives) if complete and several else None
    return TrialRow(
        number=finished.number,
        state=finished.state,
        value=finished.value if complete and not several else None,
        standard_error=_best_standard_error(trial, finished, objectives) if complete and not several else None,
        params=finished.params,
        n_seeds=n_seeds,
        seconds=duration.total_seconds() if duration else None,
        fail_reason=_failed_trial(finished).reason if finished.state == "FAIL" else "",
        values=pareto.values if pareto else {},
        standard_errors=pareto.standard_errors if pareto else {},
    )


def _seeds_per_second_series(chunks: Sequence[tuple[float, float, int]], n_bins: int) -> list[tuple[float, float]]:
    """(time, seeds/s) in ``n_bins`` equal bins over the run: each chunk's seeds spread over the time it ran."""
    if not chunks:
        return []
    start = min(begin for begin, _, _ in chunks)
    end = max(finish for _, finish, _ in chunks)
    n_bins = max(1, min(n_bins, len(chunks)))
    width = (end - start) / n_bins
    if width <= 0:
        return []
    seeds = [0.0] * n_bins
    for begin, finish, count in chunks:
        first = min(n_bins - 1, int((begin - start) / width))
        last = max(first, min(n_bins - 1, int((finish - start) / width)))
        bins = range(first, last + 1)
        overlaps = [max(0.0, min(finish, start + (b + 1) * width) - max(begin, start + b * width)) for b in bins]
        total = math.fsum(overlaps)  # normalized, so rounding at the bins' edges loses no seed
        for b, overlap in zip(bins, overlaps, strict=True):
            seeds[b] += count * overlap / total if total > 0 else (count if b == first else 0)
    return [(start + (b + 0.5) * width, seeds[b] / width) for b in range(n_bins)]


# ---------------------------------------------------------------- drawing it with plotly


def render_report(report: RunReport) -> str:
    """The report as one HTML page; plotly.js is embedded in the first plot and shared by the others."""
    import html
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # optuna's experimental-feature warnings are not the reader's business
        figures = _report_figures(report)
    sections = []
    plotly_embedded = False
    for title, figure, note in figures:
        plot = ""
        if figure is not None:
            figure.update_layout(title=None, margin={"t": 30})
            config = {"displaylogo": False, "responsive": True}
            plot = figure.to_html(
                full_html=False, include_plotlyjs=not plotly_embedded, config=config, default_height="420px"
            )
            plot = f'<figure class="plot">{plot}</figure>'
            plotly_embedded = True
        sections.append(_section(title, note, plot))
    s = report.status
    if s.best_set:
        head = ["trial", "mean", "standard error", "seeds", "params"]
        rows = [
            (
                "",
                [str(t.number), f"{t.mean:.6g}", f"{t.standard_error:.2g}", f"{t.n_seeds:,}", _format_params(t.params)],
            )
            for t in s.best_set
        ]
        note = "the best, then the trials a one-sided paired t-test on their shared chunks cannot tell from it"
        sections.append(_section("Best set", note, _html_table("trials best-set", head, rows)))
    if s.validation:
        sections.append(_validation_section(s.validation))
    sections.append(_section("Trials", "", _trials_table(report.trials)))
    return _REPORT_PAGE.format(
        title=html.escape(f"slurptuna report: {s.run_name}"),
        status=html.escape(format_run_status(s)),
        sections="\n".join(sections),
        generated=html.escape(f"slurptuna {__version__}, {s.checked_at}"),
    )


def _report_figures(report: RunReport) -> list[tuple[str, Any, str]]:
    """(title, plotly figure or None, note) for each plot of the page, in order."""
    import optuna
    import optuna.visualization as plots

    complete = [t for t in report.study_trials if t.state.name == "COMPLETE"]
    rate = ("Seeds per second over the run", *_rate_figure(report.seeds_per_second))
    if not complete:
        note = "no complete trial yet: nothing to plot"
        return [("Optimization history", None, note), rate]
    objectives = report.objectives if report.objectives and len(report.objectives) > 1 else None
    directions = list(objectives.values()) if objectives else [report.direction]
    study = optuna.create_study(study_name=report.status.run_name, directions=directions)
    study.add_trials([t for t in report.study_trials if t.state.is_finished()])
    if objectives:
        return [*_pareto_figures(study, objectives), rate]
    return [
        ("Optimization history", plots.plot_optimization_history(study), ""),
        ("Mean of each complete trial ± standard error", _errors_figure(report.trials), ""),
        ("Parameter importances", *_importance_figure(study, len(complete))),
        ("The mean against each parameter", plots.plot_slice(study), ""),
        rate,
    ]


def _pareto_figures(study: Any, objectives: Mapping[str, str]) -> list[tuple[str, Any, str]]:
    """Several objectives: Optuna's Pareto front plot, then each objective against each parameter."""
    import optuna.visualization as plots

    names = list(objectives)
    directions = ", ".join(f"{name} {direction}" for name, direction in objectives.items())
    if len(names) <= 3:
        front = (plots.plot_pareto_front(study, target_names=names), f"each complete trial's means ({directions})")
    else:
        front = (None, f"the Pareto front is drawn for 2 or 3 objectives; this run has {len(names)}")
    return [
        ("Pareto front", *front),
        *[
            (
                f"{name} ({objectives[name]}) against each parameter",
                plots.plot_slice(study, target=lambda t, i=i: t.values[i], target_name=name),
                "",
            )
            for i, name in enumerate(names)
        ],
    ]


def _errors_figure(trials: Sequence[TrialRow]) -> Any:
    import plotly.graph_objects as go

    complete = [t for t in trials if t.state == "COMPLETE"]
    figure = go.Figure(
        go.Scatter(
            x=[t.number for t in complete],
            y=[t.value for t in complete],
            error_y={"type": "data", "array": [t.standard_error for t in complete], "visible": True},
            mode="markers",
            name="mean ± standard error",
            text=[_format_params(t.params) for t in complete],
        )
    )
    figure.update_layout(xaxis_title="trial", yaxis_title="mean loss ± std / sqrt(n_seeds)")
    return figure


def _importance_figure(study: Any, n_complete: int) -> tuple[Any, str]:
    import optuna.visualization as plots

    if n_complete < 2:
        return None, f"parameter importances need at least 2 complete trials; this run has {n_complete}"
    try:
        return plots.plot_param_importances(study), ""
    except Exception as exc:  # optuna's evaluators fail on degenerate studies (all values equal ...)
        return None, f"parameter importances could not be computed: {_first_line(str(exc)) or type(exc).__name__}"


def _rate_figure(series: Sequence[tuple[float, float]]) -> tuple[Any, str]:
    import plotly.graph_objects as go

    if not series:
        return None, "no chunk finished yet"
    figure = go.Figure(
        go.Scatter(
            x=[datetime.fromtimestamp(t, timezone.utc).isoformat() for t, _ in series],
            y=[rate for _, rate in series],
            mode="lines",
            line_shape="hv",
            name="seeds/s",
        )
    )
    figure.update_layout(xaxis_title="time (UTC)", yaxis_title="seeds/s", yaxis_rangemode="tozero")
    return figure, "each chunk's seeds spread evenly over the time it ran (from its file's time and elapsed seconds)"


def _trials_table(trials: Sequence[TrialRow]) -> str:
    rows = []
    for t in trials:
        value = "" if t.value is None else f"{t.value:.6g}{_plus_minus(t.standard_error)}"
        cells = [
            str(t.number),
            t.state,
            _format_values(t.values, t.standard_errors) if t.values else value,
            _format_params(t.params),
            "" if t.n_seeds is None else f"{t.n_seeds:,}",
            "" if t.seconds is None else f"{t.seconds:.1f}",
            t.fail_reason,
        ]
        rows.append((t.state.lower(), cells))
    return _html_table("trials", ("trial", "state", "value ± SE", "params", "seeds", "seconds", "reason"), rows)


def _validation_section(v: ValidationResult) -> str:
    """The latest validation as a small table, the rows ``format_validation`` prints."""
    caption, *_ = format_validation(v)
    rows = [("pick" if c.trial == v.pick else "candidate", _validation_cells(v, c)) for c in v.candidates]
    return _section("Validation on fresh seeds", caption, _html_table("validation", _VALIDATION_COLUMNS, rows))


def _section(title: str, note: str, content: str) -> str:
    import html

    note = f'<p class="note">{html.escape(note)}</p>' if note else ""
    return f"<section><h2>{html.escape(title)}</h2>{note}{content}</section>"


def _html_table(kind: str, head: Sequence[str], rows: Iterable[tuple[str, Sequence[str]]]) -> str:
    """A table of escaped cells; each row is (its class, its cells)."""
    import html

    def cells(tag: str, texts: Sequence[str]) -> str:
        return "".join(f"<{tag}>{html.escape(text)}</{tag}>" for text in texts)

    body = "".join(f'<tr class="{row_class}">{cells("td", texts)}</tr>' for row_class, texts in rows)
    return f'<table class="{kind}"><thead><tr>{cells("th", head)}</tr></thead><tbody>{body}</tbody></table>'


_REPORT_PAGE = """<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>{title}</title>
<style>
body {{ font-family: sans-serif; margin: 1.5em auto; max-width: 1100px; padding: 0 1em; color: #222; }}
pre.status {{ background: #f4f4f4; padding: 0.8em; white-space: pre-wrap; overflow-wrap: anywhere; }}
.note {{ color: #666; font-style: italic; }}
figure.plot {{ margin: 0; }}
table.trials {{ border-collapse: collapse; width: 100%; font-size: 0.9em; }}
table.trials th, table.trials td {{ border-bottom: 1px solid #ddd; padding: 0.25em 0.5em; text-align: left; }}
table.trials td:nth-child(3) {{ white-space: nowrap; }}
table.validation td {{ padding: 0.2em 0.6em; white-space: nowrap; }}
tr.pick td {{ font-weight: bold; }}
tr.fail td {{ color: #a00; }}
tr.pruned td {{ color: #777; }}
footer {{ color: #888; font-size: 0.8em; margin-top: 2em; }}
</style>
</head>
<body>
<h1>{title}</h1>
<pre class="status">{status}</pre>
{sections}
<footer>made by {generated}; this page needs no network</footer>
</body>
</html>
"""


# ---------------------------------------------------------------- the report command


def _report_main(argv: Sequence[str]) -> int:
    import argparse

    parser = argparse.ArgumentParser(prog="python -m slurptuna report", usage=_USAGE)
    parser.add_argument("run_dir", type=Path)
    parser.add_argument("-o", "--output", type=Path, help="the HTML file to write (RUN_DIR/report.html)")
    args = parser.parse_args(argv)
    try:
        import plotly  # noqa: F401  (the optional extra: checked before any work)
    except ImportError:
        print(f"slurptuna report: {_REPORT_NEEDS}", file=sys.stderr)
        return 2
    try:
        page = render_report(read_report(args.run_dir))
        output = args.output or args.run_dir / "report.html"
        _write_atomic(output, page.encode())
    except (StatusError, OSError) as exc:
        return _command_failed("report", exc)
    print(f"wrote {output}")
    return 0


# ============================================================================
# Command line: the worker entry points and the self-test
# ============================================================================

_USAGE = """\
usage: python -m slurptuna status RUN_DIR [--watch [SECONDS]] [--json]
       python -m slurptuna report RUN_DIR [-o REPORT.html]
       python -m slurptuna validate RUN_DIR [--top K | --best-set] [--seeds N] [--seed-start S] [--json]
       python -m slurptuna worker chunk RUN_DIR TRIAL [--chunk I | --chunk-offset K]
       python -m slurptuna worker reduce RUN_DIR TRIAL [--allow-missing]
       python -m slurptuna worker pool RUN_DIR --results-fd FD
       python -m slurptuna options
       python slurptuna.py --selftest

status shows a run (or an optimize_entries directory) without disturbing it:
trials, the best value, running trials and their Slurm jobs, failures, core-hours
spent and left; --watch redraws every SECONDS (5), --json prints one JSON object.
report writes one self-contained HTML page of plots (RUN_DIR/report.html) that
opens offline; it needs plotly: pip install 'slurptuna[report]'.
validate evaluates the run's top K trials (5) again on N fresh seeds (the run's
count, after its largest seed), in the run's mode, and prints each one's mean
+- standard error and probability of being the best (RUN_DIR/validation.json).
options prints optimize_run's options as a markdown table (README.md has it).

Workers are started by optimize_run (locally or by Slurm); a chunk task without
--chunk takes its chunk from $SLURM_ARRAY_TASK_ID + K.
"""


def _worker_main(argv: Sequence[str]) -> int:
    import argparse

    global _INSIDE_WORKER
    _INSIDE_WORKER = True
    controller = os.environ.pop("SLURPTUNA_CONTROLLER_PID", None)
    if controller is not None:
        _die_with_parent(int(controller))
    parser = argparse.ArgumentParser(prog="python -m slurptuna worker", usage=_USAGE)
    parser.add_argument("kind", choices=["chunk", "reduce", "pool"])
    parser.add_argument("run_dir", type=Path)
    parser.add_argument("trial", type=int, nargs="?")  # chunk --chunk I, and the jobs of runs before --tasks
    parser.add_argument("--chunk", type=int)
    parser.add_argument("--chunk-offset", type=int, default=0)
    parser.add_argument("--tasks", help="the array's trials and chunks in task-id order, as _tasks_spec writes it")
    parser.add_argument("--logs", help="the array's log directory, relative to RUN_DIR")
    parser.add_argument("--trials", help="reduce: the array's trials, comma-separated")
    parser.add_argument("--allow-missing", action="store_true")
    parser.add_argument("--results-fd", type=int)
    args = parser.parse_args(argv)
    if args.kind == "pool":
        if args.results_fd is None:
            parser.error("a pool worker needs --results-fd")
        settings = _RunSettings.from_json(_read_json(RunPaths(args.run_dir).meta))
        serve_pool(settings, sys.stdin.buffer, os.fdopen(args.results_fd, "wb"))
        return 0
    run = RunPaths(args.run_dir)
    if args.kind == "reduce":
        if args.trials is not None:
            return _reduce_trials(run, [int(t) for t in args.trials.split(",")])
        if args.trial is None:
            parser.error("worker reduce needs --trials T,... (or TRIAL)")
        try:
            summary = reduce_trial(run, args.trial, args.allow_missing)
        except _MissingChunks as exc:
            print(f"slurptuna reduce: {exc}", file=sys.stderr)
            return 1
        print(f"trial {args.trial}: mean {summary.mean!r} over {summary.n_seeds} seeds")
        return 0
    task = os.environ.get("SLURM_ARRAY_TASK_ID")
    if args.tasks is not None and task is not None:
        trial, chunk = _task_of_spec(args.tasks, int(task))
        log = RunPaths.task_log(run.dir / args.logs, task) if args.logs else None
        return run_chunk_task(run.dir, trial, chunk, log)
    if args.trial is None or (args.chunk is None and task is None):
        parser.error("give TRIAL --chunk I, or run as a Slurm array task (--tasks SPEC)")
    chunk = args.chunk if args.chunk is not None else args.chunk_offset + int(task)
    return run_chunk_task(run.dir, args.trial, chunk)


def _reduce_trials(run: RunPaths, trials: Sequence[int]) -> int:
    """The reduce job of an array: each of its trials whose chunks are all valid gets its summary.json.

    The others were pruned, failed, or are being retried (a later array's reduce job has them).
    """
    for number in trials:
        try:
            summary = reduce_trial(run, number)
            print(f"trial {number}: mean {summary.mean!r} over {summary.n_seeds} seeds")
        except _MissingChunks as exc:
            print(f"slurptuna reduce: {exc}; left to its controller")
    return 0


_SELFTEST_LOSS = """
import math
from slurptuna import loss

@loss(name="slurptuna_selftest", parameter_space={"x": (-2.0, 2.0), "k": (1, 3)})
def selftest_loss(params, seed, context):
    noise = math.sin(seed * 12.9898) * 0.1
    return {"fit": (params["x"] - 0.5) ** 2 + noise, "size": 0.01 * params["k"]}
"""


def selftest() -> int:
    """A real single-mode run on a tiny problem in a temporary directory; 0 if every check holds."""
    failures = 0

    def check(what: str, ok: bool) -> None:
        nonlocal failures
        failures += not ok
        print(f"  [{'ok' if ok else 'FAIL'}] {what}")

    import tempfile

    close = partial(math.isclose, rel_tol=1e-12, abs_tol=1e-15)
    with tempfile.TemporaryDirectory(prefix="slurptuna-selftest-") as tmp:
        module_file = Path(tmp) / "selftest_loss.py"
        module_file.write_text(_SELFTEST_LOSS)
        _import_file(str(module_file))
        definition = _LOSSES["slurptuna_selftest"]
        print(f"slurptuna {__version__} selftest in {tmp}")
        options = {
            "n_seeds": 37,
            "chunk_size": 8,
            "worker_parallelism": 2,
            "run_root": tmp,
            "progress": False,
            "loss_module": str(module_file),
        }
        result = optimize_run(definition, n_trials=3, **options)
        first_values = [t.value for t in result.study.trials]
        run = RunPaths(Path(result.run_dir))
        check("run directory is named <loss>_v0001", run.dir.name == "slurptuna_selftest_v0001")
        for name in ("meta.json", "summary.json", "optuna.journal"):
            check(f"{name} written", (run.dir / name).exists())
        for frozen in result.study.trials:
            trial = run.trial(frozen.number)
            found = _read_valid_chunks(trial, TrialParams.load(trial))
            chunks = [found[i] for i in sorted(found)]
            covered = [s for c in chunks for s in range(c.seeds["start"], c.seeds["stop"])]
            direct = [definition(frozen.params, s, {}) for s in range(37)]
            mean = math.fsum(math.fsum(d.values()) / 2 for d in direct) / 37
            fit = math.fsum(d["fit"] for d in direct) / 37
            check(f"trial {frozen.number}: 5 chunks cover seeds 0..36 exactly once", covered == list(range(37)))
            check(
                f"trial {frozen.number}: reduced mean equals the direct mean over 37 seeds", close(frozen.value, mean)
            )
            check(f"trial {frozen.number}: component 'fit' kept", close(frozen.user_attrs["components"]["fit"], fit))
        resumed = optimize_run(definition, n_trials=4, run_name=run.dir.name, **options)
        values = [t.value for t in resumed.study.trials]
        check(
            "resume keeps 3 trials and adds 1 (n_trials is the total)", len(values) == 4 and values[:3] == first_values
        )
        check("best value is the minimum", resumed.best_value == min(values))
    print("selftest passed" if not failures else f"selftest FAILED: {failures} check(s)")
    return 1 if failures else 0


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m slurptuna``: ``status``, ``report``, ``validate``, the workers, ``--selftest`` and ``--help``."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["worker"]:
        try:
            return _worker_main(argv[1:])
        except OSError as exc:  # not the loss's failure: the controller finds the disk full too and stops the run
            if exc.errno not in _UNWRITABLE:
                raise
            with contextlib.suppress(OSError):  # the log may be on the same full disk
                print(f"slurptuna worker: cannot write {exc.filename}: {exc.strerror}", file=sys.stderr)
            return 1
    if argv[:1] in (["status"], ["report"]):
        logger.setLevel("ERROR")  # stale chunk files are the controller's to warn of; readers skip them
    commands = {"status": _status_main, "report": _report_main, "validate": _validate_main}
    if argv and argv[0] in commands:
        return commands[argv[0]](argv[1:])
    if argv[:1] == ["options"]:
        print(_options_table())
        return 0
    if argv[:1] == ["--selftest"]:
        import logging

        logging.basicConfig(level=logging.WARNING)
        return selftest()
    if argv[:1] in (["--help"], ["-h"], []):
        print(__doc__.strip() + "\n\n" + _USAGE)
        return 0
    print(f"slurptuna: unknown command {argv[0]!r}\n\n{_USAGE}", file=sys.stderr)
    return 2


if __name__ == "__main__":
    # One module under both names: a loss module's `from slurptuna import loss` registers into
    # this very registry, and a worker runs the module body once, not twice.
    sys.modules.setdefault("slurptuna", sys.modules[__name__])
    sys.exit(main())
