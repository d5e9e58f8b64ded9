"""Seeds as a budget: chunks are reported to Optuna's pruner as they arrive; a hopeless trial is pruned.

The loss ``cliff`` is ``quadratic`` plus 5 for x > 0.5, so a trial at x = 0.9 is clearly worse
than one at x = 0.0 from its first chunk on, while x = 0.3 (the minimum) is better than both.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import textwrap
import time
import uuid
import warnings
from pathlib import Path

import losses
import optuna
import pytest
from conftest import Points, chunk_records, read_json, run_script, script_env, start_controller, wait_for
from real_slurm import require_real_slurm

import slurptuna
from slurptuna import RunPaths, _report_form, optimize_run

BAD_X = 0.9


def wilcoxon(**options) -> optuna.pruners.BasePruner:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        return optuna.pruners.WilcoxonPruner(**options)


def run_cliff(run_root: Path, xs: list[float], pruner, **options):
    options = {"n_seeds": 400, "chunk_size": 20, "run_root": run_root, "progress": False, **options}
    return optimize_run(losses.cliff, n_trials=len(xs), sampler=Points(xs), pruner=pruner, **options)


def chunk_means(run_dir: str, number: int) -> dict[int, float]:
    trial = RunPaths(Path(run_dir)).trial(number)
    return {index: r["stats"]["mean"] for index, r in chunk_records(trial).items()}


def assert_bad_trial_pruned_early(result, seed_counter, n_seeds: int = 400, at_most: float = 0.5) -> dict:
    """Trial 1 (x = 0.9) is PRUNED after some chunks, with what it used; the others COMPLETE.

    ``at_most``: the share of its seeds it may have used (on Slurm the controller sees chunk
    files only at its poll pace, so a loaded machine lets more chunks finish first).
    """
    states = [t.state.name for t in result.study.trials]
    assert states == ["COMPLETE", "PRUNED", "COMPLETE"]
    pruned = result.study.trials[1]
    used = pruned.user_attrs["n_seeds"]
    evaluated = sum(n for (x, _), n in seed_counter.evaluations().items() if x == BAD_X)
    assert 80 <= used <= evaluated <= n_seeds * at_most  # four chunks at least (Wilcoxon's p < 0.1), then cancelled
    means = chunk_means(result.run_dir, 1)  # its files stay (on Slurm, a task may finish as it is cancelled)
    assert pruned.intermediate_values == {i: means[i] for i in pruned.intermediate_values}
    assert used == 20 * len(pruned.intermediate_values)
    reported = pruned.intermediate_values.values()
    assert pruned.user_attrs["running_mean"] == pytest.approx(sum(reported) / len(reported), rel=1e-12)
    assert 0 < pruned.user_attrs["standard_error"] < 0.01
    for complete in (result.study.trials[0], result.study.trials[2]):
        assert sorted(complete.intermediate_values) == list(range(n_seeds // 20))  # the best has every step
        assert complete.user_attrs["standard_error"] == pytest.approx(
            complete.user_attrs["std"] / (n_seeds**0.5), rel=1e-12
        )
    summary = read_json(Path(result.run_dir) / "summary.json")
    assert (summary["n_pruned"], summary["seeds_saved"]) == (1, n_seeds - used)
    assert (
        summary["best_standard_error"]
        == result.best_standard_error
        == result.study.trials[2].user_attrs["standard_error"]
    )
    assert result.n_pruned == 1 and result.best_params == {"x": 0.3}
    return {"used": used, "evaluated": evaluated}


# ---------------------------------------------------------------- which report each pruner gets


@pytest.mark.compat
@pytest.mark.parametrize(
    ("pruner", "form"),
    [
        (None, None),
        (optuna.pruners.NopPruner(), None),
        (wilcoxon(), "chunk"),
        (optuna.pruners.PatientPruner(wilcoxon(), patience=2), "chunk"),
        (optuna.pruners.MedianPruner(), "running_mean"),
        (optuna.pruners.PercentilePruner(25.0), "running_mean"),
        (optuna.pruners.SuccessiveHalvingPruner(), "running_mean"),
        (optuna.pruners.HyperbandPruner(), "running_mean"),
        (optuna.pruners.ThresholdPruner(upper=1.0), "running_mean"),
        (optuna.pruners.PatientPruner(optuna.pruners.MedianPruner(), patience=2), "running_mean"),
    ],
)
def test_auto_reports_chunk_means_to_wilcoxon_and_running_means_to_step_ordered_pruners(pruner, form):
    assert _report_form(optuna, pruner, "auto") == form


def test_prune_report_overrides_the_form_and_a_bad_value_is_refused(run_root):
    assert _report_form(optuna, optuna.pruners.MedianPruner(), "chunk") == "chunk"
    assert _report_form(optuna, wilcoxon(), "running_mean") == "running_mean"
    with pytest.raises(ValueError, match="prune_report must be one of 'auto', 'chunk', 'running_mean'"):
        optimize_run(losses.cliff, n_trials=1, n_seeds=4, run_root=run_root, prune_report="median")


def test_without_a_pruner_nothing_is_reported_and_complete_trials_carry_their_standard_error(run_root):
    result = optimize_run(losses.cliff, n_trials=2, n_seeds=40, chunk_size=10, run_root=run_root, progress=False)
    assert all(t.intermediate_values == {} for t in result.study.trials)
    assert isinstance(result.study.pruner, optuna.pruners.NopPruner)  # not Optuna's default MedianPruner
    for trial in result.study.trials:
        summary = read_json(RunPaths(Path(result.run_dir)).trial(trial.number).summary)
        assert summary["standard_error"] == pytest.approx(summary["std"] / 40**0.5, rel=1e-12)
        assert trial.user_attrs["standard_error"] == summary["standard_error"]
    assert read_json(Path(result.run_dir) / "summary.json")["n_pruned"] == 0


# ---------------------------------------------------------------- single mode


@pytest.mark.compat
def test_a_clearly_bad_trial_is_pruned_after_its_first_chunks_and_its_other_chunks_never_run(run_root, seed_counter):
    result = run_cliff(run_root, [0.0, BAD_X, 0.3], wilcoxon())
    assert_bad_trial_pruned_early(result, seed_counter)
    assert max(seed_counter.evaluations().values()) == 1  # no seed evaluated twice


@pytest.mark.parametrize("make_pruner", [wilcoxon, lambda: optuna.pruners.MedianPruner(n_startup_trials=1)])
def test_a_trial_better_than_every_earlier_one_is_never_pruned(run_root, make_pruner):
    result = run_cliff(run_root, [0.0, 0.1, 0.2, 0.3], make_pruner(), n_seeds=200)
    assert [t.state.name for t in result.study.trials] == ["COMPLETE"] * 4
    assert result.best_params == {"x": 0.3}


PRUNERS = {
    "WilcoxonPruner": wilcoxon,
    "MedianPruner": lambda: optuna.pruners.MedianPruner(n_startup_trials=2),
    "PercentilePruner": lambda: optuna.pruners.PercentilePruner(25.0, n_startup_trials=2),
    "SuccessiveHalvingPruner": optuna.pruners.SuccessiveHalvingPruner,
    "HyperbandPruner": optuna.pruners.HyperbandPruner,
    "ThresholdPruner": lambda: optuna.pruners.ThresholdPruner(upper=1.0),
    "PatientPruner": lambda: optuna.pruners.PatientPruner(optuna.pruners.MedianPruner(n_startup_trials=2), patience=1),
}


@pytest.mark.parametrize("name", PRUNERS)
def test_each_pruner_runs_end_to_end_told_its_report_form(run_root, monkeypatch, name):
    monkeypatch.setenv("SLURPTUNA_TEST_SLEEP", "0.002")  # a chunk lasts 20 ms: the controller sees them arrive
    with warnings.catch_warnings():
        warnings.filterwarnings("error", message=".*already reported.*")  # a step is never reported twice
        result = optimize_run(
            losses.cliff,
            n_trials=8,
            n_seeds=60,
            chunk_size=10,
            random_seed=5,
            run_root=run_root,
            pruner=PRUNERS[name](),
            progress=False,
        )
    trials = result.study.trials
    assert result.n_complete + result.n_pruned == 8 and result.n_failed == 0
    assert [t.state.name for t in trials].count("PRUNED") == result.n_pruned
    steps = set(range(6)) if name == "WilcoxonPruner" else {10, 20, 30, 40, 50, 60}
    for trial in trials:
        assert set(trial.intermediate_values) <= steps
        if trial.state.name == "COMPLETE":
            assert set(trial.intermediate_values) == steps
    if name == "ThresholdPruner":  # every trial at x > 0.5 is over 1.0 from its first chunk on
        assert {t.state.name for t in trials if t.params["x"] > 0.5} == {"PRUNED"}
        assert {t.state.name for t in trials if t.params["x"] <= 0.5} == {"COMPLETE"}
    if name != "WilcoxonPruner":  # a running mean of the chunks from 0 on: the same seeds in every trial
        for trial in trials:
            means = chunk_means(result.run_dir, trial.number)
            for step, value in trial.intermediate_values.items():
                prefix = [means[i] for i in range(step // 10)]
                assert value == pytest.approx(sum(prefix) / len(prefix), rel=1e-12)


# ---------------------------------------------------------------- distributed mode (fake Slurm)


def test_on_slurm_a_pruned_trial_s_array_and_reduce_job_leave_the_queue_in_one_scancel(
    fake_slurm, run_root, seed_counter
):
    result = run_cliff(
        run_root, [0.0, BAD_X, 0.3], wilcoxon(), mode="distributed", slurm_poll_seconds=0.2, array_parallelism_limit=2
    )
    assert_bad_trial_pruned_early(result, seed_counter, at_most=0.8)  # 300 of 400 seen in CI under load

    def runs_trial_1(argv: list[str]) -> bool:  # alone in its array (one trial at a time): "--tasks 1:..."
        return any(a.startswith("1:") for a in argv) or argv[-2:] == ["--trials", "1"]

    trial1 = [s for s in fake_slurm.submissions() if s.get("job_id") and runs_trial_1(s["argv"])]
    assert len(trial1) == 2  # its array job and its reduce job
    array, reduce = (str(s["job_id"]) for s in trial1)
    cancels = [
        c["argv"] for c in fake_slurm.calls("scancel") if any(a.split("_")[0] in (array, reduce) for a in c["argv"])
    ]
    assert len(cancels) == 1  # one scancel: the array's tasks still queued, and its reduce job
    assert reduce in cancels[0] and any(a.startswith(f"{array}_[") for a in cancels[0])
    queue = subprocess.run(["squeue", "-h", "-o", "%i|%T"], capture_output=True, text=True, check=True).stdout
    assert not any(line.split("_")[0].split("|")[0] in (array, reduce) for line in queue.splitlines())


# ---------------------------------------------------------------- resume keeps reports

CONTROLLER = textwrap.dedent("""
    import sys
    import warnings
    import losses
    import optuna
    from slurptuna import optimize_run

    class Points(optuna.samplers.RandomSampler):
        def sample_independent(self, study, trial, name, distribution):
            return [0.0, 0.9][trial.number]

    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    warnings.filterwarnings("error", message=".*already reported.*")  # a repeated step fails the run
    result = optimize_run(losses.cliff, mode=sys.argv[2], n_trials=2, n_seeds=200, chunk_size=10,
                          run_root=sys.argv[1], run_name="resumed", sampler=Points(),
                          pruner=optuna.pruners.WilcoxonPruner(n_startup_steps=6), slurm_poll_seconds=0.2,
                          array_parallelism_limit=1)
    print("STATES", [t.state.name for t in result.study.trials])
