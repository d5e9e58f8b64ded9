"""Single mode's pool of worker processes: crashes, Ctrl-C, nested runs, how losses are found."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import losses
import pytest
from conftest import chunk_records, read_json, run_script, script_env, wait_for

from slurptuna import RunPaths, optimize_run


def test_a_loss_that_kills_its_process_fails_only_its_chunk_naming_the_signal_and_the_run_goes_on(
    run_root, seed_counter
):
    result = optimize_run(losses.aborts_once_at_seed_5, n_trials=3, n_seeds=8, chunk_size=4, run_root=run_root)
    states = [t.state.name for t in result.study.trials]
    assert states == ["FAIL", "COMPLETE", "COMPLETE"]
    reason = result.study.trials[0].user_attrs["fail_reason"]
    assert "SIGABRT" in reason and "seeds 4..7" in reason and "chunk 1" in reason
    assert repr(result.study.trials[0].params) in reason
    for trial in result.study.trials[1:]:
        assert trial.value == pytest.approx(trial.params["x"] + 3.5)
    # chunk 0 of the failed trial was computed and kept; the crashed chunk has no file
    first = RunPaths(Path(result.run_dir)).trial(0)
    assert set(chunk_records(first)) == {0}


def test_a_loss_that_exits_fails_its_chunk_with_the_exit_code(run_root, seed_counter):
    result = optimize_run(losses.exits_once_at_seed_2, n_trials=2, n_seeds=4, chunk_size=2, run_root=run_root)
    assert [t.state.name for t in result.study.trials] == ["FAIL", "COMPLETE"]
    assert "exit code 3" in result.study.trials[0].user_attrs["fail_reason"]


@pytest.mark.parametrize("mode", ["single", "distributed"])
def test_a_loss_may_start_processes_of_its_own_with_several_workers(run_root, mode, request):
    if mode == "distributed":
        request.getfixturevalue("fake_slurm")
    options = {"slurm_poll_seconds": 0.2} if mode == "distributed" else {}
    result = optimize_run(
        losses.uses_its_own_pool,
        n_trials=1,
        n_seeds=6,
        chunk_size=6,
        worker_parallelism=2,
        mode=mode,
        run_root=run_root,
        **options,
    )
    trial = result.study.trials[0]
    assert trial.state.name == "COMPLETE", trial.user_attrs.get("fail_reason")
    assert trial.value == pytest.approx(trial.params["x"] + 2.5)


def test_optimize_run_at_module_level_stops_once_with_the_fix_and_one_run_directory(tmp_path):
    script = tmp_path / "no_guard.py"
    script.write_text(
        textwrap.dedent("""
        import sys
        from slurptuna import loss, optimize_run

        @loss(name="no_guard_model", parameter_space={"x": (0.0, 1.0)})
        def model(params, seed):
            return params["x"]

        optimize_run(model, n_trials=3, n_seeds=4, chunk_size=2, run_root=sys.argv[1])
        """)
    )
    runs = tmp_path / "runs"
    done = run_script(script, str(runs))
    assert done.returncode != 0
    assert "optimize_run was called while a slurptuna worker imported" in done.stderr
    assert 'if __name__ == "__main__":' in done.stderr
    assert [p.name for p in runs.iterdir()] == ["no_guard_model_v0001"]


PACKAGE_MODULE = textwrap.dedent("""
    import sys
    from slurptuna import loss, optimize_run
    from .helpers import OFFSET

    @loss(name="packaged_model", parameter_space={"x": (0.0, 1.0)})
    def model(params, seed):
        return params["x"] + OFFSET + seed

    if __name__ == "__main__":
        result = optimize_run(model, n_trials=2, n_seeds=4, chunk_size=2, run_root=sys.argv[1], mode=sys.argv[2],
                              slurm_poll_seconds=0.2)
        print("RESULT", [t.state.name for t in result.study.trials], result.best_value - result.best_params["x"])
""")


@pytest.mark.parametrize("mode", ["single", "distributed"])
def test_a_loss_in_a_package_launched_with_python_m_keeps_its_relative_imports(tmp_path, mode, request):
    env = {}
    if mode == "distributed":
        fake = request.getfixturevalue("fake_slurm")
        env = {"PATH": os.environ["PATH"], "FAKE_SLURM_DIR": str(fake.state)}
    package = tmp_path / "mypkg"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "helpers.py").write_text("OFFSET = 100.0\n")
    (package / "fit.py").write_text(PACKAGE_MODULE)
    done = run_script(None, "-m", "mypkg.fit", str(tmp_path / "runs"), mode, cwd=tmp_path, **env)
    assert done.returncode == 0, done.stderr
    states, offset = done.stdout.split("RESULT")[1].rsplit(" ", 1)
    assert states.strip() == "['COMPLETE', 'COMPLETE']"
    assert float(offset) == pytest.approx(101.5)


INTERACTIVE = """
import sys
from slurptuna import loss, optimize_run

@loss(name="typed_in", parameter_space={"x": (0.0, 1.0)})
def typed_in(params, seed):
    return params["x"] * 2 + seed

