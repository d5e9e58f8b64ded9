#!/usr/bin/env python
"""The study's storage at 10,000 trials: SQLite against Optuna's journal file, in-memory as the floor.

    python benchmark/bench_storage.py                 # windows at 1,000 and 10,000 trials (6-10 minutes here)
    python benchmark/bench_storage.py --quick         # windows at 100 and 1,000 trials (about 1 minute)
    python benchmark/bench_storage.py --trials 5000   # windows at N/10 and N

Three storages hold one study each, written the way slurptuna's controller writes it
(`_run_study`, `_Controller._complete`): `study.ask(distributions)` over the SPEC's parameter space
(two floats, one log; an int; a categorical), four trials in flight, and per trial the bookkeeping
of a completed trial: `trial.report` of 5 chunk means, `set_user_attr` of n_seeds, std,
standard_error and components, then `study.tell`. The storages:

* ``memory``: ``optuna.storages.InMemoryStorage`` (the floor; no file, no reader);
* ``sqlite``: ``"sqlite:///optuna.db"``, the URL slurptuna passes today (Optuna wraps it in its
  ``_CachedStorage``);
* ``journal``: ``JournalStorage(JournalFileBackend("optuna.journal"))`` with its default lock
  (``JournalFileSymlinkLock``).

At each window (N/10 and N trials), interleaved by storage and repeated 3 times (the median is
shown), blocks of W trials per variant: ask + tell with ``RandomSampler`` (the storage's own cost),
the same plus the bookkeeping, and slurptuna's pattern: ``TPESampler(seed, constant_liar=True)``
plus the bookkeeping. Then a reader process reads the study continuously while the writer goes on
(RandomSampler + bookkeeping, at most one trial per 20 ms, so writes keep coming): alternately a
``status`` read as ``_read_study_trials`` does it (a fresh read-only open, ``load_study``,
``get_trials``) and a dashboard poll as optuna-dashboard 0.21 does it (its storage kept open,
``get_all_trials(study_id, deepcopy=False)``). Counted: the writer's time per trial with and without
the reader, its slowest trial, errors on both sides ("database is locked"). Then file sizes, the
cost of re-opening the N-trial study as a resume does (``create_study(load_if_exists=True)`` and
``get_trials``), and optuna-dashboard started on each file (127.0.0.1, a free port): the time to
its first answer of ``/api/studies`` and to ``/api/studies/<id>`` (all trials).

Getting to N trials is not timed and not done trial by trial at 50 ms a trial: the journal is
filled by the same Optuna calls against an in-memory journal backend whose log lines are then
appended to the file in one write (the file holds what those calls write, line for line); SQLite
gets its first 300 trials through ``storage.create_new_trial(template)`` and then copies of its
completed trials' rows (new ids and numbers) until it holds N; the in-memory study is filled trial
by trial. Only the windows' trials are timed, each through the real storage.

``case_storage(tmp, quick)`` returns rows for benchmark/run.py's table; ``measure(tmp, n_large)``
returns the figures; run alone, this prints its own markdown table.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import json
import math
import multiprocessing
import os
import queue
import random
import shutil
import socket
import sqlite3
import statistics
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
STUDY = "bench_storage"
IN_FLIGHT = 4  # trials in flight: max_concurrent_trials=4, so TPE's constant liar has work
N_REPORTS = 5  # chunk means reported per trial
REPEATS = 3
READER_PACE_S = 0.020  # the writer's shortest trial while a reader reads: writes keep coming, not a flood
SQLITE_SEED_TRIALS = 300  # trials SQLite gets through Optuna's own API before its rows are copied
STORAGES = ("memory", "sqlite", "journal")


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def _optuna():
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    return optuna


def distributions() -> dict[str, Any]:
    """The SPEC's example space: a float range, a log range, an int range, a categorical."""
    d = _optuna().distributions
    return {
        "alpha": d.FloatDistribution(0.0, 1.0),
        "lr": d.FloatDistribution(1e-4, 1e-1, log=True),
        "steps": d.IntDistribution(1, 10),
        "mode": d.CategoricalDistribution(["fast", "slow"]),
    }


