"""Optuna habits: callbacks after every finished trial, enqueued starting points, several objectives.

Each feature runs in single mode (real worker processes) and on fake_slurm/; one test each runs on
the real local Slurm (skipped, saying why, when none answers).
"""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
import uuid
import warnings
from pathlib import Path

import browser
import losses
import optuna
import pytest
from conftest import Points, read_json, script_env, wait_for
from real_slurm import require_real_slurm

from slurptuna import RunPaths, optimize_entries, optimize_run

COMPLETE = optuna.trial.TrialState.COMPLETE


class Recorder:
    """A user's callback: keeps what it was called with."""

    def __init__(self) -> None:
        self.calls: list[tuple[optuna.Study, optuna.trial.FrozenTrial]] = []

    def __call__(self, study, trial) -> None:
        self.calls.append((study, trial))

    @property
    def states(self) -> list[str]:
        return [t.state.name for _, t in self.calls]


def wilcoxon() -> optuna.pruners.BasePruner:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        return optuna.pruners.WilcoxonPruner()


def distributed(definition, run_root: Path, **options):
    return optimize_run(definition, mode="distributed", slurm_poll_seconds=0.2, run_root=run_root, **options)


@pytest.fixture
def real_slurm_run():
    """The real Slurm, a unique run name, and afterwards no job of it left in the queue."""
    require_real_slurm()
    name = f"habits_{uuid.uuid4().hex[:8]}"
    yield name
    queued = subprocess.run(["squeue", "-h", "-o", "%i|%j"], capture_output=True, text=True, check=False)
    ids = {line.split("|")[0].split("_")[0] for line in queued.stdout.splitlines() if f"|{name}." in line}
    if ids:
        subprocess.run(["scancel", *ids], check=False)


def jobs_of_run_in_queue(run_name: str) -> list[str]:
    queued = subprocess.run(["squeue", "-h", "-o", "%i|%j"], capture_output=True, text=True, check=True)
    return [line for line in queued.stdout.splitlines() if f"|{run_name}." in line]


# ---------------------------------------------------------------- callbacks


def test_callbacks_see_every_finished_trial_complete_pruned_or_failed_with_slurptunas_attributes(run_root):
    first, second = Recorder(), Recorder()
    result = optimize_run(
        losses.cliff_fails_above_0_95,
        n_trials=3,
        n_seeds=400,
        chunk_size=20,
        sampler=Points([0.0, 0.9, 0.99]),
        pruner=wilcoxon(),
        callbacks=[first, second],
        run_root=run_root,
        progress=False,
    )
    assert first.states == second.states == ["COMPLETE", "PRUNED", "FAIL"]
    assert all(study is result.study for study, _ in first.calls)
    complete, pruned, failed = (trial for _, trial in first.calls)
    assert complete.value == result.study.trials[0].value
    assert complete.user_attrs["n_seeds"] == 400
    assert complete.user_attrs["standard_error"] == pytest.approx(complete.user_attrs["std"] / 20, rel=1e-12)
    assert 0 < pruned.user_attrs["n_seeds"] < 400 and "running_mean" in pruned.user_attrs
    assert "model diverged at x=0.99" in failed.user_attrs["fail_reason"]
    assert first.calls[0][1] is not second.calls[0][1]  # each callback gets its own copy, as in Optuna


def test_max_trials_callback_stops_the_run_trials_in_flight_finish_and_a_rerun_finishes_it(run_root):
    stop_at_3 = optuna.study.MaxTrialsCallback(3, states=(COMPLETE,))
    options = {"n_seeds": 8, "chunk_size": 2, "max_concurrent_trials": 2, "run_root": run_root, "progress": False}
    stopped = optimize_run(losses.quadratic, n_trials=10, callbacks=[stop_at_3], **options)
    states = [t.state.name for t in stopped.study.trials]
    assert states in (["COMPLETE"] * 3, ["COMPLETE"] * 4)  # the trial in flight at the stop finishes
    assert stopped.n_complete == len(states)
    meta = read_json(RunPaths(Path(stopped.run_dir)).meta)
    assert "callbacks" not in meta  # not recorded: neither in meta.json nor in the resume identity
    finished = optimize_run(losses.quadratic, n_trials=10, run_name=stopped.run_name, **options)
    assert [t.state.name for t in finished.study.trials] == ["COMPLETE"] * 10


class CallbackFailed(Exception):
    pass


def raise_after_first_trial(study, trial):
    raise CallbackFailed(f"the chat server is down (trial {trial.number})")


