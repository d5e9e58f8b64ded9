"""A disk that fills up (or is read-only) while a run writes it: the run stops, says how to resume, loses nothing.

The real thing where the test may mount a small tmpfs (root); skipped otherwise, but for the
controller's own writes failing through an injected error, which runs everywhere.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import losses
import optuna
import pytest
from conftest import chunk_records, script_env

import slurptuna
from slurptuna import RunDirError, RunPaths, SlurptunaError


class SmallDisk:
    """A mounted tmpfs of a few MB; the ballast file that fills it."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.ballast = path / "ballast"

    def fill(self) -> None:
        losses.fill_the_disk(str(self.ballast))

    def free(self) -> None:
        self.ballast.unlink()

    def remount(self, mode: str) -> None:
        subprocess.run(["mount", "-o", f"remount,{mode}", str(self.path)], check=True)


@pytest.fixture
def small_disk(tmp_path: Path):
    path = tmp_path / "small_disk"
    path.mkdir()
    try:
        done = subprocess.run(
            ["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(path)], capture_output=True, text=True, check=False
        )
    except FileNotFoundError:
        pytest.skip("no mount command: cannot make a small file system")
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here (needs root): {done.stderr.strip()}")
    yield SmallDisk(path)
    subprocess.run(["umount", "-l", str(path)], check=False)


def run_script(script: Path, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(script), *args],
        capture_output=True,
        text=True,
        env=script_env(**env),
        timeout=180,
        check=False,
    )


def assert_stopped_with_one_line(done: subprocess.CompletedProcess[str], *words: str) -> str:
    """Exit status 1 and, after Optuna's log lines, one line of slurptuna's: no traceback."""
    assert done.returncode == 1, done.stderr
    assert "Traceback" not in done.stderr, done.stderr
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith("slurptuna: cannot write "), done.stderr
    for word in words:
        assert word in last, last
    return last


def trial_states(run_dir: Path, storage: str | None = None) -> list[str]:
    study = optuna.load_study(study_name=run_dir.name, storage=storage or slurptuna._study_storage(RunPaths(run_dir)))
    return [t.state.name for t in study.trials]


SINGLE = textwrap.dedent("""
    import sys
    import losses
    from slurptuna import optimize_run
    storage = sys.argv[2] if len(sys.argv) > 2 and sys.argv[2] != "-" else None  # "-": the run's optuna.journal
    n_trials = int(sys.argv[3]) if len(sys.argv) > 3 else 3
    result = optimize_run(losses.fills_the_disk, n_trials=n_trials, n_seeds=4, chunk_size=2, run_root=sys.argv[1],
                          run_name="full", storage=storage, random_seed=7)
    print("RESULT", result.n_complete, result.n_failed)
""")


def test_a_pool_worker_that_cannot_write_its_chunk_stops_the_run_and_a_resume_finishes_it(
    small_disk, seed_counter, tmp_path
):
    script = tmp_path / "fit.py"
    script.write_text(SINGLE)
    run_root = small_disk.path / "runs"
    env = {"SLURPTUNA_TEST_BALLAST": str(small_disk.ballast), "SLURPTUNA_TEST_FILL_TRIAL": "1"}
    env["SLURPTUNA_TEST_FILL_SEED"] = "2"  # trial 1's second chunk: its first chunk is written
    done = run_script(script, str(run_root), **env)
    run = RunPaths(run_root / "full")
    line = assert_stopped_with_one_line(
        done, "No space left on device (ENOSPC)", "Resume with run_name='full'", f"{str(run_root)!r}"
    )
    assert f"cannot write {run.trial(1).dir}" in line  # its chunk's record, or the files after it
    assert trial_states(run.dir) == ["COMPLETE", "RUNNING"]  # no trial failed for it
    kept = set(chunk_records(run.trial(1)))  # chunk 1's record may fit in its record file's last block
    assert 0 in kept
    assert not run.trial(1).errors_dir.exists()  # not recorded as the loss's failure

    small_disk.free()
    again = run_script(script, str(run_root), **env)
    assert again.returncode == 0, again.stderr
    assert "RESULT 3 0" in again.stdout
    assert trial_states(run.dir) == ["COMPLETE"] * 3
    x1 = optuna.load_study(study_name="full", storage=slurptuna._study_storage(run)).trials[1].params["x"]
    evaluations = seed_counter.evaluations()
    again_chunk_1 = 1 if 1 in kept else 2  # only a chunk that was not written is computed again
    assert [evaluations[(x1, s)] for s in range(4)] == [1, 1, again_chunk_1, again_chunk_1]


