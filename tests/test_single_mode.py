"""Single mode end to end: the real worker processes, files, failures, resume."""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from datetime import timedelta
from pathlib import Path

import losses
import pytest
from conftest import (
    REPO,
    chunk_records,
    read_json,
    rewrite_chunk_record,
    run_script,
    script_env,
    start_controller,
    wait_for,
)

import slurptuna
from slurptuna import RunPaths, TrialParams, missing_chunks, optimize_entries, optimize_run


@pytest.mark.compat
def test_a_run_writes_the_spec_files_and_each_trial_mean_is_the_mean_over_all_seeds(run_root):
    result = optimize_run(
        losses.quadratic, n_trials=3, n_seeds=23, chunk_size=5, run_root=run_root, worker_parallelism=2
    )
    run = RunPaths(Path(result.run_dir))
    assert run.dir.name == "quadratic_v0001" and result.run_name == "quadratic_v0001"
    assert {p.name for p in run.dir.iterdir()} >= {"meta.json", "summary.json", "optuna.journal", "trials"}
    for trial in result.study.trials:
        paths = run.trial(trial.number)
        direct = math.fsum(losses.quadratic_value(trial.params, s) for s in range(23)) / 23
        assert trial.value == pytest.approx(direct, rel=1e-13)
        assert read_json(paths.params)["params"] == trial.params
        records = chunk_records(paths)
        chunks = [records[i] for i in range(5)]
        assert [c["seeds"] for c in chunks] == [{"start": s, "stop": min(s + 5, 23)} for s in range(0, 23, 5)]
        assert all("values" not in c and "losses" not in c for c in chunks)  # no per-seed lists
        assert {"count", "mean", "m2", "min", "max", "components"} <= set(chunks[0]["stats"])
        assert read_json(paths.summary)["n_seeds"] == 23
    summary = read_json(run.summary)
    assert summary["best_value"] == result.best_value == min(t.value for t in result.study.trials)
    assert summary["best_params"] == result.best_params
    assert read_json(run.meta)["seeds"] == {"start": 0, "count": 23, "chunk_size": 5}


def test_explicit_seeds_are_the_seeds_evaluated(run_root, seed_counter):
    seeds = [40, 2, 17, 5, 99]
    result = optimize_run(losses.quadratic, n_trials=1, seeds=seeds, chunk_size=2, run_root=run_root)
    assert sorted(seed for _, seed in seed_counter.evaluations()) == sorted(seeds)
    x = result.best_params
    assert result.best_value == pytest.approx(sum(losses.quadratic_value(x, s) for s in seeds) / 5)


def test_dict_losses_keep_their_component_means(run_root):
    result = optimize_run(losses.mixed_space, n_trials=2, n_seeds=9, chunk_size=4, run_root=run_root)
    for trial in result.study.trials:
        p = trial.params
        fit = math.log10(p["lr"]) ** 2 / 10 + (0.0 if p["mode"] == "fast" else 0.1)
        steps = p["steps"] / 10 + sum(s % 3 for s in range(9)) / 9
        assert trial.user_attrs["components"] == pytest.approx({"fit": fit, "steps": steps})
        assert trial.value == pytest.approx((fit + steps) / 2)
        summary = read_json(RunPaths(Path(result.run_dir)).trial(trial.number).summary)
        assert summary["components"] == pytest.approx({"fit": fit, "steps": steps})


@pytest.mark.parametrize(
    ("definition", "expected"),
    [
        (losses.total_loss_dict, lambda x: x + 2.0),  # "total_loss" wins over the other keys
        (losses.list_loss, lambda x: (x + 2.0 + 4.0) / 3),  # mean of the list's items
        (losses.numpy_loss, lambda x: float(__import__("numpy").float32(x)) + 2.0),
    ],
)
def test_dict_list_and_numpy_returns_are_reduced_to_one_number(run_root, definition, expected):
    result = optimize_run(definition, n_trials=1, n_seeds=5, chunk_size=2, run_root=run_root)
    assert result.best_value == pytest.approx(expected(result.best_params["x"]))