def trial_outcome(number: int, params: dict[str, Any]) -> tuple[float, list[float], dict[str, Any]]:
    """A loss's mean, its chunk means and the user attributes slurptuna sets on a completed trial."""
    rng = random.Random(number)
    mean = (params["alpha"] - 0.3) ** 2 + 0.01 * math.log10(params["lr"]) ** 2 + rng.gauss(0, 0.05)
    chunks = [mean + rng.gauss(0, 0.2) for _ in range(N_REPORTS)]
    attrs = {
        "n_seeds": 400,
        "std": 1.0 + rng.random(),
        "standard_error": 0.05 + 0.01 * rng.random(),
        "components": {"fit": mean * 0.8, "penalty": mean * 0.2},
    }
    return mean, chunks, attrs


# ---------------------------------------------------------------- the writer


class Writer:
    """One study and its trials in flight; ``step`` asks one trial and finishes the oldest."""

    def __init__(self, study: Any) -> None:
        self.study = study
        self.distributions = distributions()
        self.in_flight: collections.deque = collections.deque()
        self.errors: list[str] = []

    def step(self, bookkeeping: bool) -> None:
        try:
            self.in_flight.append(self.study.ask(self.distributions))
            if len(self.in_flight) > IN_FLIGHT:
                self.finish(self.in_flight.popleft(), bookkeeping)
        except Exception as exc:  # a locked database: counted, the run goes on
            self.errors.append(_root_cause(exc))

    def finish(self, trial: Any, bookkeeping: bool) -> None:
        mean, chunks, attrs = trial_outcome(trial.number, trial.params)
        if bookkeeping:
            for step, value in enumerate(chunks):
                trial.report(value, step)
            for key, value in attrs.items():
                trial.set_user_attr(key, value)
        self.study.tell(trial, mean)

    def drain(self) -> None:
        while self.in_flight:
            self.finish(self.in_flight.popleft(), True)

    def timed_steps(self, n: int, bookkeeping: bool, pace: float = 0.0) -> list[float]:
        times = []
        for _ in range(n):
            started = time.perf_counter()
            self.step(bookkeeping)
            times.append(time.perf_counter() - started)
            if pace > times[-1]:
                time.sleep(pace - times[-1])
        return times


def samplers(variant: str) -> Any:
    optuna = _optuna()
    if variant == "tpe":
        return optuna.samplers.TPESampler(seed=1, constant_liar=True)  # slurptuna's default, 4 in flight
    return optuna.samplers.RandomSampler(seed=1)


VARIANTS = {  # name: (sampler, bookkeeping)
    "random": ("random", False),
    "random_bk": ("random", True),
    "tpe_bk": ("tpe", True),
}


# ---------------------------------------------------------------- the three storages


