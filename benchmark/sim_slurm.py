"""SimSlurm: an in-process simulated Slurm on a simulated clock, for what this machine cannot hold (issue 15, S1).

It stands in for ``_run_slurm`` (``slurm=``), ``sleep=`` and ``clock=`` of ``slurptuna._SlurmExecutor``:

    sim = SimSlurm(Site(cpus=1000, max_submit_jobs=5000, rpc_bucket=30))
    executor = functools.partial(slurptuna._SlurmExecutor, slurm=sim, sleep=sim.sleep)
    slurptuna._run_study(settings, ..., clock=sim.clock)   # with _EXECUTORS' distributed row = executor

``sim(argv, env=None, timeout=120)`` answers ``sbatch``, ``squeue``, ``scancel``, ``sacct``,
``scontrol show config`` and ``sacctmgr show qos|assoc`` as Slurm 22.05 does (texts and formats of
tests/slurm_texts/, the same that fake_slurm/ fakes with real processes), parsing their options
wherever they stand; anything it does not model is answered with exit code 1 and a message saying
so, so a change in the executor's calls shows up instead of being answered wrongly.

What it models, in simulated seconds:

* **Jobs and arrays.** ``--array=SPEC[%N]`` (task ids < MaxArraySize, the ``%N`` throttle), job ids
  from 1000; an array task gets its own job id when it starts (the last one to start takes the
  array's id, as slurmctld does); ``--dependency=afterok|afterany|afternotok:ID[:ID]`` with
  ``--kill-on-invalid-dep=yes`` (a dependency that can no longer be met cancels the job); the
  ``%A %a %j %x %u %%`` patterns of ``--output``/``--error``, created (empty) when a task starts.
* **The cluster.** ``Site.cpus`` CPUs; a task needs ``--cpus-per-task``; a job is eligible
  ``Site.start_delay`` s after its submission (``Site.dependency_delay`` s after its dependency is
  met: the scheduler's next pass), and its pending tasks start in job id order as CPUs free up
  (and under the association's ``MaxJobs``, a QoS's ``MaxJobsPerUser``). A task lasts
  ``Site.task_seconds`` (a reduce job ``Site.reduce_seconds``), or until its ``--time`` (TIMEOUT).
  Ended tasks stay visible (``squeue -t all``) and count toward MaxJobCount
  for ``Site.min_job_age`` seconds; ``sacct`` remembers them for good.
* **What a task does**, without a process: a ``worker chunk`` task writes the chunk file that
  ``python -m slurptuna worker chunk`` writes for a loss whose every seed gives the same value
  (the no-op loss): built with slurptuna's own records (``TrialParams.load``, ``ChunkResult.of``,
  ``_write_chunk_result``) from statistics computed once per chunk size; a ``worker reduce`` job
  calls ``reduce_trial`` for each of its trials whose chunks are all valid. The task is mapped to
  its (trial, chunk) from the worker command: ``worker chunk RUN TRIAL --chunk-offset K`` (chunk
  K + task id) or ``worker chunk RUN --tasks 5:0-99/6:0-49,60-99`` (task i: the i-th pair).
* **A site's limits.** MaxJobCount (sbatch sleeps 1, 2, ... 15 s while the table is full, then
  fails), a QoS's ``MaxSubmitJobsPerUser`` then the association's ``MaxSubmitJobs``, counting
  every queued array task, an array that would pass it refused whole with Slurm's text.
* **The RPC rate limit of Slurm >= 23.02** (``rl_enable``): a token bucket of ``rpc_bucket``
  tokens refilled by ``rpc_refill`` each time a whole ``rpc_period`` of the epoch begins, used by
  sbatch, squeue, scancel and scontrol (sacct and sacctmgr ask slurmdbd); a call finding it empty
  is told to back off and its client sleeps 1 s, 2 s, ... before asking again: the controller
  waits that long in simulated time, with no error. Each wait is recorded.
* **Time.** ``sleep(s)`` advances the clock by ``s``, running what falls due; a call advances it by
  its bucket waits and ``Site.latency``. The controller's own time between two calls into the
  simulation passes on the clock too, as it does on a login node (Optuna's ``ask`` at trial
  10,000 is not free): its CPU time (``Site.controller_time="cpu"``, the default: other load on
  the machine does not count), its wall time (``"wall"``: its waits on the disk count too, as
  when it runs beside fake_slurm), or none (``"none"``: deterministic, for tests).

Every call is counted by command with its simulated time (``calls``), every bucket wait
(``waits``), every refused submission (``refused``); ``own_seconds`` is the real CPU time spent
inside the simulation, so that a caller can subtract it from the controller's. ``save(path)`` and
``SimSlurm.load(path)`` keep the cluster's state across a controller that was killed.
"""

from __future__ import annotations

import heapq
import os
import pickle
import re
import subprocess
import sys
import time
from collections import deque
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import slurptuna

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "fake_slurm"))
from _fakeslurm import HEADERS as _HEADERS  # squeue's column names, as fake_slurm prints them
from _fakeslurm import parse_time as _fake_slurm_minutes  # one parser of --time for both fakes

SUBMIT_FAILED = "sbatch: error: Batch job submission failed: "
POLICY = "Job violates accounting/QOS policy (job submit limit, user's size and/or time limits)"
TABLE_FULL = "sbatch: error: Slurm temporarily unable to accept job, sleeping and retrying"
INVALID_ID = "slurm_load_jobs error: Invalid job id specified"
FIRST_JOB_ID = 1000
RPC_COMMANDS = frozenset({"sbatch", "squeue", "scancel", "scontrol"})  # sacct, sacctmgr: slurmdbd, no bucket
ACTIVE = frozenset({"PENDING", "RUNNING"})
ENDED = frozenset({"COMPLETED", "FAILED", "TIMEOUT", "CANCELLED"})
SHORT = {"PENDING": "PD", "RUNNING": "R", "COMPLETED": "CD", "FAILED": "F", "TIMEOUT": "TO", "CANCELLED": "CA"}
_STATE_NAMES = {**{s: s for s in SHORT}, **{v: k for k, v in SHORT.items()}}


class SimError(Exception):
    """A command or an option the simulation does not model (answered with exit code 1)."""


# ---------------------------------------------------------------- Slurm's syntax


def parse_array(spec: str) -> tuple[list[int], int | None]:
    """``'0-9,12,15-20:2%4'`` -> ([0, ..., 20], 4). Raises ValueError."""
    ranges, _, throttle = spec.partition("%")
    ids: set[int] = set()
    for part in ranges.split(","):
        found = re.fullmatch(r"(\d+)(?:-(\d+)(?::(\d+))?)?", part.strip())
        if not found:
            raise ValueError(part)
        first, last, step = int(found[1]), int(found[2] or found[1]), int(found[3] or 1)
        if last < first or step < 1:
            raise ValueError(part)
        ids.update(range(first, last + 1, step))
    if throttle and not throttle.isdigit():
        raise ValueError(throttle)
    return sorted(ids), (int(throttle) if throttle else None)


def format_ranges(ids: Iterable[int]) -> str:
    """[0, 1, 2, 5, 7, 8] -> ``'0-2,5,7-8'``, as Slurm prints task ids."""
    return slurptuna._format_ranges(ids)


def parse_time(text: str) -> int | None:
    """``--time`` -> seconds, rounded up to minutes as Slurm does (fake_slurm's parser); None: no limit."""
    minutes = _fake_slurm_minutes(text)
    return None if minutes is None else minutes * 60