def test_an_exception_in_a_callback_stops_the_run_is_raised_as_it_is_and_the_run_resumes(run_root, monkeypatch):
    monkeypatch.setenv("SLURPTUNA_TEST_SLEEP", "0.01")
    options = {"n_seeds": 20, "chunk_size": 2, "max_concurrent_trials": 2, "run_root": run_root, "progress": False}
    with pytest.raises(CallbackFailed, match="chat server is down"):
        optimize_run(
            losses.slow_quadratic,
            n_trials=4,
            run_name="cb",
            sampler=Points([0.1, 0.9]),
            callbacks=[raise_after_first_trial],
            **options,
        )
    run = RunPaths(run_root / "cb")
    summary = read_json(run.summary)
    assert summary["n_complete"] == 1  # the trial whose callback raised is in the study
    resumed = optimize_run(losses.slow_quadratic, n_trials=4, run_name="cb", sampler=Points([0.1, 0.9]), **options)
    assert [t.state.name for t in resumed.study.trials] == ["COMPLETE"] * 4
    assert [t.params["x"] for t in resumed.study.trials[:2]] == [0.1, 0.9]


def test_on_fake_slurm_callbacks_are_called_and_study_stop_leaves_no_job(fake_slurm, run_root):
    recorder = Recorder()
    result = distributed(
        losses.quadratic,
        run_root,
        n_trials=10,
        n_seeds=6,
        chunk_size=2,
        max_concurrent_trials=2,
        callbacks=[recorder, optuna.study.MaxTrialsCallback(2, states=(COMPLETE,))],
    )
    assert recorder.states == [t.state.name for t in result.study.trials] and len(recorder.states) in (2, 3)
    assert all(t.user_attrs["n_seeds"] == 6 for _, t in recorder.calls)
    shown = subprocess.run(["squeue", "-h"], capture_output=True, text=True, check=True)
    assert shown.stdout.strip() == ""


def test_on_fake_slurm_a_callback_exception_cancels_the_trials_in_flight_in_one_scancel(
    fake_slurm, run_root, monkeypatch
):
    monkeypatch.setenv("SLURPTUNA_TEST_SLEEP", "0.2")
    with pytest.raises(CallbackFailed):
        distributed(
            losses.slow_quadratic,
            run_root,
            n_trials=3,
            n_seeds=4,
            chunk_size=2,
            max_concurrent_trials=2,
            sampler=Points([0.1, 0.5, 0.9]),
            callbacks=[raise_after_first_trial],
            run_name="cb",
        )
    (cancelled,) = fake_slurm.calls("scancel")
    run = RunPaths(run_root / "cb")
    recorded = {j["job_id"] for n in (1, 2) if run.trial(n).jobs.exists() for j in read_json(run.trial(n).jobs)["jobs"]}
    assert {a.split("_")[0] for a in cancelled["argv"]} <= recorded  # tasks (A_[...]) and reduce jobs still queued
    queue = subprocess.run(["squeue", "-h", "-o", "%i"], capture_output=True, text=True, check=True).stdout
    assert not {line.split("_")[0] for line in queue.split()} & recorded  # none of the run's jobs left
    resumed = distributed(losses.slow_quadratic, run_root, n_trials=3, n_seeds=4, chunk_size=2, run_name="cb")
    assert [t.state.name for t in resumed.study.trials] == ["COMPLETE"] * 3


def test_on_real_slurm_a_callback_sees_each_trial_and_study_stop_ends_the_run(real_slurm_run, run_root):
    seen: list[int] = []

    def stop_after_two(study, trial):
        seen.append(trial.user_attrs["n_seeds"])
        if len(seen) == 2:
            study.stop()

    result = distributed(
        losses.quadratic,
        run_root,
        run_name=real_slurm_run,
        slurm_qos=None,
        n_trials=5,
        n_seeds=6,
        chunk_size=3,
        callbacks=[stop_after_two],
    )
    assert seen == [6, 6] and [t.state.name for t in result.study.trials] == ["COMPLETE"] * 2
    wait_for(lambda: jobs_of_run_in_queue(real_slurm_run) == [], timeout=20)  # a cancelled reduce job leaves


# ---------------------------------------------------------------- enqueue