def test_the_study_database_filling_up_in_the_controller_stops_the_run_and_a_resume_finishes_it(
    small_disk, seed_counter, tmp_path
):
    script = tmp_path / "fit.py"
    script.write_text(SINGLE)
    run_root = tmp_path / "runs"  # the run's files have room: only the study's database is on the small disk
    storage = f"sqlite:///{small_disk.path / 'study.db'}"
    env = {"SLURPTUNA_TEST_BALLAST": str(small_disk.ballast), "SLURPTUNA_TEST_FILL_TRIAL": "1"}
    done = run_script(script, str(run_root), storage, **env)
    assert_stopped_with_one_line(
        done, str(small_disk.path / "study.db"), "(ENOSPC)", "Resume with run_name='full'", "once the disk has space"
    )
    run = RunPaths(run_root / "full")
    small_disk.free()
    assert trial_states(run.dir, storage) == ["COMPLETE", "RUNNING"]
    computed = seed_counter.total()
    again = run_script(script, str(run_root), storage, **env)
    assert again.returncode == 0, again.stderr
    assert trial_states(run.dir, storage) == ["COMPLETE"] * 3
    assert seed_counter.total() == computed + 4  # trial 1 completes from its files; only trial 2 is computed


@pytest.mark.parametrize("how", ["full", "read-only"])
def test_a_resume_on_a_full_or_read_only_disk_stops_at_once_and_changes_nothing(small_disk, tmp_path, how):
    script = tmp_path / "fit.py"
    script.write_text(SINGLE)
    run_root = small_disk.path / "runs"
    assert run_script(script, str(run_root), "-", "1", SLURPTUNA_TEST_FILL_SEED="-1").returncode == 0
    small_disk.fill() if how == "full" else small_disk.remount("ro")
    done = run_script(script, str(run_root), "-", "2", SLURPTUNA_TEST_FILL_SEED="-1")
    cause = "(ENOSPC)" if how == "full" else "Read-only file system (EROFS)"
    assert_stopped_with_one_line(done, str(run_root / "full"), cause, "Resume with run_name='full'")
    small_disk.free() if how == "full" else small_disk.remount("rw")
    assert trial_states(run_root / "full") == ["COMPLETE"]
    again = run_script(script, str(run_root), "-", "2", SLURPTUNA_TEST_FILL_SEED="-1")
    assert again.returncode == 0, again.stderr
    assert trial_states(run_root / "full") == ["COMPLETE"] * 2


DISTRIBUTED = textwrap.dedent("""
    import sys
    import losses
    from slurptuna import optimize_run
    optimize_run(losses.fills_the_disk, mode="distributed", n_trials=3, max_concurrent_trials=2, n_seeds=1,
                 chunk_size=1, run_root=sys.argv[1], run_name="cluster", slurm_poll_seconds=0.2)
""")