@pytest.mark.compat
def test_a_loss_that_raises_fails_its_trial_with_seed_params_traceback_and_log_and_the_run_goes_on(run_root):
    result = optimize_run(losses.raises_at_seed_7, n_trials=2, n_seeds=10, chunk_size=4, run_root=run_root)
    assert [t.state.name for t in result.study.trials] == ["FAIL", "FAIL"]
    assert result.n_failed == 2 and result.best_value is None
    reason = result.study.trials[0].user_attrs["fail_reason"]
    assert "'raises_at_seed_7'" in reason and "seed 7" in reason and "chunk 1" in reason
    assert repr(result.study.trials[0].params) in reason
    assert "Traceback" in reason and "RuntimeError: model diverged" in reason
    log = Path(reason.split("log: ")[1].split()[0])
    assert log.exists() and "model diverged" in log.read_text()


def test_with_fail_on_chunk_error_false_a_trial_reports_the_mean_of_the_chunks_that_worked(run_root):
    result = optimize_run(
        losses.raises_at_seed_7, n_trials=1, n_seeds=10, chunk_size=4, run_root=run_root, fail_on_chunk_error=False
    )
    trial = result.study.trials[0]
    assert trial.state.name == "COMPLETE" and trial.user_attrs["missing_chunks"] == [1]
    assert trial.user_attrs["n_seeds"] == 6 and trial.value == pytest.approx(trial.params["x"])


def test_nan_and_non_numbers_fail_the_trial_naming_what_was_returned(run_root):
    result = optimize_run(losses.nan_when_x_high, n_trials=6, n_seeds=3, chunk_size=3, run_root=run_root)
    for trial in result.study.trials:
        assert trial.state.name == ("FAIL" if trial.params["x"] > 0.5 else "COMPLETE")
        if trial.state.name == "FAIL":
            assert "returned nan" in trial.user_attrs["fail_reason"]
    text = optimize_run(losses.returns_text, n_trials=1, n_seeds=2, chunk_size=2, run_root=run_root)
    assert "returned str 'oops'" in text.study.trials[0].user_attrs["fail_reason"]


def test_n_trials_is_the_total_so_a_rerun_finishes_instead_of_adding(run_root, seed_counter):
    first = optimize_run(losses.quadratic, n_trials=2, n_seeds=4, chunk_size=2, run_root=run_root)
    again = optimize_run(
        losses.quadratic, n_trials=2, n_seeds=4, chunk_size=2, run_root=run_root, run_name=first.run_name
    )
    assert len(again.study.trials) == 2 and seed_counter.total() == 8
    more = optimize_run(
        losses.quadratic, n_trials=3, n_seeds=4, chunk_size=2, run_root=run_root, run_name=first.run_name
    )
    assert len(more.study.trials) == 3 and seed_counter.total() == 12


@pytest.mark.compat
def test_fresh_runs_are_reproducible_and_a_resume_proposes_new_points(run_root):
    a = optimize_run(losses.quadratic, n_trials=2, n_seeds=2, chunk_size=2, run_root=run_root, random_seed=5)
    b = optimize_run(losses.quadratic, n_trials=2, n_seeds=2, chunk_size=2, run_root=run_root, random_seed=5)
    assert b.run_name == "quadratic_v0002"
    assert [t.params for t in a.study.trials] == [t.params for t in b.study.trials]
    resumed = optimize_run(
        losses.quadratic, n_trials=4, n_seeds=2, chunk_size=2, run_root=run_root, random_seed=5, run_name=a.run_name
    )
    xs = [t.params["x"] for t in resumed.study.trials]
    assert len(set(xs)) == 4  # the reseeded sampler does not replay trials 0 and 1