def parse_tasks_spec(spec: str) -> list[tuple[int, int]]:
    """``'5:0-99/6:0-49,60-99'`` -> [(5, 0), ..., (5, 99), (6, 0), ...]: array task i runs the i-th pair."""
    pairs = []
    for part in spec.split("/"):
        trial, colon, ranges = part.partition(":")
        if not colon or not trial.strip().isdigit():
            raise ValueError(f"bad --tasks part {part!r}")
        chunks, throttle = parse_array(ranges)
        if throttle is not None:
            raise ValueError(f"bad --tasks part {part!r}")
        pairs += [(int(trial), chunk) for chunk in chunks]
    return pairs


@dataclass(frozen=True)
class WorkerCommand:
    """``python -m slurptuna worker chunk|reduce ...`` as the simulation reads it."""

    kind: str  # "chunk" or "reduce"
    run_dir: Path
    trial: int | None = None  # worker chunk/reduce RUN TRIAL
    chunk_offset: int = 0  # --chunk-offset K: task t is chunk K + t
    chunk: int | None = None  # --chunk I (a plain job)
    tasks: tuple[tuple[int, int], ...] = ()  # --tasks SPEC: task i is tasks[i]
    trials: tuple[int, ...] = ()  # reduce --trials 5,6,7

    def chunk_of(self, task: int | None) -> tuple[int, int] | None:
        """(trial, chunk) that array task ``task`` computes; None if the command does not say."""
        if self.tasks:
            return self.tasks[task or 0] if (task or 0) < len(self.tasks) else None
        if self.trial is None:
            return None
        if self.chunk is not None:
            return (self.trial, self.chunk)
        return None if task is None else (self.trial, self.chunk_offset + task)

    def reduce_trials(self) -> tuple[int, ...]:
        return self.trials or (() if self.trial is None else (self.trial,))


_WORKER_VALUE_OPTIONS = {"--chunk-offset", "--chunk", "--tasks", "--trials", "--logs", "--results-fd"}


def parse_worker_command(command: Sequence[str]) -> WorkerCommand | None:
    """The worker command in a job's argv: ``... -m slurptuna worker KIND ...`` (or ``slurptuna.py worker``)."""
    start = None
    for i, word in enumerate(command):
        module = word == "slurptuna" and i > 0 and command[i - 1] == "-m"
        if (module or word.endswith("slurptuna.py")) and command[i + 1 : i + 2] == ["worker"]:
            start = i + 2
            break
    if start is None or start >= len(command):
        return None
    kind, rest = command[start], list(command[start + 1 :])
    positional: list[str] = []
    options: dict[str, str] = {}
    while rest:
        word = rest.pop(0)
        if word.startswith("--"):
            name, equals, value = word.partition("=")
            if not equals and name in _WORKER_VALUE_OPTIONS:
                value = rest.pop(0) if rest else ""
            options[name] = value
        else:
            positional.append(word)
    if kind not in ("chunk", "reduce") or not positional:
        return None
    trial = int(positional[1]) if len(positional) > 1 else None
    return WorkerCommand(
        kind=kind,
        run_dir=Path(positional[0]),
        trial=trial,
        chunk_offset=int(options.get("--chunk-offset") or 0),
        chunk=int(options["--chunk"]) if options.get("--chunk") else None,
        tasks=tuple(parse_tasks_spec(options["--tasks"])) if options.get("--tasks") else (),
        trials=tuple(int(t) for t in options["--trials"].split(",") if t) if options.get("--trials") else (),
    )


# sbatch options that take a value: long name -> short letter (None: long only)
_SBATCH_VALUES = {
    "array": "a",
    "job-name": "J",
    "cpus-per-task": "c",
    "time": "t",
    "output": "o",
    "error": "e",
    "dependency": "d",
    "qos": "q",
    "partition": "p",
    "account": "A",
    "chdir": "D",
    "nodes": "N",
    "ntasks": "n",
    "constraint": "C",
    "comment": None,
    "kill-on-invalid-dep": None,
    "mem-per-cpu": None,
    "mem": None,
    "open-mode": None,
    "gres": None,
    "export": None,
    "mail-type": None,
    "mail-user": None,
    "wrap": None,
    "begin": None,
    "nice": None,
}
_SBATCH_SHORT = {short: long for long, short in _SBATCH_VALUES.items() if short}
_SBATCH_FLAGS = {"parsable": None, "hold": "H", "wait": "W", "requeue": None, "no-requeue": None, "exclusive": None}
_SBATCH_SHORT_FLAGS = {short: long for long, short in _SBATCH_FLAGS.items() if short}


def parse_sbatch(argv: Sequence[str]) -> tuple[dict[str, str], list[str]]:
    """sbatch's argv (without ``sbatch``) -> (options by long name, [script, args...]).

    Options stand as ``--opt=v``, ``--opt v``, ``-Xv`` or ``-X v`` anywhere before the script; the
    first word that is not an option is the script, the rest its arguments. Unknown ``--x=y`` and
    ``--x`` are kept (sbatch would check them; the simulation only records them).
    """
    options: dict[str, str] = {}
    words = list(argv)
    while words:
        word = words[0]
        if word == "--":
            words.pop(0)
            break
        if word.startswith("--"):
            words.pop(0)
            name, equals, value = word[2:].partition("=")
            if not equals and name in _SBATCH_VALUES:
                if not words:
                    raise SimError(f"sbatch: option '--{name}' requires an argument")
                value = words.pop(0)
            options[name] = value
        elif word.startswith("-") and len(word) > 1:
            words.pop(0)
            letter, attached = word[1], word[2:]
            if letter in _SBATCH_SHORT:
                if not attached:
                    if not words:
                        raise SimError(f"sbatch: option requires an argument -- '{letter}'")
                    attached = words.pop(0)
                options[_SBATCH_SHORT[letter]] = attached
            elif letter in _SBATCH_SHORT_FLAGS:
                options[_SBATCH_SHORT_FLAGS[letter]] = ""
            else:
                raise SimError(f"sbatch: invalid option -- '{letter}' (not modelled by SimSlurm)")
        else:
            break
    return options, words


def parse_dependency(text: str) -> list[tuple[str, int, int | None]]:
    """``'afterok:12:13_2,afterany:14'`` -> [(kind, job id, task or None)]. Raises ValueError."""
    found = []
    for part in re.split(r"[,?]", text):
        kind, _, refs = part.partition(":")
        if kind not in ("afterok", "afterany", "afternotok") or not refs:
            raise ValueError(part)
        for ref in refs.split(":"):
            match = re.fullmatch(r"(\d+)(?:_(\d+))?", ref)
            if not match:
                raise ValueError(ref)
            found.append((kind, int(match[1]), int(match[2]) if match[2] is not None else None))
    return found


_FORMAT_TOKEN = re.compile(r"%%|%(\.)?(-)?(\d*)([a-zA-Z])")


def expand_pattern(pattern: str, values: Mapping[str, str | int]) -> str:
    """A log file pattern: ``%A %a %j %x %u %%`` (zero padded with ``%4a``)."""

    def sub(match: re.Match[str]) -> str:
        if match[0] == "%%":
            return "%"
        value = values.get(match[4])
        if value is None:
            return match[0]
        return str(value).zfill(int(match[3])) if match[3] and isinstance(value, int) else str(value)

    return _FORMAT_TOKEN.sub(sub, pattern)


# ---------------------------------------------------------------- the cluster's knobs