def test_enqueued_points_are_evaluated_first_in_order_then_the_sampler_proposes(run_root, seed_counter):
    result = optimize_run(
        losses.quadratic,
        n_trials=4,
        n_seeds=6,
        chunk_size=2,
        max_concurrent_trials=2,
        enqueue=[{"x": 0.3}, {"x": -1}],  # an int for a float range is the float
        run_root=run_root,
        progress=False,
    )
    assert [t.params for t in result.study.trials[:2]] == [{"x": 0.3}, {"x": -1.0}]
    assert len({t.params["x"] for t in result.study.trials}) == 4
    assert read_json(RunPaths(Path(result.run_dir)).trial(1).params)["params"] == {"x": -1.0}
    evaluated = seed_counter.evaluations()
    assert sorted(seed for (x, seed) in evaluated if x == 0.3) == list(range(6))
    assert max(evaluated.values()) == 1


def test_a_resume_evaluates_the_enqueued_points_it_has_not_and_never_one_twice(run_root, seed_counter):
    points = [{"x": 0.1}, {"x": 0.2}, {"x": 0.4}]
    options = {"n_seeds": 4, "chunk_size": 2, "enqueue": points, "run_root": run_root, "progress": False}
    first = optimize_run(losses.quadratic, n_trials=2, **options)
    assert [t.params for t in first.study.trials if t.state == COMPLETE] == points[:2]
    resumed = optimize_run(losses.quadratic, n_trials=4, run_name=first.run_name, **options)
    xs = [t.params["x"] for t in resumed.study.trials]
    assert xs[:3] == [0.1, 0.2, 0.4] and len(xs) == 4 and xs[3] not in (0.1, 0.2, 0.4)
    assert max(seed_counter.evaluations().values()) == 1  # no point evaluated twice
    again = optimize_run(losses.quadratic, n_trials=4, run_name=first.run_name, **options)
    assert len(again.study.trials) == 4  # every point is in the study: nothing is queued again


@pytest.mark.parametrize(
    ("point", "message"),
    [
        (
            {"lr": 0.5, "steps": 3, "mode": "fast"},
            r"enqueue\[1\]\['lr'\] is 0.5, not a number in \[0.0001, 0.1\] \(log",
        ),
        ({"lr": 0.01, "steps": 3.5, "mode": "fast"}, r"enqueue\[1\]\['steps'\] is 3.5, not an integer in \[1, 10\]"),
        ({"lr": 0.01, "steps": 3, "mode": "medium"}, r"'mode'\] is 'medium', not one of \['fast', 'slow'\]"),
        ({"lr": 0.01, "steps": 3}, r"enqueue\[1\] = .*no value for \['mode'\]; loss 'mixed_space' takes lr, steps"),
        ({"lr": 0.01, "steps": 3, "mode": "fast", "lr2": 1}, r"unknown parameter\(s\) \['lr2'\]"),
        ("fast", r"enqueue\[1\] must be a dict"),
    ],
)
def test_a_bad_enqueued_point_is_refused_before_any_work_naming_the_value_and_what_is_valid(run_root, point, message):
    good = {"lr": 0.01, "steps": 3, "mode": "slow"}
    with pytest.raises(ValueError, match=message):
        optimize_run(losses.mixed_space, n_trials=2, enqueue=[good, point], run_root=run_root)
    assert not run_root.exists()


def test_on_fake_slurm_enqueued_points_run_first_and_a_resume_skips_them(fake_slurm, run_root):
    options = {"n_seeds": 4, "chunk_size": 2, "enqueue": [{"x": 0.25}, {"x": 0.75}], "run_name": "enq"}
    first = distributed(losses.quadratic, run_root, n_trials=1, **options)
    assert [t.params for t in first.study.trials if t.state == COMPLETE] == [{"x": 0.25}]
    resumed = distributed(losses.quadratic, run_root, n_trials=3, **options)
    assert [t.params["x"] for t in resumed.study.trials][:2] == [0.25, 0.75]
    assert len(resumed.study.trials) == 3
    arrays = [s for s in fake_slurm.submissions() if s.get("job_id") and s["array_tasks"] is not None]
    assert len(arrays) == 3  # one array job per trial: no point submitted twice


def test_on_real_slurm_enqueued_points_are_the_first_trials(real_slurm_run, run_root):
    result = distributed(
        losses.quadratic,
        run_root,
        run_name=real_slurm_run,
        slurm_qos=None,
        n_trials=2,
        n_seeds=4,
        chunk_size=2,
        enqueue=[{"x": 0.3}, {"x": -0.3}],
    )
    assert [t.params for t in result.study.trials] == [{"x": 0.3}, {"x": -0.3}]
    assert [t.state for t in result.study.trials] == [COMPLETE, COMPLETE]


# ---------------------------------------------------------------- several objectives