""")


def reported_steps(run_dir: Path, number: int) -> dict[int, float]:
    """Trial ``number``'s intermediate values as the study holds them (none before it exists)."""
    trials = slurptuna._read_study_trials(RunPaths(run_dir), run_dir.name) if run_dir.exists() else []
    return dict(trials[number].intermediate_values) if len(trials) > number else {}


@pytest.mark.parametrize("mode", ["single", "distributed"])
def test_a_resumed_trial_keeps_its_reports_repeats_none_and_can_still_be_pruned(request, tmp_path, mode):
    if mode == "distributed":
        request.getfixturevalue("fake_slurm")
    runs = tmp_path / "runs"
    db = runs / "resumed"
    sleep = "0.01"  # 100 ms a chunk: pruning needs 6 paired chunks
    process = start_controller(tmp_path, CONTROLLER, runs, mode, SLURPTUNA_TEST_SLEEP=sleep)
    wait_for(lambda: len(reported_steps(db, 1)) >= 2, timeout=120)
    process.send_signal(signal.SIGKILL)
    process.wait()
    before = reported_steps(db, 1)
    assert 2 <= len(before) < 6  # killed mid-trial, before the pruner could decide
    resumed = run_script(tmp_path / "controller.py", runs, mode, SLURPTUNA_TEST_SLEEP=sleep)
    assert resumed.returncode == 0, resumed.stderr
    assert "STATES ['COMPLETE', 'PRUNED']" in resumed.stdout
    after = reported_steps(db, 1)
    assert {step: after[step] for step in before} == before  # kept as they were
    assert len(after) >= 6 and after == {i: m for i, m in chunk_means(str(runs / "resumed"), 1).items() if i in after}
    summary = read_json(runs / "resumed" / "summary.json")
    assert summary["n_pruned"] == 1 and summary["seeds_saved"] == 200 - 10 * len(after)