class Store:
    """A storage under test: where it lives, how the writer and the readers open it, how it is filled."""

    def __init__(self, kind: str, directory: Path) -> None:
        self.kind = kind
        self.path = directory / {"memory": "", "sqlite": "optuna.db", "journal": "optuna.journal"}[kind]
        self.writer = Writer(self._create_study(self.open_storage()))

    def open_storage(self) -> Any:
        optuna = _optuna()
        if self.kind == "memory":
            return optuna.storages.InMemoryStorage()
        if self.kind == "sqlite":
            return f"sqlite:///{self.path}"
        from optuna.storages.journal import JournalFileBackend

        return optuna.storages.JournalStorage(JournalFileBackend(str(self.path)))

    @staticmethod
    def _create_study(storage: Any) -> Any:
        optuna = _optuna()
        return optuna.create_study(
            study_name=STUDY,
            storage=storage,
            load_if_exists=True,
            direction="minimize",
            pruner=optuna.pruners.NopPruner(),
            sampler=samplers("random"),
        )

    def n_trials(self) -> int:
        return len(self.writer.study.get_trials(deepcopy=False))

    def size_bytes(self) -> int | None:
        return None if self.kind == "memory" else self.path.stat().st_size

    def fill_to(self, n: int) -> None:
        """Bring the study to ``n`` trials without timing (see the module docstring), then let the writer see them."""
        have = self.n_trials()
        if have < n:
            {"memory": self._fill_memory, "sqlite": self._fill_sqlite, "journal": self._fill_journal}[self.kind](n)
        self.writer.study.get_trials(deepcopy=False)  # the writer's cache or replay catches up, untimed

    def _fill_memory(self, n: int) -> None:
        self.writer.study.sampler = samplers("random")
        for _ in range(n - self.n_trials()):
            self.writer.step(True)

    def _fill_journal(self, n: int) -> None:
        optuna = _optuna()
        from optuna.storages.journal import JournalFileBackend

        backend = _BufferedJournal(JournalFileBackend(str(self.path)))
        filler = Writer(optuna.load_study(study_name=STUDY, storage=optuna.storages.JournalStorage(backend)))
        filler.study.sampler = samplers("random")
        for _ in range(n - len(filler.study.get_trials(deepcopy=False))):
            filler.step(True)
        filler.drain()
        JournalFileBackend(str(self.path)).append_logs(backend.appended)  # one lock, one write

    def _fill_sqlite(self, n: int) -> None:
        optuna = _optuna()
        storage = optuna.storages.RDBStorage(f"sqlite:///{self.path}")
        study_id = storage.get_study_id_from_name(STUDY)
        space = distributions()
        have = len(storage.get_all_trials(study_id, deepcopy=False))
        for number in range(have, min(n, SQLITE_SEED_TRIALS)):
            rng = random.Random(number)
            params = {
                "alpha": rng.random(),
                "lr": 10 ** rng.uniform(-4, -1),
                "steps": rng.randint(1, 10),
                "mode": rng.choice(["fast", "slow"]),
            }
            mean, chunks, attrs = trial_outcome(number, params)
            template = optuna.trial.create_trial(
                params=params,
                distributions=space,
                value=mean,
                intermediate_values=dict(enumerate(chunks)),
                user_attrs=attrs,
            )
            storage.create_new_trial(study_id, template_trial=template)
        storage.remove_session()
        storage.engine.dispose()
        _copy_sqlite_trials(self.path, study_id, n)


class _BufferedJournal:
    """A journal backend that reads the file once and keeps what is appended in memory, to write it in one go."""

    def __init__(self, file_backend: Any) -> None:
        self._logs = list(file_backend.read_logs(0))
        self.appended: list[dict[str, Any]] = []

    def read_logs(self, log_number_from: int):
        yield from self._logs[log_number_from:]

    def append_logs(self, logs: list[dict[str, Any]]) -> None:
        self._logs.extend(logs)
        self.appended.extend(logs)


def _copy_sqlite_trials(path: Path, study_id: int, n: int) -> None:
    """Copy completed trials' rows (every table keyed by trial_id) under new ids and numbers until there are ``n``."""
    with contextlib.closing(sqlite3.connect(path, timeout=30)) as db:
        tables = [
            name
            for (name,) in db.execute("SELECT name FROM sqlite_master WHERE type='table' AND name != 'trials'")
            if any(col[1] == "trial_id" for col in db.execute(f"PRAGMA table_info({name})"))
        ]
        while True:
            (count,) = db.execute("SELECT count(*) FROM trials WHERE study_id=?", (study_id,)).fetchone()
            if count >= n:
                return
            max_id, max_number = db.execute("SELECT max(trial_id), max(number) FROM trials").fetchone()
            with db:
                db.execute("DROP TABLE IF EXISTS temp.copy_map")
                db.execute(
                    "CREATE TEMP TABLE copy_map AS SELECT trial_id AS old_id, "
                    "ROW_NUMBER() OVER (ORDER BY trial_id) AS r FROM trials "
                    "WHERE study_id=? AND state='COMPLETE' ORDER BY trial_id LIMIT ?",
                    (study_id, n - count),
                )
                db.execute(
                    "INSERT INTO trials (trial_id, number, study_id, state, datetime_start, datetime_complete) "
                    "SELECT ? + m.r, ? + m.r, t.study_id, t.state, t.datetime_start, t.datetime_complete "
                    "FROM trials t JOIN copy_map m ON t.trial_id = m.old_id",
                    (max_id, max_number),
                )
                for table in tables:
                    columns = [c[1] for c in db.execute(f"PRAGMA table_info({table})") if not c[5]]
                    kept = [c for c in columns if c != "trial_id"]
                    select = ", ".join(f"x.{c}" for c in kept)
                    db.execute(
                        f"INSERT INTO {table} (trial_id, {', '.join(kept)}) "
                        f"SELECT ? + m.r, {select} FROM {table} x JOIN copy_map m ON x.trial_id = m.old_id",
                        (max_id,),
                    )


