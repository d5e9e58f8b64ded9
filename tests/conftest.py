"""Shared fixtures: the repo on sys.path, a runs directory, seed counting, fake Slurm."""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import optuna
import pytest

TESTS = Path(__file__).resolve().parent
REPO = TESTS.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(TESTS))


def script_env(**extra: str) -> dict[str, str]:
    """The environment of a controller script run as a subprocess: it finds slurptuna and tests/losses.py."""
    return {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), str(TESTS)]), **extra}


def run_script(
    script: Path | None,
    *args: str | Path,
    cwd: Path | None = None,
    stdin: str | None = None,
    timeout: float = 180,
    **env: str,
) -> subprocess.CompletedProcess[str]:
    """Run a script to its end as a user would (``None``: ``python ARGS``); its output captured, never raises."""
    return subprocess.run(
        [sys.executable, *([str(script)] if script else []), *map(str, args)],
        input=stdin,
        capture_output=True,
        text=True,
        env=script_env(**env),
        timeout=timeout,
        cwd=cwd or (script.parent if script else None),
        check=False,
    )


def start_controller(
    tmp_path: Path, script: str, *args: str | Path, start_new_session: bool = False, **env: str
) -> subprocess.Popen[str]:
    """Write ``script`` to tmp_path/controller.py and start it with ``args``; stdout and stderr piped."""
    path = tmp_path / "controller.py"
    path.write_text(script)
    return subprocess.Popen(
        [sys.executable, str(path), *map(str, args)],
        env=script_env(**env),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=start_new_session,  # its own process group, as a terminal's foreground job
    )


def slurptuna_command(*args: str | Path, python: list[str] | None = None, timeout: float = 120):
    """``python -m slurptuna ARGS`` (status, report ...) from another process, as a user types it."""
    return subprocess.run(
        [*(python or [sys.executable, "-m", "slurptuna"]), *map(str, args)],
        env=script_env(),
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def assert_one_error_line(done: subprocess.CompletedProcess[str], command: str, *words: str) -> None:
    """A user's mistake on the command line: exit code 2, one line ``slurptuna COMMAND: ...`` naming ``words``."""
    assert done.returncode == 2, done.stderr
    assert done.stdout == ""
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"slurptuna {command}: "), done.stderr
    for word in words:
        assert word in lines[0]


def wait_for(condition, timeout: float = 60.0):
    """Poll ``condition()`` until it is truthy; returns that value (fails the test after ``timeout`` s)."""
    deadline = time.monotonic() + timeout
    while not (value := condition()):
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(0.02)
    return value


@pytest.fixture
def run_root(tmp_path: Path) -> Path:
    return tmp_path / "runs"


class SeedCounter:
    """Reads what the test losses appended: one "x seed" line per evaluation."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory

    def evaluations(self) -> Counter:
        counts: Counter = Counter()
        for path in self.directory.iterdir():
            if path.name.isdigit():
                for line in path.read_text().splitlines():
                    x, seed = line.split()
                    counts[(float(x), int(seed))] += 1
        return counts

    def total(self) -> int:
        return sum(self.evaluations().values())


@pytest.fixture
def seed_counter(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> SeedCounter:
    directory = tmp_path / "seed_counts"
    directory.mkdir()
    monkeypatch.setenv("SLURPTUNA_TEST_COUNT_DIR", str(directory))
    return SeedCounter(directory)


class FakeSlurm:
    """fake_slurm/ first on PATH, its state in a temp dir; reads its logs."""

    def __init__(self, state: Path) -> None:
        self.state = state

    def submissions(self) -> list[dict]:
        path = self.state / "submissions.jsonl"
        return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []

    def calls(self, command: str) -> list[dict]:
        path = self.state / "calls.jsonl"
        rows = [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []
        return [r for r in rows if r["cmd"] == command]


@pytest.fixture
def fake_slurm(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> FakeSlurm:
    state = tmp_path / "fake_slurm_state"
    state.mkdir()
    # the real interpreter right after the fakes: a pyenv shim would add ~60 ms to every command
    path = [str(REPO / "fake_slurm"), os.path.dirname(sys.executable), os.environ["PATH"]]
    monkeypatch.setenv("PATH", os.pathsep.join(path))
    monkeypatch.setenv("FAKE_SLURM_DIR", str(state))
    return FakeSlurm(state)


def read_json(path: Path) -> dict:
    return json.loads(Path(path).read_text())


def chunk_records(trial) -> dict[int, dict]:
    """A trial's chunk records as JSON, by chunk, wherever they are: merged, a task's file, a pool worker's lines.

    Only whole records: a line a crash cut is no record (as slurptuna reads them).
    """
    paths = [trial.merged_chunks, *(sorted(trial.chunks_dir.iterdir()) if trial.chunks_dir.is_dir() else [])]
    records: dict[int, dict] = {}
    for path in paths:
        try:
            text = path.read_text()
        except FileNotFoundError:
            continue
        lines = text.splitlines(keepends=True) if path.suffix == ".jsonl" else [text + "\n"]
        for line in lines:
            if line.endswith("\n"):
                with contextlib.suppress(ValueError):
                    record = json.loads(line)
                    records.setdefault(record["chunk_index"], record)
    return records


def rewrite_chunk_record(trial, index: int, **changes) -> None:
    """Change chunk ``index``'s record in a finished trial's merged file (a stale or tampered chunk)."""
    lines = trial.merged_chunks.read_text().splitlines()
    records = [json.loads(line) for line in lines]
    records = [{**r, **changes} if r["chunk_index"] == index else r for r in records]
    trial.merged_chunks.write_text("".join(json.dumps(r) + "\n" for r in records))


def as_sqlite(run) -> None:
    """Make a run's study an SQLite ``optuna.db``, as runs made before ``optuna.journal`` have it."""
    import optuna

    import slurptuna

    name = json.loads(run.meta.read_text())["run_name"]
    optuna.copy_study(
        from_study_name=name,
        from_storage=slurptuna._study_storage(run),
        to_storage=f"sqlite:///{run.optuna_db}",
        to_study_name=name,
    )
    run.journal.unlink()
    run.trials_index.unlink(missing_ok=True)  # such runs had no index either: status reads their study


class Points(optuna.samplers.BaseSampler):
    """Proposes the given x values in turn: trial n gets ``xs[n % len(xs)]``."""

    def __init__(self, xs: list[float]) -> None:
        self.xs = xs

    def infer_relative_search_space(self, study, trial):
        return {}

    def sample_relative(self, study, trial, search_space):
        return {}

    def sample_independent(self, study, trial, name, distribution):
        return self.xs[trial.number % len(self.xs)]