@dataclass
class Site:
    """What the simulated cluster allows and how long things take (simulated seconds)."""

    cpus: int = 1000
    max_array_size: int = 1001
    max_job_count: int = 10000  # Slurm's default; the table holds at most MaxJobCount - 1 tasks
    min_job_age: float = 300.0  # ended tasks stay in the table (squeue -t all, MaxJobCount) this long
    max_submit_jobs: int | None = None  # the association's MaxSubmitJobs: queued tasks, every array task counting
    max_jobs: int | None = None  # the association's MaxJobs: running tasks
    qos_limits: dict[str, dict[str, int]] = field(default_factory=lambda: {"normal": {}, "short": {}})
    rpc_bucket: int = 0  # rl_bucket_size; 0: no rate limit (Slurm 22.05, or rl_enable off)
    rpc_refill: int = 2  # rl_refill_rate
    rpc_period: float = 1.0  # rl_refill_period
    task_seconds: float = 2.0  # a no-op chunk task, Python's start included
    start_delay: float = 0.0  # from a job's submission to its tasks' start (the scheduler's next pass)
    dependency_delay: float = 0.0  # from a job's dependency being met to its start
    reduce_seconds: float = 2.0
    latency: float | dict[str, float] = 0.0  # seconds every call takes, or per command
    controller_time: str = "cpu"  # the controller's time between calls that passes on the clock: cpu, wall, none
    user: str = "sim"
    account: str = "root"
    cluster: str = "sim"


# ---------------------------------------------------------------- jobs


@dataclass
class _Job:
    job_id: int
    name: str
    comment: str
    array: bool
    task_ids: list[int]
    throttle: int | None
    cpus: int
    time_limit: int | None
    qos: str
    deps: list[tuple[str, int, int | None]]
    kill_on_invalid_dep: bool
    output: str
    error: str
    cwd: str
    submit_time: float
    worker: WorkerCommand | None
    pending: deque[int] = field(default_factory=deque)
    running: dict[int, tuple[int, float]] = field(default_factory=dict)  # task -> (own id, start)
    ended: dict[int, tuple[str, str, float, bool]] = field(default_factory=dict)  # task -> (state, exit, end, started)
    archived: dict[tuple[str, str], list[int]] = field(default_factory=dict)  # purged ended tasks, for sacct
    blocked: str | None = None  # "Dependency", "DependencyNeverSatisfied" or None
    started_any: bool = False

    @property
    def n_tasks(self) -> int:
        return len(self.task_ids)

    def all_ended(self) -> bool:
        return not self.pending and not self.running


@dataclass
class _Line:
    """One line of squeue or sacct: a task, or an array's never-started tasks of one state."""

    job: _Job
    state: str
    task: int | None  # None: a non-array job, or a group
    group: list[int] | None = None
    own_id: int | None = None
    exit: str = "0:0"
    reason: str = "None"