# ---------------------------------------------------------------- the readers (another process)


def status_read(kind: str, path: str) -> tuple[int, int]:
    """Read the study as `python -m slurptuna status` does; (trials, 'locked' retries)."""
    optuna = _optuna()
    if kind == "journal":
        from optuna.storages.journal import JournalFileBackend

        storage = optuna.storages.JournalStorage(JournalFileBackend(path))  # reads never take the lock
        return len(optuna.load_study(study_name=STUDY, storage=storage).get_trials(deepcopy=False)), 0
    url = f"sqlite:///file:{urllib.parse.quote(path)}?mode=ro&uri=true"  # as _read_study_trials
    for attempt in range(4):
        try:
            storage = optuna.storages.RDBStorage(
                url, skip_table_creation=True, engine_kwargs={"connect_args": {"timeout": 0.5}}
            )
            try:
                return len(optuna.load_study(study_name=STUDY, storage=storage).get_trials(deepcopy=False)), attempt
            finally:
                storage.remove_session()
                storage.engine.dispose()
        except Exception as exc:
            if ("locked" not in str(exc) and "busy" not in str(exc)) or attempt == 3:
                raise
            time.sleep(0.25 * (attempt + 1))
    raise AssertionError("not reached")


def dashboard_storage(kind: str, path: str) -> Any:
    """The storage optuna-dashboard 0.21 opens for this file (optuna_dashboard/_storage_url.py)."""
    optuna = _optuna()
    if kind == "journal":
        from optuna.storages.journal import JournalFileBackend

        return optuna.storages.JournalStorage(JournalFileBackend(path))
    return optuna.storages.RDBStorage(f"sqlite:///{path}", skip_compatibility_check=True, skip_table_creation=True)


def reader_main(kind: str, path: str, go: Any, quit_: Any, results: Any) -> None:
    """While ``go`` is set: status reads and dashboard polls in turn, each timed, errors recorded."""
    _optuna()
    while not quit_.is_set():
        if not go.wait(0.05):
            continue
        dash = None
        while go.is_set():
            for style in ("status", "dashboard"):
                if not go.is_set():
                    break
                started = time.perf_counter()
                try:
                    if style == "status":
                        n, retries = status_read(kind, path)
                    else:
                        if dash is None:
                            dash = dashboard_storage(kind, path)
                            study_id = dash.get_study_id_from_name(STUDY)
                            style = "dashboard_open"
                        n, retries = len(dash.get_all_trials(study_id, deepcopy=False)), 0
                    results.put((style, time.perf_counter() - started, n, retries, ""))
                except Exception as exc:
                    results.put((style, time.perf_counter() - started, 0, 0, f"{style}: {_root_cause(exc)}"))
        if dash is not None and hasattr(dash, "engine"):
            dash.remove_session()
            dash.engine.dispose()
        results.put(("idle", 0.0, 0, 0, ""))


def _root_cause(exc: BaseException) -> str:
    """The innermost exception's type and first line: Optuna wraps SQLAlchemy, which wraps sqlite3."""
    while exc.__cause__ is not None or exc.__context__ is not None:
        exc = exc.__cause__ or exc.__context__
    return f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"[:200]