def test_a_slurm_task_that_cannot_write_its_chunk_stops_the_run_and_cancels_its_jobs(
    small_disk, fake_slurm, seed_counter, tmp_path
):
    script = tmp_path / "controller.py"
    script.write_text(DISTRIBUTED)
    run_root = small_disk.path / "runs"
    # one trial's task fills the disk and cannot write its chunk; the other trial's task is still running
    env = {"SLURPTUNA_TEST_BALLAST": str(small_disk.ballast), "SLURPTUNA_TEST_SLEEP": "60"}
    env["SLURPTUNA_TEST_FILL_AFTER"] = "1"  # once both trials are submitted
    done = run_script(script, str(run_root), **env)
    line = assert_stopped_with_one_line(done, "(ENOSPC)", "its Slurm jobs cancelled", "run_name='cluster'")
    run = RunPaths(run_root / "cluster")
    assert line.startswith(f"slurptuna: cannot write {run.dir / 'trials'}")
    assert trial_states(run.dir) == ["RUNNING", "RUNNING"]  # no trial failed, none burned a retry
    submitted = {str(s["job_id"]) for s in fake_slurm.submissions()}
    assert len(submitted) == 2  # the two trials' one array and its reduce job, none submitted again
    cancelled = set(fake_slurm.calls("scancel")[-1]["argv"])  # every job of the run still queued, in one call
    accounting = subprocess.run(
        ["sacct", "-X", "-n", "-P", "-j", ",".join(sorted(submitted)), "-o", "jobid,state"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    tasks = {line.split("|")[0]: line.split("|")[1] for line in accounting.splitlines()}
    assert sorted(tasks.values()).count("FAILED") == 1  # the task that filled the disk could not write its chunk
    array, reduce = sorted(submitted)
    assert any(a.startswith(f"{array}_[") for a in cancelled) and reduce in cancelled  # the rest, in one call
    assert not any(s in ("PENDING", "RUNNING") for s in tasks.values()), accounting

    small_disk.free()
    again = run_script(script, str(run_root), SLURPTUNA_TEST_BALLAST=str(small_disk.ballast))
    assert again.returncode == 0, again.stderr
    assert trial_states(run.dir) == ["COMPLETE"] * 3


def test_a_controller_write_failing_with_enospc_cancels_the_runs_jobs_and_stops_with_one_line(fake_slurm, tmp_path):
    """No mount needed: the script makes trial 1's jobs.json meet a full disk once the trials' array is queued."""
    script = tmp_path / "controller.py"
    script.write_text(
        textwrap.dedent("""
        import errno, os, sys
        import losses, slurptuna
        from slurptuna import optimize_run
        write = slurptuna._write_json_atomic
        def full_disk_for_trial_1(path, record, indent=1):
            if os.environ.get("FULL") and str(path).endswith("trial_00001/jobs.json"):
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))
            write(path, record, indent)
        slurptuna._write_json_atomic = full_disk_for_trial_1
        optimize_run(losses.slow_quadratic, mode="distributed", n_trials=2, max_concurrent_trials=2, n_seeds=4,
                     chunk_size=2, run_root=sys.argv[1], run_name="stopped", slurm_poll_seconds=0.2)
        """)
    )
    run_root = tmp_path / "runs"
    done = run_script(script, str(run_root), FULL="1", SLURPTUNA_TEST_SLEEP="10")
    run = RunPaths(run_root / "stopped")
    assert_stopped_with_one_line(
        done, str(run.trial(1).jobs), "No space left on device (ENOSPC)", "Resume with run_name='stopped'"
    )
    (array,) = (str(s["job_id"]) for s in fake_slurm.submissions())  # both trials' array: jobs.json before reduce
    (cancel,) = fake_slurm.calls("scancel")  # one call, as on Ctrl-C
    assert cancel["argv"] == [f"{array}_[0-3]"]
    assert trial_states(run.dir) == ["RUNNING", "RUNNING"]
    again = run_script(script, str(run_root), SLURPTUNA_TEST_SLEEP="0")
    assert again.returncode == 0, again.stderr
    assert trial_states(run.dir) == ["COMPLETE"] * 2


def test_run_dir_error_is_a_slurptuna_error_a_caller_catches_and_one_line_uncaught(tmp_path):
    error = RunDirError("slurptuna: cannot write x: No space left on device (ENOSPC)", "x", "ENOSPC", "run")
    assert isinstance(error, SlurptunaError)
    assert (error.path, error.errno_name, error.run_name) == ("x", "ENOSPC", "run")
    script = tmp_path / "uncaught.py"
    script.write_text("from slurptuna import RunDirError\nraise RunDirError('slurptuna: one line')\n")
    done = run_script(script)
    assert (done.returncode, done.stderr) == (1, "slurptuna: one line\n")


def test_a_full_sqlite_database_is_told_from_other_database_errors(small_disk):
    storage = f"sqlite:///{small_disk.path / 'study.db'}"
    study = optuna.create_study(storage=storage)
    small_disk.fill()
    with pytest.raises(Exception) as raised:
        study.ask()
    cause = slurptuna._unwritable_cause(raised.value, small_disk.path / "study.db")
    assert cause is not None and cause.filename == str(small_disk.path / "study.db")
    assert slurptuna._unwritable_cause(RuntimeError("other"), small_disk.path / "study.db") is None
    assert os.path.exists(small_disk.ballast)