class SimSlurm:
    """A simulated Slurm: ``sim(argv, env=None, timeout=120)`` answers like ``subprocess.run`` would."""

    def __init__(self, site: Site | None = None, *, start: float = 0.0) -> None:
        self.site = site or Site()
        self.now = float(start)
        self.calls: list[tuple[float, str]] = []  # (simulated time it was answered, command)
        self.waits: list[tuple[float, str, float]] = []  # (when it began, command, seconds) per bucket back-off
        self.refused: dict[str, int] = {}  # refused submissions by Slurm's reason
        self.submitted: list[tuple[float, int, int, bool]] = []  # (time, job id, tasks, is an array) per job
        self.unmodelled: list[str] = []  # commands answered "not modelled"
        self.log_failures = 0  # tasks that failed because Slurm could not open their log file
        self.own_seconds = 0.0  # real CPU time spent inside the simulation
        self.peak_table = 0  # most tasks in slurmctld's table at once (MaxJobCount counts them)
        self.peak_queued = 0  # most queued (pending or running) tasks of the user at once
        self._next_id = FIRST_JOB_ID
        self._jobs: dict[int, _Job] = {}
        self._own: dict[int, tuple[int, int]] = {}  # a started task's own job id -> (array job id, task)
        self._archive: dict[int, tuple[bool, dict[tuple[str, str], str]]] = {}  # purged jobs, for sacct
        self._events: list[tuple[float, int, int, int, int]] = []  # (end time, seq, job, task, own id)
        self._seq = 0
        self._ready: set[int] = set()  # jobs whose dependencies are met and that have pending tasks
        self._dependents: dict[int, list[int]] = {}
        self._purge: deque[tuple[float, int, int]] = deque()  # (end time, job, task) in end order
        self._free_cpus = self.site.cpus
        self._running_count = 0
        self._running_by_qos: dict[str, int] = {}
        self._queued_count = 0  # pending + running tasks (all the user's: the simulation has one user)
        self._queued_by_qos: dict[str, int] = {}
        self._table = 0  # tasks not yet purged
        self._tokens = self.site.rpc_bucket
        self._token_period = int(self.now // self.site.rpc_period)
        self._transient()

    def _transient(self) -> None:
        """Caches that are not the cluster's state (not saved)."""
        self._mark = self._controller_clock()
        self._params: dict[tuple[str, int], slurptuna.TrialParams] = {}
        self._processes: dict[str, int] = {}
        self._stats: dict[int, slurptuna.ChunkStats] = {}
        self._existing: set[str] = set()
        self._formats: dict[str, list[tuple[str, str, bool, int]]] = {}
        self._noop_seconds: dict[int, float] = {}

    # ---- saving across a killed controller

    def __getstate__(self) -> dict[str, Any]:
        skip = {"_mark", "_params", "_processes", "_stats", "_existing", "_formats", "_noop_seconds"}
        return {k: v for k, v in self.__dict__.items() if k not in skip}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._transient()

    def save(self, path: str | os.PathLike[str]) -> None:
        """The cluster's state, written atomically: the jobs live on when the controller dies."""
        tmp = f"{path}.tmp"
        with open(tmp, "wb") as handle:
            pickle.dump(self, handle, protocol=pickle.HIGHEST_PROTOCOL)
        os.replace(tmp, path)

    @classmethod
    def load(cls, path: str | os.PathLike[str], *, gap: float = 0.0) -> SimSlurm:
        """A saved simulation, ``gap`` simulated seconds later (the cluster ran on meanwhile)."""
        with open(path, "rb") as handle:
            sim = pickle.load(handle)
        started = time.process_time()
        sim._advance(sim.now + gap)
        sim.own_seconds += time.process_time() - started
        sim._mark = sim._controller_clock()
        return sim

    # ---- the three callables the executor takes

    def clock(self) -> float:
        """Simulated seconds; the controller's time since it last called in counts (``Site.controller_time``)."""
        if self.site.controller_time == "none":
            return self.now
        return self.now + max(0.0, self._controller_clock() - self._mark)

    def _controller_clock(self) -> float:
        return time.perf_counter() if self.site.controller_time == "wall" else time.process_time()

    def sleep(self, seconds: float) -> bool:
        """Let ``seconds`` pass, running what falls due. Never stopped: returns False."""
        self._enter()
        try:
            self._advance(self.now + max(0.0, seconds))
        finally:
            self._leave()
        return False

    def __call__(
        self, argv: Sequence[str], env: Mapping[str, str] | None = None, timeout: float = 120
    ) -> subprocess.CompletedProcess[str]:
        """Run one Slurm command; its answer as ``subprocess.run(..., capture_output=True, text=True)`` gives it."""
        self._enter()
        try:
            return self._answer(list(argv), timeout)
        finally:
            self._leave()

    def _enter(self) -> None:
        self._entered = time.process_time()  # catching up with the controller's time is the simulation's work too
        if self.site.controller_time != "none":
            self._advance(self.now + max(0.0, self._controller_clock() - self._mark))

    def _leave(self) -> None:
        self.own_seconds += time.process_time() - self._entered
        self._mark = self._controller_clock()

    def _answer(self, argv: list[str], timeout: float) -> subprocess.CompletedProcess[str]:
        command = os.path.basename(argv[0]) if argv else ""
        handlers: dict[str, Callable[[list[str]], tuple[int, str, str]]] = {
            "sbatch": self._sbatch,
            "squeue": self._squeue,
            "scancel": self._scancel,
            "sacct": self._sacct,
            "scontrol": self._scontrol,
            "sacctmgr": self._sacctmgr,
        }
        if command not in handlers:
            self.unmodelled.append(" ".join(argv))
            return subprocess.CompletedProcess(argv, 127, "", f"SimSlurm: {command or '(empty)'}: not modelled\n")
        if command in RPC_COMMANDS and not self._take_token(command, timeout):
            return subprocess.CompletedProcess(argv, 124, "", f"{argv[0]} timed out after {timeout} s")
        latency = self.site.latency
        self._advance(self.now + (latency.get(command, 0.0) if isinstance(latency, dict) else latency))
        self.calls.append((self.now, command))
        try:
            code, out, err = handlers[command](argv[1:])
        except SimError as exc:
            self.unmodelled.append(" ".join(argv))
            code, out, err = 1, "", f"{exc}\n"
        return subprocess.CompletedProcess(argv, code, out, err)

    # ---- the RPC bucket

    def _take_token(self, command: str, timeout: float) -> bool:
        """One token, waiting as Slurm's client does when told to back off (1 s, 2 s, ...); False past ``timeout``."""
        site = self.site
        if site.rpc_bucket <= 0:
            return True
        waited = 0.0
        attempt = 0
        while True:
            period = int(self.now // site.rpc_period)
            if period > self._token_period:
                self._tokens = min(site.rpc_bucket, self._tokens + (period - self._token_period) * site.rpc_refill)
                self._token_period = period
            if self._tokens > 0:
                self._tokens -= 1
                return True
            attempt += 1
            seconds = float(attempt)
            if waited + seconds > timeout:
                self._advance(self.now + (timeout - waited))
                return False
            self.waits.append((self.now, command, seconds))
            waited += seconds
            self._advance(self.now + seconds)

    # ---- time passing

    def _advance(self, to: float) -> None:
        """Run every task end and purge due by ``to``, in time order; then the clock reads ``to``."""
        events = self._events
        while events and events[0][0] <= to:
            when = events[0][0]
            self.now = max(self.now, when)
            while events and events[0][0] == when:
                _, _, job_id, task, own_id = heapq.heappop(events)
                if task == _ELIGIBLE:
                    self._eligible(job_id)
                else:
                    self._task_ends(job_id, task, own_id)
            self._purge_until(self.now)
            self._schedule()
        self.now = max(self.now, to)
        self._purge_until(self.now)

    def _purge_until(self, now: float) -> None:
        age = self.site.min_job_age
        purge = self._purge
        while purge and purge[0][0] + age <= now:
            _, job_id, task = purge.popleft()
            job = self._jobs.get(job_id)
            if job is None or task not in job.ended:
                continue
            state, exit_code, _, _ = job.ended.pop(task)
            job.archived.setdefault((state, exit_code), []).append(task)
            self._table -= 1
            if job.all_ended() and not job.ended:
                self._archive[job_id] = (job.array, {k: format_ranges(v) for k, v in job.archived.items()})
                del self._jobs[job_id]
                self._dependents.pop(job_id, None)

    # ---- scheduling

    def _dependency_state(self, job: _Job) -> str:
        """The job's dependencies, all together: "ok", "wait" or "never"."""
        result = "ok"
        for kind, dep_id, dep_task in job.deps:
            states = self._task_states(dep_id, dep_task)
            if states is None:
                continue  # purged long ago: Slurm clears a dependency on a job it no longer has
            if any(s in ACTIVE for s in states):
                result = "wait"
                continue
            completed = all(s == "COMPLETED" for s in states)
            if (kind == "afterok" and not completed) or (kind == "afternotok" and completed):
                return "never"
        return result

    def _task_states(self, job_id: int, task: int | None) -> list[str] | None:
        job = self._jobs.get(job_id)
        if job is not None:
            if task is None:
                states = ["PENDING"] * len(job.pending) + ["RUNNING"] * len(job.running)
                states += [e[0] for e in job.ended.values()] + [k[0] for k in job.archived]
                return states
            if task in job.running:
                return ["RUNNING"]
            if task in job.ended:
                return [job.ended[task][0]]
            archived = [k[0] for k, tasks in job.archived.items() if task in tasks]
            return archived or ["PENDING"]
        if job_id in self._archive:
            return [state for state, _ in self._archive[job_id][1]]
        return None

    def _schedule(self) -> None:
        """Start pending tasks in job id order while CPUs (and the running limits) allow."""
        if self._free_cpus <= 0 or not self._ready:
            return
        site = self.site
        for job_id in sorted(self._ready):
            job = self._jobs[job_id]
            qos_cap = site.qos_limits.get(job.qos, {}).get("MaxJobsPerUser")
            while job.pending and self._free_cpus >= job.cpus:
                if job.throttle is not None and len(job.running) >= job.throttle:
                    break
                if site.max_jobs is not None and self._running_count >= site.max_jobs:
                    return
                if qos_cap is not None and self._running_by_qos.get(job.qos, 0) >= qos_cap:
                    break
                self._start_task(job, job.pending.popleft())
            if not job.pending:
                self._ready.discard(job_id)
            if self._free_cpus <= 0:
                return

    def _start_task(self, job: _Job, task: int) -> None:
        if not job.array or not job.pending:
            own_id = job.job_id  # a plain job; an array's last task to start takes the array's id
        else:
            own_id = self._next_id
            self._next_id += 1
        job.started_any = True
        self._own[own_id] = (job.job_id, task)
        self._free_cpus -= job.cpus
        self._running_count += 1
        self._running_by_qos[job.qos] = self._running_by_qos.get(job.qos, 0) + 1
        job.running[task] = (own_id, self.now)
        if not self._open_logs(job, task, own_id):
            self.log_failures += 1
            self._end_task(job, task, "FAILED", "1:0")  # Slurm cannot open the log: the task fails at once
            return
        seconds = self._duration(job)
        if job.time_limit is not None:
            seconds = min(seconds, job.time_limit)
        self._seq += 1
        heapq.heappush(self._events, (self.now + seconds, self._seq, job.job_id, task, own_id))

    def _log_paths(self, job: _Job, task: int, own_id: int) -> tuple[str, str]:
        values = {"A": job.job_id, "a": task if job.array else 4294967294, "j": own_id, "J": own_id}
        values |= {"x": job.name, "u": self.site.user, "N": "simnode"}
        out = os.path.join(job.cwd, expand_pattern(job.output, values))
        return out, os.path.join(job.cwd, expand_pattern(job.error, values)) if job.error else out

    def _open_logs(self, job: _Job, task: int, own_id: int) -> bool:
        """Slurm creates a task's --output and --error files when it starts; False if it cannot (the task fails)."""
        flags = os.O_WRONLY | os.O_CREAT | os.O_APPEND
        try:
            for path in dict.fromkeys(self._log_paths(job, task, own_id)):
                os.close(os.open(path, flags, 0o644))
        except OSError:
            return False
        return True

    def _append_log(self, job: _Job, task: int, own_id: int, stream: str, text: str) -> None:
        out, err = self._log_paths(job, task, own_id)
        try:
            with open(out if stream == "out" else err, "a") as handle:
                handle.write(text)
        except OSError:
            pass

    def _task_ends(self, job_id: int, task: int, own_id: int) -> None:
        """A running task's end event: it did its work (files), or ran out of time."""
        job = self._jobs.get(job_id)
        if job is None or job.running.get(task, (None,))[0] != own_id:
            return  # cancelled meanwhile
        if job.time_limit is not None and self._duration(job) > job.time_limit:
            stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(self.now))
            text = f"slurmstepd: error: *** JOB {own_id} ON simnode CANCELLED AT {stamp} DUE TO TIME LIMIT ***\n"
            self._append_log(job, task, own_id, "err", text)
            self._end_task(job, task, "TIMEOUT", "0:15")
            return
        code = self._run_worker(job, task, own_id)
        self._end_task(job, task, "COMPLETED" if code == 0 else "FAILED", f"{code}:0")

    def _duration(self, job: _Job) -> float:
        return self.site.task_seconds if job.worker is None or job.worker.kind == "chunk" else self.site.reduce_seconds

    def _end_task(self, job: _Job, task: int, state: str, exit_code: str, started: bool = True) -> None:
        if started:
            del job.running[task]
            self._free_cpus += job.cpus
            self._running_count -= 1
            self._running_by_qos[job.qos] -= 1
        self._queued_count -= 1
        self._queued_by_qos[job.qos] -= 1
        job.ended[task] = (state, exit_code, self.now, started)
        self._purge.append((self.now, job.job_id, task))
        if job.all_ended():
            self._ready.discard(job.job_id)
            for dependent in self._dependents.get(job.job_id, []):
                self._check_dependencies(dependent)

    def _check_dependencies(self, job_id: int) -> None:
        job = self._jobs.get(job_id)
        if job is None or job.blocked is None or not job.pending:
            return
        state = self._dependency_state(job)
        if state == "ok":
            job.blocked = None
            self._make_eligible(job_id, self.site.dependency_delay)
        elif state == "never":
            job.blocked = "DependencyNeverSatisfied"
            if job.kill_on_invalid_dep:
                self._cancel_pending(job, list(job.pending))

    def _make_eligible(self, job_id: int, delay: float) -> None:
        """The job may start ``delay`` seconds from now (the scheduler's next pass)."""
        if delay <= 0:
            self._eligible(job_id)
            return
        self._seq += 1
        heapq.heappush(self._events, (self.now + delay, self._seq, job_id, _ELIGIBLE, 0))

    def _eligible(self, job_id: int) -> None:
        job = self._jobs.get(job_id)
        if job is not None and job.pending:
            self._ready.add(job_id)

    def _cancel_pending(self, job: _Job, tasks: list[int]) -> None:
        for task in tasks:
            job.pending.remove(task)
            self._end_task(job, task, "CANCELLED", "0:0", started=False)
        if not job.pending:
            self._ready.discard(job.job_id)

    # ---- what a task does

    def _run_worker(self, job: _Job, task: int, own_id: int) -> int:
        """The task's work, as ``python -m slurptuna worker ...`` does it; its exit code."""
        worker = job.worker
        if worker is None:
            return 0  # some other command: it ran and left nothing
        if worker.kind == "reduce":
            return self._reduce(job, task, own_id, worker)
        found = worker.chunk_of(task if job.array else None)
        if found is None:
            self._append_log(job, task, own_id, "err", "worker chunk: give --chunk I, or run as a Slurm array task\n")
            return 2
        trial_number, chunk = found
        trial = slurptuna.RunPaths(worker.run_dir).trial(trial_number)
        try:
            expected = self._trial_params(trial)
        except slurptuna.SlurptunaError as exc:
            self._append_log(job, task, own_id, "err", f"slurptuna.SlurptunaError: {exc}\n")
            return 1
        path = trial.chunk(chunk)
        if os.path.exists(path) and slurptuna._load_valid_chunk(trial, expected, chunk) is not None:
            self._append_log(job, task, own_id, "err", f"chunk {chunk} of trial {trial_number} is already computed\n")
            return 0
        seeds = expected.plan.chunk(chunk)
        stats = self._chunk_stats(len(seeds))
        processes = min(self._worker_parallelism(worker.run_dir), len(seeds))
        seconds = self._noop_seconds.get(len(seeds), 0.0)
        slurptuna._write_chunk_result(trial, slurptuna.ChunkResult.of(expected, chunk, stats, seconds, processes))
        return 0

    def _reduce(self, job: _Job, task: int, own_id: int, worker: WorkerCommand) -> int:
        run = slurptuna.RunPaths(worker.run_dir)
        code = 0
        for trial_number in worker.reduce_trials():
            try:
                summary = slurptuna.reduce_trial(run, trial_number)
            except slurptuna.SlurptunaError as exc:  # a missing chunk (_MissingChunks) or params.json
                self._append_log(job, task, own_id, "err", f"slurptuna reduce: {exc}\n")
                code = 1 if not worker.trials else code  # --trials: the others are skipped
                continue
            line = f"trial {trial_number}: mean {summary.mean!r} over {summary.n_seeds} seeds\n"
            self._append_log(job, task, own_id, "out", line)
        return code

    def _trial_params(self, trial: slurptuna.TrialPaths) -> slurptuna.TrialParams:
        key = (str(trial.run_dir), trial.number)
        expected = self._params.get(key)
        if expected is None:
            if len(self._params) > 4096:
                self._params.clear()
            expected = self._params[key] = slurptuna.TrialParams.load(trial)
        return expected

    def _worker_parallelism(self, run_dir: Path) -> int:
        key = str(run_dir)
        if key not in self._processes:
            meta = slurptuna._read_json(slurptuna.RunPaths(run_dir).meta) or {}
            self._processes[key] = int(meta.get("worker_parallelism", 1))
        return self._processes[key]

    def _chunk_stats(self, n_seeds: int) -> slurptuna.ChunkStats:
        """What a no-op loss gives over ``n_seeds`` seeds, computed once per chunk size by slurptuna's own loop."""
        stats = self._stats.get(n_seeds)
        if stats is None:
            started = time.perf_counter()
            stats = slurptuna._evaluate_seeds(_NOOP, {}, list(range(n_seeds)), {})
            self._noop_seconds[n_seeds] = round(time.perf_counter() - started, 6)
            self._stats[n_seeds] = stats
        return stats

    # ---- sbatch

    def _sbatch(self, args: list[str]) -> tuple[int, str, str]:
        options, words = parse_sbatch(args)
        if "wrap" in options:
            script, command = None, ["sh", "-c", options["wrap"]]
        elif words:
            script, command = words[0], words[1:]
        else:
            raise SimError("sbatch: error: SimSlurm does not read a script from stdin")
        if script is not None and script not in self._existing:
            if not os.path.isfile(script):
                return 1, "", f"sbatch: error: Unable to open file {script}\n"
            self._existing.add(script)
        site = self.site
        if "array" in options:
            try:
                task_ids, throttle = parse_array(options["array"])
            except ValueError:
                return 1, "", "sbatch: error: Invalid --array specification\n"
            if task_ids[-1] >= site.max_array_size:
                return 1, "", SUBMIT_FAILED + "Invalid job array specification\n"
        else:
            task_ids, throttle = [0], None
        try:
            time_limit = parse_time(options["time"]) if "time" in options else None
        except ValueError:
            return 1, "", f"sbatch: error: Invalid --time specification\n{SUBMIT_FAILED}Invalid time limit\n"
        try:
            deps = parse_dependency(options["dependency"]) if options.get("dependency") else []
        except ValueError:
            return 1, "", SUBMIT_FAILED + "Job dependency problem\n"
        for _, dep_id, _ in deps:
            if self._task_states(dep_id, None) is None:
                return 1, "", SUBMIT_FAILED + "Job dependency problem\n"
        qos = options.get("qos") or "normal"
        if qos not in site.qos_limits:
            self.refused["Invalid qos specification"] = self.refused.get("Invalid qos specification", 0) + 1
            return 1, "", SUBMIT_FAILED + "Invalid qos specification\n"
        cpus = int(options.get("cpus-per-task") or 1)
        if cpus > site.cpus:
            return 1, "", SUBMIT_FAILED + "Requested node configuration is not available\n"
        refused = self._admit(len(task_ids), qos)
        if refused is not None:
            return 1, "", refused
        array = "array" in options
        job = _Job(
            job_id=self._next_id,
            name=options.get("job-name") or (os.path.basename(script) if script else "wrap"),
            comment=options.get("comment", ""),
            array=array,
            task_ids=task_ids,
            throttle=throttle,
            cpus=cpus,
            time_limit=time_limit,
            qos=qos,
            deps=deps,
            kill_on_invalid_dep=options.get("kill-on-invalid-dep", "no").lower() in ("yes", "1", "true"),
            output=options.get("output") or ("slurm-%A_%a.out" if array else "slurm-%j.out"),
            error=options.get("error", ""),
            cwd=options.get("chdir") or os.getcwd(),
            submit_time=self.now,
            worker=parse_worker_command(command),
            pending=deque(task_ids),
        )
        self._next_id += 1
        self._jobs[job.job_id] = job
        self.submitted.append((self.now, job.job_id, job.n_tasks, array))
        self._queued_count += job.n_tasks
        self._queued_by_qos[qos] = self._queued_by_qos.get(qos, 0) + job.n_tasks
        self._table += job.n_tasks
        self.peak_table = max(self.peak_table, self._table)
        self.peak_queued = max(self.peak_queued, self._queued_count)
        for _, dep_id, _ in deps:
            self._dependents.setdefault(dep_id, []).append(job.job_id)
        if "hold" in options:
            job.blocked = "JobHeldUser"
        elif deps:
            job.blocked = "Dependency"
            self._check_dependencies(job.job_id)
        else:
            self._make_eligible(job.job_id, self.site.start_delay)
        self._schedule()
        if "parsable" in options:
            return 0, f"{job.job_id}\n", ""
        return 0, f"Submitted batch job {job.job_id}\n", ""

    def _admit(self, n_tasks: int, qos: str) -> str | None:
        """MaxJobCount (sbatch sleeps 1..15 s while the table is full), then the submit limits: None, or the refusal."""
        site = self.site
        err = ""
        for retry in range(1, 17):
            if self._table + n_tasks < site.max_job_count:
                break
            if retry == 16:
                self.refused["MaxJobCount"] = self.refused.get("MaxJobCount", 0) + 1
                return err + SUBMIT_FAILED + "Resource temporarily unavailable\n"
            if retry == 1:
                err = TABLE_FULL + "\n"
            self._advance(self.now + retry)
            if not self._take_token("sbatch", float("inf")):  # each retry is another RPC
                return None
        qos_limit = site.qos_limits.get(qos, {}).get("MaxSubmitJobsPerUser")
        for limit, queued, name in (
            (qos_limit, self._queued_by_qos.get(qos, 0), "QOSMaxSubmitJobPerUserLimit"),
            (site.max_submit_jobs, self._queued_count, "AssocMaxSubmitJobLimit"),
        ):
            if limit is not None and queued + n_tasks > limit:
                self.refused[name] = self.refused.get(name, 0) + 1
                return err + f"sbatch: error: {name}\n{SUBMIT_FAILED}{POLICY}\n"
        return None

    # ---- squeue

    def _squeue(self, args: list[str]) -> tuple[int, str, str]:
        options = _parse_flags(
            args,
            values={"-j": "jobs", "--jobs": "jobs", "-o": "format", "--format": "format", "-t": "states"}
            | {"--states": "states", "-u": "user", "--user": "user", "-n": "name", "--name": "name"}
            | {"-p": "partition", "--partition": "partition", "-q": "qos", "--qos": "qos", "-S": "sort"},
            flags={"-h": "noheader", "--noheader": "noheader", "--me": "me", "-r": "expand", "--array": "expand"}
            | {"-a": "all", "--all": "all", "-v": "verbose"},
            command="squeue",
        )
        if "states" in options:
            text = options["states"]
            if text.lower() == "all":
                states = ACTIVE | ENDED
            else:
                try:
                    states = frozenset(_STATE_NAMES[s.strip().upper()] for s in text.split(","))
                except KeyError as exc:
                    return 1, "", f"squeue: error: Invalid job state specified: {exc.args[0]}\n"
        else:
            states = ACTIVE
        jobs = self._jobs
        if "jobs" in options:
            refs = [r for r in options["jobs"].split(",") if r]
            selected = self._select(refs)
            if len(refs) == 1 and not selected:
                return 1, "", INVALID_ID + "\n"
        else:
            selected = dict.fromkeys(sorted(jobs))
        if "name" in options:
            names = set(options["name"].split(","))
            selected = {j: t for j, t in selected.items() if jobs[j].name in names}
        fmt = options.get("format") or "%.18i %.9P %.8j %.8u %.2t %.10M %.6D %R"
        lines = self._lines(selected, states, expand="expand" in options)
        order = {"PENDING": 0, "RUNNING": 1}
        lines.sort(key=lambda line: order.get(line.state, 2))  # real squeue lists pending lines first
        rendered = [] if "noheader" in options else [self._render(fmt, None)]
        rendered += [self._render(fmt, line) for line in lines]
        return 0, "".join(r + "\n" for r in rendered), ""

    def _select(self, refs: list[str]) -> dict[int, set[int] | None]:
        """Job id references (``A``, ``A_t``, ``A_[1-3]`` or a task's own id) -> job id -> its tasks (None: all)."""
        selected: dict[int, set[int] | None] = {}
        for ref in refs:
            found = re.fullmatch(r"(\d+)(?:_(\d+|\[[\d,\-%]+\]))?", ref.strip())
            if not found:
                continue
            number, part = int(found[1]), found[2]
            if part is None:
                if number in self._jobs:
                    selected[number] = None
                elif number in self._own and self._own[number][0] in self._jobs:
                    job_id, task = self._own[number]
                    self._add_tasks(selected, job_id, {task})
                continue
            if number not in self._jobs:
                continue
            tasks = set(parse_array(part.strip("[]"))[0]) if part.startswith("[") else {int(part)}
            self._add_tasks(selected, number, tasks & set(self._jobs[number].task_ids))
        return selected

    @staticmethod
    def _add_tasks(selected: dict[int, set[int] | None], job_id: int, tasks: set[int]) -> None:
        if not tasks or (job_id in selected and selected[job_id] is None):
            return
        selected.setdefault(job_id, set()).update(tasks)  # type: ignore[union-attr]

    def _lines(self, selected: Mapping[int, set[int] | None], states: frozenset[str], expand: bool) -> list[_Line]:
        """squeue's records: one per started task, and an array's never-started tasks of one state as one line."""
        lines: list[_Line] = []
        for job_id, only in selected.items():
            job = self._jobs.get(job_id)
            if job is None:
                continue
            wanted = (lambda t: True) if only is None else only.__contains__
            if "PENDING" in states:
                pending = [t for t in job.pending if wanted(t)]
                reason = self._pending_reason(job)
                if pending and job.array and not expand and (len(pending) > 1 or not job.started_any):
                    lines.append(_Line(job, "PENDING", None, group=pending, reason=reason))
                else:
                    lines += [_Line(job, "PENDING", t if job.array else None, reason=reason) for t in pending]
            if "RUNNING" in states:
                for task, (own_id, _) in job.running.items():
                    if wanted(task):
                        lines.append(_Line(job, "RUNNING", task if job.array else None, own_id=own_id))
            ended = [(t, e) for t, e in job.ended.items() if e[0] in states and wanted(t)]
            never: dict[str, list[int]] = {}
            for task, (state, exit_code, _, started) in sorted(ended):
                if job.array and not started and not expand:
                    never.setdefault(state, []).append(task)
                else:
                    reason = "None" if state == "COMPLETED" else _END_REASONS.get(state, "None")
                    lines.append(_Line(job, state, task if job.array else None, exit=exit_code, reason=reason))
            for state, tasks in never.items():
                reason = job.blocked if job.blocked and state == "CANCELLED" else "None"
                lines.append(_Line(job, state, None, group=tasks, reason=reason))
        return lines

    def _pending_reason(self, job: _Job) -> str:
        if job.blocked:
            return job.blocked
        if job.throttle is not None and len(job.running) >= job.throttle:
            return "JobArrayTaskLimit"
        if self.site.max_jobs is not None and self._running_count >= self.site.max_jobs:
            return "AssocMaxJobsLimit"
        cap = self.site.qos_limits.get(job.qos, {}).get("MaxJobsPerUser")
        if cap is not None and self._running_by_qos.get(job.qos, 0) >= cap:
            return "QOSMaxJobsPerUserLimit"
        return "Resources" if self._free_cpus < job.cpus else "Priority"

    def _render(self, fmt: str, line: _Line | None) -> str:
        """One line of ``squeue -o FMT`` (``%[.][-]N<letter>``); None: the header."""
        tokens = self._formats.get(fmt)
        if tokens is None:
            tokens = self._formats[fmt] = _parse_format(fmt)
        parts = []
        for literal, letter, right, width in tokens:
            if not letter:
                parts.append(literal)
                continue
            value = _HEADERS.get(letter, letter) if line is None else self._field(letter, line)
            if width:
                value = value[:width].rjust(width) if right else value[:width].ljust(width)
            parts.append(value)
        return "".join(parts)

    def _field(self, letter: str, line: _Line) -> str:
        job = line.job
        if letter in ("i", "K"):
            if not job.array:
                return str(job.job_id) if letter == "i" else "N/A"
            if line.group is not None:
                ranges = format_ranges(line.group) + (f"%{job.throttle}" if job.throttle else "")
                return f"{job.job_id}_[{ranges}]" if letter == "i" else ranges
            return f"{job.job_id}_{line.task}" if letter == "i" else str(line.task)
        if letter == "A":
            return str(line.own_id or job.job_id)
        if letter == "F":
            return str(job.job_id)
        if letter == "T":
            return line.state
        if letter == "t":
            return SHORT[line.state]
        if letter == "r":
            return line.reason if line.state != "RUNNING" else "None"
        if letter == "R":
            return "simnode" if line.state == "RUNNING" else f"({line.reason})"
        if letter == "k":
            return job.comment or "(null)"
        if letter == "j":
            return job.name
        if letter == "u":
            return self.site.user
        if letter == "q":
            return job.qos
        if letter == "P":
            return "sim"
        if letter == "C":
            return str(job.cpus)
        if letter == "D":
            return "1"
        if letter == "E":
            return ",".join(f"{k}:{d}" + ("" if t is None else f"_{t}") for k, d, t in job.deps) or "(null)"
        if letter == "a":
            return self.site.account
        if letter == "M":
            started = job.running[line.task or 0][1] if line.state == "RUNNING" and job.running else self.now
            seconds = int(self.now - started)
            return f"{seconds // 60}:{seconds % 60:02d}"
        raise SimError(f"squeue: SimSlurm does not model the format letter %{letter}")

    # ---- scancel

    def _scancel(self, args: list[str]) -> tuple[int, str, str]:
        refs = []
        for word in args:
            if word.startswith("-"):
                raise SimError(f"scancel: SimSlurm models only `scancel ID...`, not {word}")
            refs += [r for r in word.split(",") if r]
        if not refs:
            return 1, "", "scancel: error: No job identification provided\n"
        for job_id, tasks in self._select(refs).items():
            job = self._jobs[job_id]
            pending = [t for t in job.pending if tasks is None or t in tasks]
            if pending:
                self._cancel_pending(job, pending)
            for task in [t for t in job.running if tasks is None or t in tasks]:
                own_id = job.running[task][0]
                stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(self.now))
                text = f"slurmstepd: error: *** JOB {own_id} ON simnode CANCELLED AT {stamp} ***\n"
                self._append_log(job, task, own_id, "err", text)
                self._end_task(job, task, "CANCELLED", "0:15")
        self._schedule()
        return 0, "", ""  # unknown and ended ids: nothing said (tests/slurm_texts/scancel_unknown_*.json)

    # ---- sacct

    def _sacct(self, args: list[str]) -> tuple[int, str, str]:
        options = _parse_flags(
            args,
            values={"-j": "jobs", "--jobs": "jobs", "-o": "format", "--format": "format", "-s": "state"}
            | {"--state": "state", "-S": "start", "--starttime": "start", "-E": "end", "--endtime": "end"},
            flags={"-X": "allocations", "--allocations": "allocations", "-n": "noheader", "--noheader": "noheader"}
            | {"-P": "parsable2", "--parsable2": "parsable2", "-p": "parsable", "--parsable": "parsable"},
            command="sacct",
        )
        if "parsable2" not in options or "allocations" not in options:
            raise SimError("sacct: SimSlurm models only `sacct -X -P ...`")
        fields = [f.strip().lower() for f in options.get("format", "jobid,state,exitcode").split(",")]
        unknown = set(fields) - {"jobid", "state", "exitcode", "jobidraw"}
        if unknown:
            raise SimError(f"sacct: SimSlurm does not model the fields {sorted(unknown)}")
        refs = [int(r.split("_")[0]) for r in options.get("jobs", "").split(",") if r.split("_")[0].isdigit()]
        rows = []
        for job_id in refs:
            for jobid, state, exit_code in self._accounting(job_id):
                values = {"jobid": jobid, "jobidraw": jobid, "state": state, "exitcode": exit_code}
                rows.append("|".join(values[f] for f in fields))
        header = [] if "noheader" in options else ["|".join(f.capitalize() for f in fields)]
        return 0, "".join(r + "\n" for r in header + rows), ""

    def _accounting(self, job_id: int) -> list[tuple[str, str, str]]:
        """sacct's rows of one job: (JobID, State, ExitCode); never-started array tasks collapsed."""

        def state_text(state: str) -> str:
            return f"CANCELLED by {os.getuid()}" if state == "CANCELLED" else state

        job = self._jobs.get(job_id)
        if job is None:
            if job_id not in self._archive:
                return []
            array, by_state = self._archive[job_id]
            rows = []
            for (state, exit_code), ranges in by_state.items():
                for task in parse_array(ranges)[0]:
                    rows.append((f"{job_id}_{task}" if array else str(job_id), state_text(state), exit_code))
            return rows
        rows = []
        tasks = {t: (s, e) for (s, e), ts in job.archived.items() for t in ts}
        tasks |= {t: (e[0], e[1]) for t, e in job.ended.items()}
        tasks |= dict.fromkeys(job.running, ("RUNNING", "0:0"))
        for task, (state, exit_code) in sorted(tasks.items()):
            rows.append((f"{job_id}_{task}" if job.array else str(job_id), state_text(state), exit_code))
        if job.pending:
            name = f"{job_id}_[{format_ranges(job.pending)}]" if job.array else str(job_id)
            rows.append((name, "PENDING", "0:0"))
        return rows

    # ---- scontrol and sacctmgr

    def _scontrol(self, args: list[str]) -> tuple[int, str, str]:
        words = [a.lower() for a in args if not a.startswith("-")]
        if words[:2] not in (["show", "config"], ["show", "conf"]):
            raise SimError(f"scontrol: SimSlurm models only `scontrol show config`, not {' '.join(args)}")
        site = self.site
        rate = "(null)"
        if site.rpc_bucket > 0:
            rate = (
                f"rl_enable,rl_bucket_size={site.rpc_bucket},rl_refill_rate={site.rpc_refill},"
                f"rl_refill_period={site.rpc_period:g}"
            )
        config = {
            "AccountingStorageEnforce": "associations,limits,qos",
            "AccountingStorageType": "accounting_storage/slurmdbd",
            "ClusterName": site.cluster,
            "MaxArraySize": site.max_array_size,
            "MaxJobCount": site.max_job_count,
            "MinJobAge": f"{site.min_job_age:g} sec",
            "SLURM_VERSION": "23.02.7",
            "SchedulerType": "sched/backfill",
            "SelectType": "select/cons_tres",
            "SlurmctldParameters": rate,
        }
        stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(self.now))
        lines = [f"Configuration data as of {stamp}", *(f"{k:<23} = {v}" for k, v in config.items())]
        lines += ["", "Slurmctld(primary) at simnode is UP"]
        return 0, "\n".join(lines) + "\n", ""

    def _sacctmgr(self, args: list[str]) -> tuple[int, str, str]:
        flags = {a for a in args if a.startswith("-")}
        words = [a for a in args if not a.startswith("-")]
        if len(words) < 2 or words[0].lower() not in ("show", "list"):
            raise SimError(f"sacctmgr: SimSlurm models only `show qos|assoc`, not {' '.join(args)}")
        entity = words[1].lower()
        fmt, filters = None, {}
        for word in words[2:]:
            key, equals, value = word.partition("=")
            if not equals or key.lower() in ("where", "set"):
                continue
            if key.lower() == "format":
                fmt = [f.strip() for f in value.split(",")]
            else:
                filters[key.lower()] = value.split(",")
        if fmt is None:
            raise SimError("sacctmgr: SimSlurm models only calls with format=")
        site = self.site
        rows: list[dict[str, str]]
        if entity == "qos":
            names = filters.get("name") or filters.get("names")
            rows = [
                {"name": name, **{k.lower(): str(v) for k, v in limits.items()}}
                for name, limits in site.qos_limits.items()
                if not names or name in names
            ]
        elif entity.startswith("assoc"):
            users = filters.get("user") or filters.get("users") or [site.user]
            assoc = {  # the simulation has one user: whoever asks (the controller's $USER)
                "cluster": site.cluster,
                "account": site.account,
                "user": users[0],
                "qos": ",".join(sorted(site.qos_limits)),
                "maxsubmitjobs": "" if site.max_submit_jobs is None else str(site.max_submit_jobs),
                "maxsubmit": "" if site.max_submit_jobs is None else str(site.max_submit_jobs),
                "maxjobs": "" if site.max_jobs is None else str(site.max_jobs),
            }
            rows = [assoc]
        else:
            raise SimError(f"sacctmgr: SimSlurm does not model `show {entity}`")
        end = "|" if "-p" in flags or "--parsable" in flags else ""
        if not ({"-P", "--parsable2"} & flags or end):
            raise SimError("sacctmgr: SimSlurm models only -P or -p output")
        lines = [] if {"-n", "--noheader"} & flags else ["|".join(fmt) + end]
        lines += ["|".join(row.get(f.lower(), "") for f in fmt) + end for row in rows]
        return 0, "".join(line + "\n" for line in lines), ""

    # ---- what the benchmark reads

    def queued_tasks(self) -> int:
        """The user's queued (pending or running) tasks now."""
        return self._queued_count

    def running_tasks(self) -> int:
        return self._running_count