def test_resuming_with_other_seeds_or_chunking_is_refused_naming_the_difference(run_root):
    first = optimize_run(losses.quadratic, n_trials=1, n_seeds=4, chunk_size=2, run_root=run_root)
    with pytest.raises(
        ValueError,
        match=r"seeds: the run has seeds 0..3 in 2 chunks of 2, this call asks for "
        r"seeds 0..5 in 2 chunks of 3",
    ):
        optimize_run(losses.quadratic, n_trials=2, n_seeds=6, chunk_size=3, run_root=run_root, run_name=first.run_name)
    with pytest.raises(ValueError, match="loss_name: the run has 'quadratic'"):
        optimize_run(losses.list_loss, n_trials=2, n_seeds=4, chunk_size=2, run_root=run_root, run_name=first.run_name)


def test_a_chunk_computed_for_other_params_is_not_trusted(run_root):
    result = optimize_run(losses.quadratic, n_trials=1, n_seeds=6, chunk_size=2, run_root=run_root)
    trial = RunPaths(Path(result.run_dir)).trial(0)
    expected = TrialParams.load(trial)
    assert missing_chunks(trial, expected) == []
    rewrite_chunk_record(trial, 1, params={"x": 0.123})
    assert missing_chunks(trial, expected) == [1]
    with pytest.raises(slurptuna._MissingChunks, match="chunks 1 have no valid result"):
        slurptuna.reduce_trial(RunPaths(Path(result.run_dir)), 0)