class Reader:
    """A reader process for one store, started once, reading only while asked to."""

    def __init__(self, store: Store) -> None:
        context = multiprocessing.get_context("spawn")  # no SQLite connection or journal state inherited
        self.go, self.quit, self.results = context.Event(), context.Event(), context.Queue()
        self.process = context.Process(
            target=reader_main, args=(store.kind, str(store.path), self.go, self.quit, self.results), daemon=True
        )
        self.process.start()

    def read_during(self, writer: Writer, min_reads: int, min_seconds: float, max_seconds: float) -> dict[str, Any]:
        """The writer writes (paced) while the reader reads: ``min_reads`` of each kind and ``min_seconds``, at most
        ``max_seconds``."""
        reads: list[tuple] = []
        times: list[float] = []
        errors_before = len(writer.errors)
        self.go.set()
        started, cpu = time.perf_counter(), time.process_time()
        while time.perf_counter() - started < max_seconds:
            times += writer.timed_steps(5, True, pace=READER_PACE_S)
            with contextlib.suppress(queue.Empty):
                while True:
                    reads.append(self.results.get_nowait())
            done = [sum(r[0] == style and not r[4] for r in reads) for style in ("status", "dashboard")]
            if min(done) >= min_reads and time.perf_counter() - started >= min_seconds:
                break
        cpu = (time.process_time() - cpu) / len(times)  # sleeping for the pace costs no CPU
        self.go.clear()
        while True:  # the read under way finishes before the next timed block
            item = self.results.get(timeout=600)
            if item[0] == "idle":
                break
            reads.append(item)
        return {"writer": times, "writer_cpu": cpu, "writer_errors": writer.errors[errors_before:], "reads": reads}

    def close(self) -> None:
        self.quit.set()
        self.process.join(timeout=30)
        if self.process.is_alive():
            self.process.terminate()


# ---------------------------------------------------------------- re-opening, and optuna-dashboard on the file


def reopen_seconds(store: Store) -> float:
    """What a resume pays: `create_study(load_if_exists=True)` on the file, then `get_trials` (the sampler's seed)."""
    started = time.perf_counter()
    study = Store._create_study(store.open_storage())
    len(study.get_trials(deepcopy=False))
    seconds = time.perf_counter() - started
    backend = getattr(study._storage, "_backend", None)
    if backend is not None and hasattr(backend, "engine"):
        backend.remove_session()
        backend.engine.dispose()
    return seconds


def free_port() -> int:
    with contextlib.closing(socket.socket()) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def fetch_json(url: str, timeout: float = 600) -> Any:
    with urllib.request.urlopen(url, timeout=timeout) as response:
        return json.load(response)


def dashboard_check(store: Store, directory: Path) -> dict[str, Any]:
    """Start optuna-dashboard on the file as a user would, ask its API for the studies and the trials, stop it."""
    command = shutil.which("optuna-dashboard")
    if command is None:
        return {"error": "optuna-dashboard is not installed"}
    target = str(store.path) if store.kind == "journal" else f"sqlite:///{store.path}"
    port = free_port()
    before = (store.path.stat().st_size, store.path.stat().st_mtime_ns)
    log_path = directory / f"dashboard-{store.kind}.log"
    base = f"http://127.0.0.1:{port}"
    started = time.perf_counter()
    with open(log_path, "wb") as log_file:
        server = subprocess.Popen(
            [command, target, "--host", "127.0.0.1", "--port", str(port), "--server", "wsgiref", "--quiet"],
            stdout=log_file,
            stderr=subprocess.STDOUT,
        )
    try:
        while True:
            try:
                studies = fetch_json(f"{base}/api/studies", timeout=5)["study_summaries"]
                break
            except OSError:
                if server.poll() is not None or time.perf_counter() - started > 120:
                    tail = log_path.read_text(errors="replace")[-500:]
                    return {"error": f"no answer (exit {server.poll()}): {tail}"}
                time.sleep(0.1)
        ready = time.perf_counter() - started
        study_id = studies[0]["study_id"]
        started = time.perf_counter()
        detail = fetch_json(f"{base}/api/studies/{study_id}")
        trials_seconds = time.perf_counter() - started
    finally:
        server.terminate()
        try:
            server.wait(timeout=10)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()
    after = (store.path.stat().st_size, store.path.stat().st_mtime_ns)
    return {
        "version": _dashboard_version(),
        "ready": ready,
        "studies": len(studies),
        "trials_seconds": trials_seconds,
        "trials": len(detail.get("trials", [])),
        "file_untouched": before == after,
    }


