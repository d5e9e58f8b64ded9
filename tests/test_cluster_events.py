"""Distributed mode rides out ordinary cluster events (fake_slurm replays Slurm's recorded answers)."""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import textwrap

import losses
import pytest
from conftest import script_env, start_controller, wait_for

from slurptuna import _array_task_ids, optimize_run

OPTIONS = {"mode": "distributed", "n_seeds": 4, "chunk_size": 2, "slurm_poll_seconds": 0.2}


def accepted(fake_slurm) -> list[dict]:
    return [s for s in fake_slurm.submissions() if s.get("job_id") and not s.get("rejected")]


def test_a_submit_limit_keeps_the_qos_waits_for_room_and_the_run_completes(fake_slurm, run_root, monkeypatch, caplog):
    monkeypatch.setenv("FAKE_SLURM_SBATCH_FAULT", "sbatch_qos_max_submit_per_user:2")
    with caplog.at_level(logging.WARNING, logger="slurptuna"):
        result = optimize_run(losses.quadratic, n_trials=3, max_concurrent_trials=3, run_root=run_root, **OPTIONS)
    assert result.n_complete == 3
    refused = [s for s in fake_slurm.submissions() if s.get("rejected")]
    assert len(refused) == 2  # the limit was learnt from them: smaller arrays went out after
    arrays = [s for s in accepted(fake_slurm) if s["array_tasks"] is not None]
    sizes = [len(_array_task_ids(a.split("=")[1])) for s in refused for a in s["argv"] if a.startswith("--array=")]
    assert sizes == [6, 3]  # all 6 chunks at once, then half
    assert sum(len(a["array_tasks"]) for a in arrays) == 6  # each chunk submitted once
    assert all("--qos=short" in s["argv"] for s in fake_slurm.submissions())  # the QoS is never dropped
    limit_lines = [r.getMessage() for r in caplog.records if "under a Slurm limit" in r.getMessage()]
    assert len(limit_lines) == 1 and "QOSMaxSubmitJobPerUserLimit" in limit_lines[0]


def test_an_sbatch_that_failed_but_queued_its_job_is_adopted_and_no_chunk_is_queued_twice(
    fake_slurm, run_root, monkeypatch, seed_counter
):
    monkeypatch.setenv("FAKE_SLURM_SBATCH_FAULT", "sbatch_controller_stopped:1")
    monkeypatch.setenv("FAKE_SLURM_SBATCH_FAULT_QUEUES", "1")
    result = optimize_run(losses.quadratic, n_trials=2, run_root=run_root, **OPTIONS)
    assert result.n_complete == 2
    arrays = [s for s in fake_slurm.submissions() if s["array_tasks"] is not None]
    assert len(arrays) == 2  # one per trial: the first, whose sbatch failed, was found by its comment
    assert sum(seed_counter.evaluations().values()) == 8 and set(seed_counter.evaluations().values()) == {1}


def test_slurm_that_does_not_answer_for_a_while_is_asked_again_and_logged_once(
    fake_slurm, run_root, monkeypatch, caplog
):
    monkeypatch.setenv("FAKE_SLURM_SBATCH_FAULT", "sbatch_controller_down:2")
    with caplog.at_level(logging.WARNING, logger="slurptuna"):
        result = optimize_run(losses.quadratic, n_trials=1, run_root=run_root, **OPTIONS)
    assert result.n_complete == 1
    messages = [r.getMessage() for r in caplog.records]
    assert sum("Slurm does not answer" in m for m in messages) == 1
    assert sum("Slurm answers again" in m for m in messages) == 1
    assert len(accepted(fake_slurm)) == 2


def test_any_other_refusal_cancels_the_runs_jobs_and_prints_the_resume_hint(fake_slurm, tmp_path):
    script = tmp_path / "controller.py"
    script.write_text(
        textwrap.dedent("""
        import sys
        import losses
        from slurptuna import _array_task_ids, optimize_run
        optimize_run(losses.slow_quadratic, mode="distributed", n_trials=2, max_concurrent_trials=2, n_seeds=4,
                     chunk_size=2, run_root=sys.argv[1], run_name="refused", slurm_poll_seconds=0.2)
        """)
    )
    env = script_env(SLURPTUNA_TEST_SLEEP="1", FAKE_SLURM_SBATCH_FAIL="Invalid partition name specified")
    env["FAKE_SLURM_SBATCH_FAIL_CALLS"] = "2"  # the trials' array is queued, its reduce job is refused
    done = subprocess.run(
        [sys.executable, str(script), str(tmp_path / "runs")], env=env, capture_output=True, text=True, timeout=120
    )
    assert done.returncode != 0
    assert "Invalid partition name specified" in done.stderr
    assert "Resume with run_name='refused'" in done.stderr
    (array,) = [str(s["job_id"]) for s in accepted(fake_slurm)]
    assert [c["argv"] for c in fake_slurm.calls("scancel")] == [[f"{array}_[0-3]"]]  # one scancel: every task


CONTROLLER = textwrap.dedent("""
    import sys
    import losses
    from slurptuna import _array_task_ids, optimize_run
    optimize_run(losses.slow_quadratic, mode="distributed", n_trials=2, n_seeds=4, chunk_size=2,
                 run_root=sys.argv[1], run_name="stopped", slurm_poll_seconds=0.2)
""")


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_a_signal_to_the_whole_process_group_while_sbatch_answers_cancels_every_job_and_exits(
    fake_slurm, tmp_path, signum
):
    process = start_controller(
        tmp_path,
        CONTROLLER,
        tmp_path / "runs",
        start_new_session=True,  # as a terminal's foreground job
        FAKE_SLURM_SBATCH_HANG="3",
        FAKE_SLURM_SBATCH_HANG_CALLS="2",
        SLURPTUNA_TEST_SLEEP="10",
    )
    wait_for(lambda: len(fake_slurm.submissions()) == 2)  # the reduce job is queued, sbatch has not answered
    os.killpg(process.pid, signum)  # what a terminal's Ctrl-C does: the controller and its sbatch alike
    _, stderr = process.communicate(timeout=60)
    assert process.returncode == (130 if signum == signal.SIGINT else 143), stderr
    assert "cancelled 2 job(s)" in stderr and "Resume with run_name='stopped'" in stderr.splitlines()[-1]
    array, reduce = (str(s["job_id"]) for s in fake_slurm.submissions())
    cancelled = [c["argv"] for c in fake_slurm.calls("scancel")]
    assert len(cancelled) == 1 and set(cancelled[0]) == {f"{array}_[0-1]", reduce}