# ---------------------------------------------------------------- real Slurm


@pytest.fixture
def real_slurm():
    """The running Slurm; afterwards, cancel whatever a failed test left of its runs."""
    require_real_slurm()
    names: list[str] = []
    yield names
    for name in names:
        queued = subprocess.run(["squeue", "-h", "-o", "%i|%j"], capture_output=True, text=True, check=False)
        ids = {line.split("|")[0].split("_")[0] for line in queued.stdout.splitlines() if f"|{name}." in line}
        if ids:
            subprocess.run(["scancel", *ids], check=False)


def test_real_slurm_a_pruned_trial_s_remaining_array_tasks_leave_the_queue(real_slurm, run_root, monkeypatch):
    monkeypatch.setenv("SLURPTUNA_TEST_SLEEP", "0.005")
    run_name = f"pruning_{uuid.uuid4().hex[:8]}"
    real_slurm.append(run_name)
    result = run_cliff(
        run_root,
        [0.0, BAD_X],
        wilcoxon(),
        n_seeds=400,
        chunk_size=20,
        mode="distributed",
        run_name=run_name,
        slurm_poll_seconds=0.3,
        slurm_qos=None,
        array_parallelism_limit=2,
    )
    assert [t.state.name for t in result.study.trials] == ["COMPLETE", "PRUNED"]
    assert len(chunk_means(result.run_dir, 1)) < 20  # its last chunks never ran

    def trial1_jobs() -> list[str]:
        queued = subprocess.run(["squeue", "-h", "-o", "%i|%j"], capture_output=True, text=True, check=True)
        return [line for line in queued.stdout.splitlines() if f"|{run_name}.t00001." in line]

    wait_for(lambda: not trial1_jobs(), timeout=30)
    jobs = json.loads((RunPaths(Path(result.run_dir)).trial(1).jobs).read_text())["jobs"]

    def accounted_states() -> str:
        argv = ["sacct", "-X", "-n", "-P", "-j", ",".join(j["job_id"] for j in jobs), "-o", "jobid,state"]
        return subprocess.run(argv, capture_output=True, text=True, check=False).stdout

    # accounting answers: the reduce job and the unstarted tasks were cancelled (slurmdbd records
    # it a moment after the queue forgets them: under load, seconds later)
    if accounted_states().strip():
        wait_for(lambda: "CANCELLED" in accounted_states() or time.sleep(0.5), timeout=30)


def test_status_still_reads_a_run_recorded_before_prune_report_existed(run_root):
    result = optimize_run(losses.cliff, n_trials=1, n_seeds=4, run_root=run_root, progress=False)
    meta = Path(result.run_dir) / "meta.json"
    record = read_json(meta)
    del record["prune_report"]
    meta.write_text(json.dumps(record))
    shown = subprocess.run(
        [sys.executable, "-m", "slurptuna", "status", result.run_dir], capture_output=True, text=True, env=script_env()
    )
    assert shown.returncode == 0, shown.stderr
    assert "trials: 1 complete, 0 running, 0 failed, 0 pruned of 1" in shown.stdout
