"""A run's files at a site's scale: a few files per finished trial, whatever its chunk count, crash-safe merging.

A site counts inodes and a metadata server suffers many small files: a finished trial keeps
its records in one ``chunks.jsonl``; trials and array logs are grouped 1,000 to a directory.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import losses
import pytest
from conftest import script_env

import slurptuna
from slurptuna import RunPaths, TrialParams, optimize_run


def files_under(path: Path) -> list[Path]:
    """Every file and directory below ``path`` (each an inode)."""
    return [Path(root) / name for root, dirs, files in os.walk(path) for name in dirs + files]


def chunk_records(trial: slurptuna.TrialPaths) -> list[dict]:
    return [json.loads(line) for line in trial.merged_chunks.read_text().splitlines()]


def test_a_finished_single_mode_trial_leaves_a_few_files_whatever_its_chunk_count(run_root):
    result = optimize_run(losses.quadratic, n_trials=2, n_seeds=300, chunk_size=2, run_root=run_root)
    run = RunPaths(Path(result.run_dir))
    for number in (0, 1):
        trial = run.trial(number)
        assert trial.dir == run.dir / "trials" / "00000-00999" / f"trial_{number:05d}"
        assert sorted(p.name for p in files_under(trial.dir)) == ["chunks.jsonl", "params.json", "summary.json"]
        records = chunk_records(trial)
        assert [r["chunk_index"] for r in records] == list(range(150))  # every chunk's statistics stay readable
        assert sum(r["stats"]["count"] for r in records) == 300
    direct = [losses.quadratic_value(result.study.trials[0].params, s) for s in range(300)]
    assert result.study.trials[0].value == pytest.approx(sum(direct) / 300)


def test_a_finished_slurm_trial_leaves_a_few_files_and_its_empty_task_logs_are_dropped(fake_slurm, run_root):
    result = optimize_run(
        losses.quadratic, mode="distributed", n_trials=2, n_seeds=40, chunk_size=1, run_root=run_root,
        slurm_poll_seconds=0.2,
    )  # fmt: skip
    run = RunPaths(Path(result.run_dir))
    for number in (0, 1):
        names = sorted(p.name for p in files_under(run.trial(number).dir))
        assert names == ["chunks.jsonl", "jobs.json", "params.json", "summary.json"]
        assert len(chunk_records(run.trial(number))) == 40
    logs = files_under(run.dir / "slurm_logs")
    assert not [p for p in logs if p.name.startswith("task_")]  # 80 tasks, none left a log
    assert len(logs) <= 2 + 3 * len(fake_slurm.submissions())  # per array: a directory, a reduce log or two


MERGE_KILLED = textwrap.dedent("""
    import os, sys
    import losses, slurptuna
    from slurptuna import optimize_run
    unlink = os.unlink

    def dies_midway(path, *args, **kwargs):  # killed as it merges trial 1: chunks.jsonl written, nothing removed
        if "trial_00001" in str(path) and os.path.basename(os.path.dirname(path)) == "chunks":
            os._exit(9)
        return unlink(path, *args, **kwargs)

    slurptuna.os.unlink = dies_midway
    optimize_run(losses.quadratic, n_trials=3, n_seeds=12, chunk_size=2, run_root=sys.argv[1], run_name="merge")
""")


def test_a_trial_whose_records_were_mid_merge_when_the_controller_died_completes_on_resume(tmp_path, seed_counter):
    script = tmp_path / "controller.py"
    script.write_text(MERGE_KILLED)
    killed = subprocess.run([sys.executable, str(script), str(tmp_path / "runs")], env=script_env(), check=False)
    assert killed.returncode == 9
    run = RunPaths(tmp_path / "runs" / "merge")
    trial = run.trial(1)
    assert trial.merged_chunks.exists() and list(trial.chunks_dir.iterdir())  # both: the merged file and leftovers
    evaluated = seed_counter.total()
    result = optimize_run(losses.quadratic, n_trials=3, n_seeds=12, chunk_size=2, run_root=tmp_path / "runs",
                          run_name="merge")  # fmt: skip
    assert [t.state.name for t in result.study.trials] == ["COMPLETE"] * 3
    assert not trial.chunks_dir.exists() and len(chunk_records(trial)) == 6  # merged again, each chunk once
    x = result.study.trials[1].params["x"]
    assert result.study.trials[1].value == pytest.approx(
        sum(losses.quadratic_value({"x": x}, s) for s in range(12)) / 12
    )
    assert seed_counter.total() - evaluated == 12  # only trial 2 was computed: trial 1's records were all there


def test_a_cut_last_record_of_a_pool_worker_is_skipped_and_its_chunk_computed_again(run_root, seed_counter):
    first = optimize_run(losses.quadratic, n_trials=1, n_seeds=8, chunk_size=2, run_root=run_root, run_name="cut")
    trial = RunPaths(Path(first.run_dir)).trial(0)
    expected = TrialParams.load(trial)
    records = trial.merged_chunks.read_text().splitlines(keepends=True)
    trial.merged_chunks.unlink()
    trial.chunks_dir.mkdir()
    (trial.chunks_dir / "worker_1.jsonl").write_text("".join(records[:3]) + records[3][:40])  # killed mid-write
    assert sorted(slurptuna._read_valid_chunks(trial, expected)) == [0, 1, 2]
    assert slurptuna.missing_chunks(trial, expected) == [3]


def test_a_run_in_the_layout_before_grouping_resumes_its_trials_where_they_are(run_root, seed_counter):
    first = optimize_run(losses.quadratic, n_trials=2, n_seeds=6, chunk_size=2, run_root=run_root, run_name="old")
    run = RunPaths(Path(first.run_dir))
    for number in (0, 1):  # as runs made before trials were grouped: trials/trial_N, one file per chunk
        trial = run.trial(number)
        flat = run.dir / "trials" / trial.name
        shutil.move(trial.dir, flat)
        records = [json.loads(line) for line in (flat / "chunks.jsonl").read_text().splitlines()]
        (flat / "chunks.jsonl").unlink()
        (flat / "chunks").mkdir()
        for record in records:
            del record["finished_at"]
            (flat / "chunks" / f"chunk_{record['chunk_index']:05d}.json").write_text(json.dumps(record))
    evaluated = seed_counter.total()
    resumed = optimize_run(losses.quadratic, n_trials=3, n_seeds=6, chunk_size=2, run_root=run_root, run_name="old")
    assert [t.state.name for t in resumed.study.trials] == ["COMPLETE"] * 3
    assert seed_counter.total() - evaluated == 6  # only the new trial
    assert run.trial(0).dir == run.dir / "trials" / "trial_00000"  # old trials stay where they are
    assert run.trial(2).dir == run.dir / "trials" / "00000-00999" / "trial_00002"
    assert sorted(slurptuna._read_valid_chunks(run.trial(0), TrialParams.load(run.trial(0)))) == [0, 1, 2]
    shown = subprocess.run(
        [sys.executable, "-m", "slurptuna", "status", str(run.dir), "--json"],
        capture_output=True, text=True, env=script_env(), check=True,
    )  # fmt: skip
    assert json.loads(shown.stdout)["n_complete"] == 3


def test_no_directory_of_a_run_holds_more_than_a_thousand_trials():
    run = RunPaths(Path("/runs/r"))
    assert run.trial(999).dir.parent != run.trial(1000).dir.parent
    assert run.trial(1000).dir == Path("/runs/r/trials/01000-01999/trial_01000")
    assert run.array_logs(1999).parent.name == "arrays_01000-01999"