_ELIGIBLE = -1  # an event's task: the job becomes eligible to start
_NOOP = slurptuna.LossDefinition("sim_noop", "every seed gives 0.0", {}, lambda params, seed: 0.0)
_END_REASONS = {"FAILED": "NonZeroExitCode", "TIMEOUT": "TimeLimit", "CANCELLED": "None"}


def _parse_format(fmt: str) -> list[tuple[str, str, bool, int]]:
    """``'%i|%.8T'`` -> [(literal, letter, right-aligned, width)]."""
    tokens: list[tuple[str, str, bool, int]] = []
    position = 0
    for match in _FORMAT_TOKEN.finditer(fmt):
        if match.start() > position:
            tokens.append((fmt[position : match.start()], "", False, 0))
        if match[0] == "%%":
            tokens.append(("%", "", False, 0))
        else:
            tokens.append(("", match[4], bool(match[1]), int(match[3] or 0)))
        position = match.end()
    if position < len(fmt):
        tokens.append((fmt[position:], "", False, 0))
    return tokens


def _parse_flags(args: list[str], values: dict[str, str], flags: dict[str, str], command: str) -> dict[str, str]:
    """A command's options (``-x v``, ``-xv``, ``--opt=v``, ``--opt v``, flags) by name; others: SimError."""
    options: dict[str, str] = {}
    words = list(args)
    while words:
        word = words.pop(0)
        name, equals, value = word.partition("=") if word.startswith("--") else (word, "", "")
        if name in flags and not equals:
            options[flags[name]] = ""
        elif name in values:
            if not equals:
                if not words:
                    raise SimError(f"{command}: option {name} requires an argument")
                value = words.pop(0)
            options[values[name]] = value
        elif len(word) > 2 and word[:2] in values and not word.startswith("--"):
            options[values[word[:2]]] = word[2:]
        else:
            raise SimError(f"{command}: SimSlurm does not model the option {word!r}")
    return options


# ---------------------------------------------------------------- the real controller on the simulation


def run_simulated(
    sim: SimSlurm, loss: Any, sleep: Callable[[float], bool] | None = None, **options: Any
) -> slurptuna.OptimizeResult:
    """``optimize_run(loss, mode="distributed", **options)`` with Slurm and the clock simulated by ``sim``.

    The controller is slurptuna's own (``_run_study``); only the distributed row of
    ``_EXECUTORS`` is replaced, for the duration of the call, by ``_SlurmExecutor`` with
    ``slurm=sim`` and ``sleep=sleep or sim.sleep``. Ctrl-C and SIGTERM stop the run as usual.
    """
    import functools

    settings, objects = slurptuna._resolve_settings(loss, {"mode": "distributed", **options})
    mode = slurptuna.ExecutionMode.DISTRIBUTED
    saved = slurptuna._EXECUTORS[mode]
    slurptuna._EXECUTORS[mode] = functools.partial(slurptuna._SlurmExecutor, slurm=sim, sleep=sleep or sim.sleep)
    try:
        with slurptuna._StopSignal() as stop:
            return slurptuna._run_study(settings, stop=stop, clock=sim.clock, **objects)
    finally:
        slurptuna._EXECUTORS[mode] = saved