def _dashboard_version() -> str:
    try:
        from importlib.metadata import version

        return version("optuna-dashboard")
    except Exception:
        return "?"


# ---------------------------------------------------------------- the measurement


def window(stores: list[Store], readers: dict[str, Reader], block: int, min_reads: int) -> dict[str, dict[str, Any]]:
    """At the stores' current size: the variants in blocks, interleaved by store, 3 times; then reads during writes."""
    figures: dict[str, dict[str, Any]] = {s.kind: {"first": s.n_trials()} for s in stores}
    for _ in range(REPEATS):
        for store in stores:
            for variant, (sampler, bookkeeping) in VARIANTS.items():
                store.writer.study.sampler = samplers(sampler)
                cpu = time.process_time()
                times = store.writer.timed_steps(block, bookkeeping)
                cpu = (time.process_time() - cpu) / block  # the writer's own CPU: not the waits, not other load
                figures[store.kind].setdefault(variant, []).append(statistics.mean(times))
                figures[store.kind].setdefault(variant + "_cpu", []).append(cpu)
                figures[store.kind].setdefault(variant + "_all", []).extend(times)
    for store in stores:
        store.writer.study.sampler = samplers("random")
        if store.kind in readers:
            log(f"  {store.kind}: a reader reads while the writer writes")
            figures[store.kind]["during_reads"] = readers[store.kind].read_during(
                store.writer, min_reads, min_seconds=5, max_seconds=90
            )
        figures[store.kind]["last"] = store.n_trials()
        figures[store.kind]["bytes"] = store.size_bytes()
        figures[store.kind]["errors"] = list(store.writer.errors)
    return figures