def test_two_launches_at_once_get_two_run_directories(tmp_path):
    made: list[Path] = []
    threads = [
        threading.Thread(target=lambda: made.append(slurptuna._create_versioned_dir(tmp_path, "m"))) for _ in range(16)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(p.name for p in made) == [f"m_v{i:04d}" for i in range(1, 17)]


@pytest.mark.compat
def test_optimize_entries_runs_one_study_per_entry_with_the_entry_in_context(run_root):
    result = optimize_entries(
        losses.context_loss,
        entry_ids=["p1", "participant 22"],
        n_trials=2,
        n_seeds=3,
        chunk_size=2,
        run_root=run_root,
        max_concurrent_entries=2,
    )
    assert result.entries == ["p1", "participant 22"] and result.n_entries == 2
    assert result.best_values_by_entry == {"p1": 2.0, "participant 22": 14.0}
    parent = Path(result.run_dir)
    assert parent.name == "context_loss_entries_v0001"
    assert sorted(p.name for p in parent.iterdir() if p.is_dir()) == ["p1", "participant_22"]
    summary = read_json(parent / "summary.json")
    assert summary["best_values_by_entry"] == result.best_values_by_entry
    assert set(summary["best_params_by_entry"]) == {"p1", "participant 22"}
    assert result.results_by_entry["p1"].run_dir == str(parent / "p1")


def busy_intervals(seed_counter) -> list[tuple[float, float]]:
    """(start, end) of every loss call that losses.records_busy_intervals recorded."""
    return [
        tuple(map(float, line.split()[1:]))
        for p in seed_counter.directory.glob("busy.*")
        for line in p.read_text().splitlines()
    ]


def most_at_once(intervals: list[tuple[float, float]]) -> int:
    events = sorted([(s, 1) for s, _ in intervals] + [(e, -1) for _, e in intervals])
    busy = peak = 0
    for _, step in events:
        busy += step
        peak = max(peak, busy)
    return peak


def test_single_mode_never_runs_more_loss_processes_than_cores(run_root, seed_counter):
    optimize_run(
        losses.records_busy_intervals,
        n_trials=3,
        n_seeds=24,
        chunk_size=4,
        worker_parallelism=2,
        max_concurrent_trials=3,
        run_root=run_root,
    )
    intervals = busy_intervals(seed_counter)
    assert len(intervals) == 72
    peak = most_at_once(intervals)
    assert 1 < peak <= len(os.sched_getaffinity(0))


def test_concurrent_entries_share_the_cores_instead_of_each_taking_them_all(run_root, seed_counter):
    optimize_entries(
        losses.records_busy_intervals,
        entry_ids=["a", "b"],
        n_trials=2,
        n_seeds=8,
        chunk_size=2,
        worker_parallelism=2,
        run_root=run_root,
    )
    intervals = busy_intervals(seed_counter)
    assert len(intervals) == 32
    peak = most_at_once(intervals)
    assert 1 < peak <= len(os.sched_getaffinity(0))


def test_a_timed_out_chunk_is_retried_alone(run_root, seed_counter):
    result = optimize_run(
        losses.sleeps_at_seed_0,
        n_trials=1,
        n_seeds=6,
        chunk_size=2,
        run_root=run_root,
        worker_time_limit=timedelta(seconds=5),
        trial_retry_attempts=1,
    )
    trial = result.study.trials[0]
    assert trial.state.name == "COMPLETE" and trial.user_attrs["attempts"] == 2
    counts = seed_counter.evaluations()
    # seed 0 timed out once; seed 1 (same chunk) only ran on the retry; chunks 1-2 never ran again
    assert {seed: n for (_, seed), n in counts.items()} == {0: 2, 1: 1, 2: 1, 3: 1, 4: 1, 5: 1}
    assert trial.value == pytest.approx(trial.params["x"] + 2.5)


def test_timeouts_beyond_the_retries_fail_the_trial_with_the_reason(run_root, seed_counter):
    result = optimize_run(
        losses.sleeps_at_seed_0,
        n_trials=1,
        n_seeds=2,
        chunk_size=2,
        run_root=run_root,
        worker_time_limit=timedelta(seconds=1),
        trial_retry_attempts=0,
    )
    reason = result.study.trials[0].user_attrs["fail_reason"]
    assert "chunks 0: TIMEOUT" in reason and "TIME LIMIT" in reason


SCRIPT = textwrap.dedent("""
    import sys
    from slurptuna import loss, optimize_run

    TARGETS = {"easy": 0.3, "hard": 0.8}
    TASK = sys.argv[1] if len(sys.argv) > 1 else "easy"

    @loss(name=f"script_model_{TASK}", parameter_space={"x": (0.0, 1.0)})
    def model(params, seed):
        return abs(params["x"] - TARGETS[TASK]) + (seed % 3) * 1e-3

    if __name__ == "__main__":
        result = optimize_run(model, n_trials=int(sys.argv[2]), n_seeds=6, chunk_size=3, run_root=sys.argv[3])
        print("RESULT", result.run_name, result.best_value, result.best_params["x"])
""")


def test_a_loss_defined_in_the_launched_script_with_an_argv_derived_name_runs_in_workers(tmp_path):
    script = tmp_path / "fit.py"
    script.write_text(SCRIPT)
    for task, target in (("hard", 0.8), ("easy", 0.3)):
        done = run_script(script, task, "2", str(tmp_path / "runs"))
        assert done.returncode == 0, done.stderr
        name, best, x = done.stdout.split("RESULT")[1].split()
        assert name == f"script_model_{task}_v0001"
        assert float(best) == pytest.approx(abs(float(x) - target) + 1e-3)


def test_the_import_sets_argv_only_while_importing_and_launches_do_not_leak(tmp_path):
    module = tmp_path / "argv_probe.py"
    module.write_text(
        "import sys\nSEEN = list(sys.argv)\n"
        "from slurptuna import loss\n"
        "@loss(name='argv_probe_' + sys.argv[1], parameter_space={'x': (0.0, 1.0)})\n"
        "def probe(params, seed):\n    return 0.0\n"
    )
    before = list(sys.argv)
    for launched in (["fit.py", "alpha"], ["fit.py", "beta", "--flag"]):
        settings = slurptuna._RunSettings.from_json(
            {
                **_any_settings_json(),
                "loss_name": f"argv_probe_{launched[1]}",
                "argv": launched,
                "loss_ref": {"module": None, "file": str(module), "sys_path": [str(tmp_path)]},
            }
        )
        definition = slurptuna._import_loss(settings)
        assert sys.modules[definition.seed_loss_fn.__module__].SEEN == launched
        assert sys.argv == before


def _any_settings_json() -> dict:
    return slurptuna._resolve_settings(losses.quadratic, {})[0].to_json()


def test_a_loss_registered_only_under_main_gives_an_error_that_says_so(tmp_path):
    script = tmp_path / "hidden.py"
    script.write_text(
        textwrap.dedent("""
        import sys
        from slurptuna import loss, optimize_run
        if __name__ == "__main__":
            @loss(name="hidden_model", parameter_space={"x": (0.0, 1.0)})
            def model(params, seed):
                return 0.0
            optimize_run(model, n_trials=3, n_seeds=2, chunk_size=2, run_root=sys.argv[1])
    """)
    )
    done = run_script(script, str(tmp_path / "runs"))
    assert done.returncode != 0
    assert "'hidden_model' is not registered" in done.stderr
    assert 'if __name__ == "__main__":' in done.stderr and "module level" in done.stderr
    assert done.stderr.count("Traceback") == 1  # one clear error, not one per trial


CONTROLLER = textwrap.dedent("""
    import json
    import sys
    import losses
    from slurptuna import optimize_run
    result = optimize_run(losses.slow_quadratic, n_trials=3, n_seeds=12, chunk_size=2, run_root=sys.argv[1],
                          run_name="crash", random_seed=9)
    print("VALUES", json.dumps([t.value for t in result.study.trials]))
""")


@pytest.mark.parametrize("kill_signal", [signal.SIGKILL, signal.SIGINT])
def test_a_killed_or_interrupted_controller_resumes_reusing_finished_chunks(tmp_path, seed_counter, kill_signal):
    runs = tmp_path / "runs"
    trial1 = RunPaths(runs / "crash").trial(1)
    process = start_controller(tmp_path, CONTROLLER, runs, SLURPTUNA_TEST_SLEEP="0.03")
    wait_for(lambda: len(chunk_records(trial1)) >= 2)
    process.send_signal(kill_signal)
    _, stderr = process.communicate(timeout=60)
    if kill_signal == signal.SIGINT:
        assert process.returncode == 130
        assert "Resume with run_name='crash'" in stderr.splitlines()[-1]
    done_before = set(chunk_records(trial1))
    time.sleep(0.3)  # orphaned workers, if any, would write more chunk records now
    assert set(chunk_records(trial1)) == done_before
    x1 = read_json(trial1.params)["params"]["x"]
    before = seed_counter.evaluations()

    resumed = run_script(tmp_path / "controller.py", runs, SLURPTUNA_TEST_SLEEP="0.0", timeout=120)
    assert resumed.returncode == 0, resumed.stderr
    values = json.loads(resumed.stdout.split("VALUES")[1])
    assert len(values) == 3 and None not in values
    after = seed_counter.evaluations()
    for chunk in done_before:  # a finished chunk is never computed again
        for seed in range(2 * chunk, 2 * chunk + 2):
            assert after[(x1, seed)] == before[(x1, seed)] == 1
    assert all(after[(x1, s)] >= 1 for s in range(12))  # every seed of the trial was evaluated
    direct = math.fsum(losses.quadratic_value({"x": x1}, s) for s in range(12)) / 12
    assert values[1] == pytest.approx(direct, rel=1e-13)


def test_selftest_passes():
    done = subprocess.run(
        [sys.executable, str(REPO / "slurptuna.py"), "--selftest"],
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "selftest passed" in done.stdout


def test_module_help_names_the_worker_commands():
    done = subprocess.run(
        [sys.executable, "-m", "slurptuna", "--help"],
        capture_output=True,
        text=True,
        env=script_env(),
        timeout=60,
        check=False,
    )
    assert done.returncode == 0 and "worker chunk RUN_DIR TRIAL" in done.stdout