FIT_SHAPE = {"fit": "minimize", "shape": "maximize"}


def direct_moments(params: dict, seeds: range) -> dict[str, tuple[float, float]]:
    """Each component's mean and standard error, computed here without slurptuna."""
    values = [losses.fit_and_shape(params, seed) for seed in seeds]
    return {
        name: (statistics.fmean(v[name] for v in values), statistics.stdev(v[name] for v in values) / len(seeds) ** 0.5)
        for name in FIT_SHAPE
    }


def assert_each_objective_is_its_components_mean_with_its_standard_error(result, n_seeds: int) -> None:
    for trial in result.study.trials:
        expected = direct_moments(trial.params, range(n_seeds))
        assert trial.values == pytest.approx([expected["fit"][0], expected["shape"][0]], rel=1e-12)
        errors = trial.user_attrs["component_standard_errors"]
        assert [errors["fit"], errors["shape"]] == pytest.approx([expected["fit"][1], expected["shape"][1]], rel=1e-9)
    front = [t.number for t in result.study.best_trials]  # Optuna's own Pareto set
    assert [t.number for t in result.best_trials] == front and len(front) >= 2
    assert result.best_value is None and result.best_params is None and result.best_standard_error is None
    summary = read_json(Path(result.run_dir) / "summary.json")
    assert summary["objectives"] == FIT_SHAPE and summary["best_value"] is None
    assert [t["trial"] for t in summary["best_trials"]] == front
    first = result.study.trials[front[0]]
    assert summary["best_trials"][0] == {
        "trial": first.number,
        "values": dict(zip(FIT_SHAPE, first.values, strict=True)),
        "standard_errors": {n: first.user_attrs["component_standard_errors"][n] for n in FIT_SHAPE},
        "params": first.params,
    }


def test_several_objectives_tell_optuna_each_components_mean_and_keep_its_standard_error(run_root):
    result = optimize_run(
        losses.fit_and_shape, n_trials=8, n_seeds=12, chunk_size=5, objectives=FIT_SHAPE, run_root=run_root
    )
    assert result.study.directions == [optuna.study.StudyDirection.MINIMIZE, optuna.study.StudyDirection.MAXIMIZE]
    assert_each_objective_is_its_components_mean_with_its_standard_error(result, 12)


def test_one_objective_optimizes_that_component_alone_with_its_standard_error(run_root):
    result = optimize_run(
        losses.fit_and_shape, n_trials=4, n_seeds=6, objectives={"shape": "maximize"}, run_root=run_root
    )
    best = max(result.study.trials, key=lambda t: t.user_attrs["components"]["shape"])
    assert result.best_value == best.value == best.user_attrs["components"]["shape"]
    assert result.best_standard_error == best.user_attrs["component_standard_errors"]["shape"]
    assert [t.number for t in result.best_trials] == [best.number]


def test_a_component_the_loss_does_not_return_fails_the_trial_naming_the_ones_it_did(run_root):
    result = optimize_run(
        losses.fit_and_shape,
        n_trials=2,
        n_seeds=4,
        objectives={"fit": "minimize", "size": "minimize"},
        run_root=run_root,
    )
    assert [t.state.name for t in result.study.trials] == ["FAIL", "FAIL"]
    reason = result.study.trials[0].user_attrs["fail_reason"]
    assert "returned no component 'size'" in reason and "['fit', 'shape']" in reason
    plain = optimize_run(losses.quadratic, n_trials=1, n_seeds=4, objectives={"fit": "minimize"}, run_root=run_root)
    assert "a number, not a dict of components" in plain.study.trials[0].user_attrs["fail_reason"]


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"pruner": optuna.pruners.MedianPruner()}, "Optuna prunes single-objective studies only"),
        ({"direction": "maximize"}, "each component's direction is given there"),
        ({"objectives": {"fit": "lower"}}, "must map loss component names to 'minimize' or 'maximize'"),
        ({"objectives": {}}, "must map loss component names"),
        ({"objectives": {"fit": "minimize"}, "pruner": optuna.pruners.MedianPruner()}, "told the loss's total"),
    ],
)
def test_objectives_with_a_pruner_or_a_direction_are_refused_saying_why(run_root, options, message):
    with pytest.raises(ValueError, match=message):
        optimize_run(losses.fit_and_shape, **{"objectives": FIT_SHAPE, "run_root": run_root, **options})
    assert not run_root.exists()