result = optimize_run(typed_in, n_trials=2, n_seeds=3, chunk_size=1, run_root=sys.argv[1], mode=sys.argv[2])
print("RESULT", [round(t.value - 2 * t.params["x"], 9) for t in result.study.trials])
"""


def test_a_loss_typed_into_python_dash_runs_in_single_mode(tmp_path):
    done = run_script(None, "-", str(tmp_path / "runs"), "single", cwd=tmp_path, stdin=INTERACTIVE)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split("RESULT")[1].strip() == "[1.0, 1.0]"


def test_a_loss_typed_into_python_dash_is_refused_by_distributed_mode_saying_why(tmp_path):
    done = run_script(None, "-", str(tmp_path / "runs"), "distributed", cwd=tmp_path, stdin=INTERACTIVE)
    assert done.returncode != 0
    assert "defined interactively" in done.stderr and "single mode runs it" in done.stderr


SPAWNED = """
import multiprocessing
import sys
import losses
from slurptuna import optimize_run

if __name__ == "__main__":
    multiprocessing.set_start_method(sys.argv[2])
    result = optimize_run(losses.quadratic, n_trials=3, n_seeds=10, chunk_size=3, worker_parallelism=2,
                          run_root=sys.argv[1], random_seed=5)
    print("RESULT", repr([t.value for t in result.study.trials]))
"""


@pytest.mark.compat
def test_the_pool_works_with_the_spawn_start_method_and_gives_the_fork_values(tmp_path):
    script = tmp_path / "spawned.py"
    script.write_text(SPAWNED)
    values = {}
    for method in ("spawn", "fork"):
        done = run_script(script, str(tmp_path / method), method)
        assert done.returncode == 0, done.stderr
        values[method] = done.stdout.split("RESULT")[1].strip()
    assert values["spawn"] == values["fork"] and "None" not in values["spawn"]
    assert list((tmp_path / "spawn").glob("*/slurm_logs/local_worker_*.log"))


CONTROLLER = """
import sys
import losses
from slurptuna import optimize_run

if __name__ == "__main__":
    import multiprocessing
    multiprocessing.set_start_method(sys.argv[2])
    optimize_run(losses.slow_quadratic, n_trials=2, n_seeds=40, chunk_size=2, worker_parallelism=2,
                 run_root=sys.argv[1], run_name="stopped")
"""


def _alive(pid: int) -> bool:
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except FileNotFoundError:
        return False
    return "zombie" not in status


@pytest.mark.parametrize("method", ["fork", "spawn"])
def test_ctrl_c_stops_the_pool_at_once_leaving_no_process_and_resume_reuses_the_chunks(tmp_path, seed_counter, method):
    script = tmp_path / "controller.py"
    script.write_text(CONTROLLER)
    runs = tmp_path / "runs"
    trial0 = RunPaths(runs / "stopped").trial(0)
    process = subprocess.Popen(
        [sys.executable, str(script), str(runs), method],
        env=script_env(SLURPTUNA_TEST_SLEEP="0.05"),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    wait_for(lambda: len(chunk_records(trial0)) >= 2)
    workers = {int(p.name) for p in seed_counter.directory.iterdir() if p.name.isdigit()}
    assert len(workers) == 2 and process.pid not in workers
    process.send_signal(signal.SIGINT)
    _, stderr = process.communicate(timeout=30)
    assert process.returncode == 130, stderr
    assert "Resume with run_name='stopped'" in stderr.splitlines()[-1]
    wait_for(lambda: not any(_alive(pid) for pid in workers), timeout=10)
    kept = chunk_records(trial0)
    assert all(record["stats"]["count"] == 2 for record in kept.values())  # whole records only
    time.sleep(0.2)
    assert chunk_records(trial0) == kept

    before = seed_counter.evaluations()
    resumed = subprocess.run(
        [sys.executable, str(script), str(runs), method],
        env=script_env(SLURPTUNA_TEST_SLEEP="0"),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert resumed.returncode == 0, resumed.stderr
    x0 = read_json(trial0.params)["params"]["x"]
    after = seed_counter.evaluations()
    for chunk in kept:  # every chunk written before Ctrl-C is reused, not computed again
        for seed in (2 * chunk, 2 * chunk + 1):
            assert after[(x0, seed)] == before[(x0, seed)]
    assert all(after[(x0, seed)] >= 1 for seed in range(40))


def test_a_controller_writing_to_a_log_file_tells_one_line_per_finished_trial(tmp_path):
    script = tmp_path / "fit.py"
    script.write_text(
        textwrap.dedent("""
        import sys
        import losses
        from slurptuna import optimize_run
        if __name__ == "__main__":
            optimize_run(losses.fails_when_x_high, n_trials=6, n_seeds=4, chunk_size=2, run_root=sys.argv[1])
        """)
    )
    log = tmp_path / "controller.log"
    with open(log, "w") as out:  # not a terminal: the progress line stays off, the story goes in the log
        done = subprocess.run(
            [sys.executable, str(script), str(tmp_path / "runs")], env=script_env(), stdout=out, stderr=out, timeout=120
        )
    assert done.returncode == 0
    text = log.read_text()
    finished = re.findall(r"^\[I [^]]+\] Trial (\d+) finished with value: (\S+) \(standard error", text, re.MULTILINE)
    failed = re.findall(r"trial (\d+) failed: loss 'fails_when_x_high'", text)
    assert sorted([int(n) for n, _ in finished] + [int(n) for n in failed]) == list(range(6))
    assert "\r" not in text and "seeds/s" not in text