def measure(tmp: Path, n_large: int) -> dict[str, Any]:
    """Every figure, by storage and window size; ``tmp`` receives the files."""
    optuna = _optuna()
    sizes = [n_large // 10, n_large]
    block = 40 if n_large >= 5000 else 10
    min_reads = 2 if n_large >= 5000 else 3
    tmp.mkdir(parents=True, exist_ok=True)
    stores = []
    for kind in STORAGES:
        (tmp / kind).mkdir(exist_ok=True)
        stores.append(Store(kind, tmp / kind))
    readers = {s.kind: Reader(s) for s in stores if s.kind != "memory"}
    result: dict[str, Any] = {"sizes": sizes, "block": block, "optuna": optuna.__version__, "windows": {}}
    try:
        for size in sizes:
            log(f"filling every study to {size:,} trials (untimed)")
            for store in stores:
                store.fill_to(size)
            log(f"window at {size:,} trials: {REPEATS} x {len(VARIANTS)} variants x {block} trials per storage")
            result["windows"][size] = window(stores, readers, block, min_reads)
    finally:
        for reader in readers.values():
            reader.close()
    log(f"re-opening each {n_large:,}-trial study ({REPEATS} times, interleaved)")
    reopen: dict[str, list[float]] = {s.kind: [] for s in stores if s.kind != "memory"}
    for _ in range(REPEATS):
        for store in stores:
            if store.kind in reopen:
                reopen[store.kind].append(reopen_seconds(store))
    result["reopen"] = reopen
    result["trials_at_reopen"] = {s.kind: s.n_trials() for s in stores}
    result["dashboard"] = {}
    for store in stores:
        if store.kind != "memory":
            log(f"optuna-dashboard on the {store.kind} file")
            result["dashboard"][store.kind] = dashboard_check(store, tmp)
    return result


# ---------------------------------------------------------------- the table

NAMES = {"memory": "memory", "sqlite": "SQLite", "journal": "journal"}


def _ms(seconds: float) -> str:
    ms = seconds * 1000
    return f"{ms:.2f} ms" if ms < 10 else f"{ms:.1f} ms" if ms < 100 else f"{ms:.0f} ms"


def _s(seconds: float) -> str:
    return _ms(seconds) if seconds < 1 else f"{seconds:.2f} s"


def _reads(reads: list[tuple], style: str) -> str:
    ok = [r for r in reads if r[0] == style and not r[4]]
    if not ok:
        return "none finished"
    seconds = statistics.median(r[1] for r in ok)
    return f"{_s(seconds)} (n={len(ok)}, {min(r[2] for r in ok):,}-{max(r[2] for r in ok):,} trials)"


def table_rows(result: dict[str, Any]) -> list[tuple[str, str, dict[str, str]]]:
    """(measure, trials, {storage: cell}) in the order of the printed table."""
    rows = []
    for size, figures in result["windows"].items():
        at = f"{size:,}"

        def each(cell, kinds=STORAGES, figures=figures):
            return {k: cell(figures[k]) if k in kinds else "-" for k in STORAGES}

        def median_of(variant):
            return lambda f: f"{_ms(statistics.median(f[variant]))} (CPU {_ms(statistics.median(f[variant + '_cpu']))})"

        files = ("sqlite", "journal")
        rows += [
            ("trials in the window (first-last)", at, each(lambda f: f"{f['first']:,}-{f['last']:,}")),
            ("ask + tell, RandomSampler, per trial: wall (writer's CPU)", at, each(median_of("random"))),
            ("ask + bookkeeping + tell, RandomSampler, per trial", at, each(median_of("random_bk"))),
            (
                "bookkeeping alone (5 `report`, 4 `set_user_attr`), per trial",
                at,
                each(
                    lambda f: (
                        f"{_ms(statistics.median(f['random_bk']) - statistics.median(f['random']))} "
                        f"(CPU {_ms(statistics.median(f['random_bk_cpu']) - statistics.median(f['random_cpu']))})"
                    )
                ),
            ),
            ("ask + bookkeeping + tell, TPE (constant_liar, 4 in flight): slurptuna's", at, each(median_of("tpe_bk"))),
            (
                "writer alone: median / slowest trial (RandomSampler + bookkeeping)",
                at,
                each(lambda f: f"{_ms(statistics.median(f['random_bk_all']))} / {_ms(max(f['random_bk_all']))}"),
            ),
            (
                "writer while another process reads: median / slowest trial",
                at,
                each(
                    lambda f: (
                        f"{_ms(statistics.median(f['during_reads']['writer']))} / "
                        f"{_ms(max(f['during_reads']['writer']))} (CPU {_ms(f['during_reads']['writer_cpu'])}; "
                        f"{len(f['during_reads']['writer'])} trials)"
                    ),
                    files,
                ),
            ),
            (
                "writer errors (all blocks; 'database is locked')",
                at,
                each(lambda f: f"{len(f['errors'])}" + (f": {f['errors'][0]}" if f["errors"] else "")),
            ),
            (
                "`status` read during writes: fresh read-only open, `load_study`, `get_trials`",
                at,
                each(lambda f: _reads(f["during_reads"]["reads"], "status"), files),
            ),
            (
                "dashboard during writes: first open + read / each poll (`get_all_trials`)",
                at,
                each(
                    lambda f: (
                        _reads(f["during_reads"]["reads"], "dashboard_open").split(" (")[0]
                        + " / "
                        + _reads(f["during_reads"]["reads"], "dashboard")
                    ),
                    files,
                ),
            ),
            (
                "reader errors / 'locked' retries",
                at,
                each(
                    lambda f: (
                        f"{sum(bool(r[4]) for r in f['during_reads']['reads'])} / "
                        f"{sum(r[3] for r in f['during_reads']['reads'])}"
                        + next((f": {r[4]}" for r in f["during_reads"]["reads"] if r[4]), "")
                    ),
                    files,
                ),
            ),
            (
                "file size (bytes per trial)",
                f"{figures['journal']['last']:,}",
                each(lambda f: f"{f['bytes'] / 1e6:.1f} MB ({f['bytes'] / f['last']:,.0f})", files),
            ),
        ]
    big = f"{result['trials_at_reopen']['journal']:,}"
    rows.append(
        (
            "re-open as a resume does: `create_study(load_if_exists=True)` + `get_trials`",
            big,
            {k: _s(statistics.median(v)) + f" (n={len(v)})" for k, v in result["reopen"].items()} | {"memory": "-"},
        )
    )
    dash = {}
    for kind, d in result["dashboard"].items():
        if "error" in d:
            dash[kind] = f"failed: {d['error']}"
        else:
            dash[kind] = (
                f"first `/api/studies` {_s(d['ready'])} after start; `/api/studies/<id>` {_s(d['trials_seconds'])} "
                f"({d['trials']:,} trials); file {'untouched' if d['file_untouched'] else 'CHANGED'}"
            )
    version = next((d.get("version") for d in result["dashboard"].values() if "version" in d), "?")
    rows.append((f"`optuna-dashboard FILE` ({version}), its API over HTTP", big, dash | {"memory": "-"}))
    return rows


def markdown(result: dict[str, Any]) -> str:
    lines = ["| Measure | Trials | " + " | ".join(NAMES[k] for k in STORAGES) + " |", "|---|---|---|---|---|"]
    for measure, trials, cells in table_rows(result):
        lines.append(f"| {measure} | {trials} | " + " | ".join(cells[k] for k in STORAGES) + " |")
    return "\n".join(lines)


def case_storage(tmp: Path, quick: bool) -> list[dict[str, str]]:
    """Rows for benchmark/run.py's table (Case, Mode, Seeds, Wall time, Seeds/s, Measured, Target)."""
    started = time.perf_counter()
    result = measure(tmp, 1000 if quick else 10_000)
    log(f"storage case: {time.perf_counter() - started:.0f} s")
    return [
        {
            "Case": "13 storage",
            "Mode": f"{measure_name} ({trials} trials)",
            "Seeds": "-",
            "Wall time": "-",
            "Seeds/s": "-",
            "Measured": "; ".join(f"{NAMES[k]} {cells[k]}" for k in STORAGES if cells[k] != "-"),
            "Target": "-",
        }
        for measure_name, trials, cells in table_rows(result)
    ]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--trials", type=int, default=10_000, help="the larger window's size (the smaller: 1/10)")
    parser.add_argument("--quick", action="store_true", help="--trials 1000")
    parser.add_argument("--keep", action="store_true", help="keep the files (benchmark/results/storage-PID/)")
    parser.add_argument("--json", type=Path, help="also write every figure to this file")
    args = parser.parse_args()
    n_large = 1000 if args.quick else args.trials
    tmp = BENCH / "results" / f"storage-{os.getpid()}"  # the project's disk, as users' runs (benchmark/README.md)
    load_start = os.getloadavg()
    started = time.perf_counter()
    try:
        result = measure(tmp, n_large)
    finally:
        if not args.keep:
            shutil.rmtree(tmp, ignore_errors=True)
    wall = time.perf_counter() - started
    if args.json:
        args.json.write_text(json.dumps(result, indent=1, default=str))
    print(markdown(result))
    print(
        f"\noptuna {result['optuna']}, Python {sys.version.split()[0]}, {os.cpu_count()} cores; "
        f"load average {load_start[0]:.2f} at start, {os.getloadavg()[0]:.2f} at end; {wall:.0f} s; "
        f"blocks of {result['block']} trials, median of {REPEATS}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