def test_a_resume_keeps_the_objectives_and_refuses_other_ones(run_root):
    options = {"n_seeds": 6, "chunk_size": 3, "run_root": run_root, "run_name": "pareto"}
    optimize_run(losses.fit_and_shape, n_trials=3, objectives=FIT_SHAPE, **options)
    with pytest.raises(ValueError, match=r"objectives: the run has \{'fit': 'minimize', 'shape': 'maximize'\}"):
        optimize_run(losses.fit_and_shape, n_trials=5, objectives={"fit": "minimize"}, **options)
    resumed = optimize_run(losses.fit_and_shape, n_trials=6, objectives=FIT_SHAPE, **options)
    assert len(resumed.study.trials) == 6
    assert_each_objective_is_its_components_mean_with_its_standard_error(resumed, 6)


def test_optimize_entries_keeps_a_pareto_set_per_entry(run_root):
    result = optimize_entries(
        losses.fit_and_shape, entry_ids=["a", "b"], n_trials=4, n_seeds=4, objectives=FIT_SHAPE, run_root=run_root
    )
    summary = read_json(Path(result.run_dir) / "summary.json")
    for entry in ("a", "b"):
        front = [t.number for t in result.results_by_entry[entry].study.best_trials]
        assert [t.number for t in result.best_trials_by_entry[entry]] == summary["best_trials_by_entry"][entry] == front
        assert result.best_values_by_entry[entry] is None


def status_of(run_dir: str, *extra: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "slurptuna", "status", run_dir, *extra],
        env=script_env(),
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )


def test_status_and_report_show_the_pareto_set_with_each_objectives_standard_error(run_root, tmp_path):
    result = optimize_run(
        losses.fit_and_shape, n_trials=6, n_seeds=8, objectives=FIT_SHAPE, run_root=run_root, progress=False
    )
    front = result.best_trials
    shown = status_of(result.run_dir).stdout
    assert f"Pareto set (fit minimize, shape maximize): {len(front)} trial(s) no other beats" in shown
    errors = front[0].user_attrs["component_standard_errors"]
    assert f"  trial {front[0].number}: fit {front[0].values[0]:.6g} ± {errors['fit']:.2g}, shape" in shown
    as_json = json.loads(status_of(result.run_dir, "--json").stdout)
    assert [t["number"] for t in as_json["best_trials"]] == [t.number for t in front]
    assert as_json["objectives"] == FIT_SHAPE and as_json["best_value"] is None
    pytest.importorskip("plotly")
    done = subprocess.run(
        [sys.executable, "-m", "slurptuna", "report", result.run_dir],
        env=script_env(),
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    page = (Path(result.run_dir) / "report.html").read_text()
    assert "wrote" in done.stdout and "<h2>Pareto front</h2>" in page
    assert "<h2>fit (minimize) against each parameter</h2>" in page
    assert f"<td>fit {front[0].values[0]:.6g} ± {errors['fit']:.2g}, shape" in page
    probed = browser.with_probe(Path(result.run_dir) / "report.html", tmp_path / "probed.html")
    dom, _ = browser.dump_dom(probed.as_uri(), tmp_path / "profile")
    seen = browser.read_probe(dom)
    assert seen["errors"] == [] and seen["figures"] == 4 and seen["rendered"] == 4, seen


def test_on_fake_slurm_several_objectives_have_the_same_values_as_single_mode(fake_slurm, run_root):
    options = {"n_trials": 4, "n_seeds": 10, "chunk_size": 4, "objectives": FIT_SHAPE, "max_concurrent_trials": 2}
    remote = distributed(losses.fit_and_shape, run_root, **options)
    local = optimize_run(losses.fit_and_shape, run_root=run_root, **options)
    remote_values = [v for t in remote.study.trials for v in t.values]
    assert remote_values == pytest.approx([v for t in local.study.trials for v in t.values], rel=1e-15)
    assert [t.number for t in remote.best_trials] == [t.number for t in local.best_trials]
    assert_each_objective_is_its_components_mean_with_its_standard_error(remote, 10)


def test_on_real_slurm_several_objectives_give_the_pareto_set(real_slurm_run, run_root):
    result = distributed(
        losses.fit_and_shape,
        run_root,
        run_name=real_slurm_run,
        slurm_qos=None,
        n_trials=3,
        n_seeds=6,
        chunk_size=3,
        max_concurrent_trials=3,
        objectives=FIT_SHAPE,
    )
    assert [t.state for t in result.study.trials] == [COMPLETE] * 3
    assert_each_objective_is_its_components_mean_with_its_standard_error(result, 6)
