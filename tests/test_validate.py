"""`validate`: the run's best trials evaluated again on fresh seeds, in the run's mode, resumable."""

from __future__ import annotations

import json
import math
import signal
import textwrap
import uuid
from html.parser import HTMLParser
from pathlib import Path

import losses
import pytest
from conftest import (
    assert_one_error_line,
    chunk_records,
    read_json,
    run_script,
    slurptuna_command,
    start_controller,
    wait_for,
)

import slurptuna
from slurptuna import ConfigError, RunPaths, optimize_run, validate


def quadratic_run(run_root: Path, **options) -> slurptuna.OptimizeResult:
    options = {"n_trials": 6, "n_seeds": 20, "chunk_size": 5, "random_seed": 3, "progress": False, **options}
    return optimize_run(losses.quadratic, run_root=run_root, **options)


def validation_seeds(result: slurptuna.ValidationResult) -> dict[int, list[int]]:
    """Per candidate (its run trial number), every seed its validation chunks hold, read from the chunk records."""
    child = RunPaths(Path(result.validation_dir))
    seeds: dict[int, list[int]] = {}
    for number in range(len(result.candidates)):
        trial = child.trial(number)
        params = read_json(trial.params)["params"]
        candidate = next(c for c in result.candidates if c.params == params)
        records = chunk_records(trial).values()
        seeds[candidate.trial] = sorted(s for r in records for s in range(r["seeds"]["start"], r["seeds"]["stop"]))
    return seeds


# ---------------------------------------------------------------- single mode, real processes


@pytest.mark.compat
def test_the_top_trials_are_evaluated_again_on_the_seeds_after_the_runs_largest(run_root):
    run = quadratic_run(run_root)
    result = validate(run.run_dir, top=3, n_seeds=30, progress=False)
    ranked = sorted((t for t in run.study.trials if t.value is not None), key=lambda t: t.value)[:3]
    assert [c.trial for c in result.candidates] == [t.number for t in ranked]
    assert [c.run_mean for c in result.candidates] == [t.value for t in ranked]
    assert validation_seeds(result) == {t.number: list(range(20, 50)) for t in ranked}  # fresh: none of 0..19
    for candidate in result.candidates:
        direct = math.fsum(losses.quadratic_value(candidate.params, s) for s in range(20, 50)) / 30
        assert candidate.mean == pytest.approx(direct, rel=1e-13)
        assert candidate.n_seeds == 30 and candidate.standard_error > 0
    assert sum(c.p_best for c in result.candidates) == pytest.approx(1.0)
    best = min(result.candidates, key=lambda c: c.mean)
    assert result.pick == best.trial and result.best == best
    assert read_json(Path(run.run_dir) / "validation.json") == result.to_json()


@pytest.mark.compat
def test_paired_chunk_means_make_a_consistently_better_candidate_the_likely_best_in_either_direction():
    better = {i: (10, 1.0 + 0.3 * math.sin(i)) for i in range(20)}  # the same seeds' noise in both ...
    worse = {i: (10, m + 0.05) for i, (_, m) in better.items()}  # ... and a small, steady difference
    p_min, shared = slurptuna._p_best([worse, better, None], "minimize")
    p_max, _ = slurptuna._p_best([worse, better, None], "maximize")
    assert shared == 20
    assert p_min == [0.0, 1.0, 0.0] and p_max == [1.0, 0.0, 0.0]
    even = {i: (10, 1.0 + (0.1 if i % 2 else -0.1)) for i in range(20)}
    odd = {i: (10, 1.0 - (0.1 if i % 2 else -0.1)) for i in range(20)}
    p_even, _ = slurptuna._p_best([even, odd], "minimize")
    assert 0.2 < p_even[0] < 0.8 and sum(p_even) == pytest.approx(1.0)  # neither is clearly better


@pytest.mark.compat
def test_seeds_that_overlap_the_runs_are_refused_naming_the_overlap(run_root):
    run = quadratic_run(run_root, n_trials=2)
    with pytest.raises(ConfigError, match=r"at seeds 10-19: .* seed_start >= 20"):
        validate(run.run_dir, top=1, seed_start=10)
    with pytest.raises(ConfigError, match=r"at seeds 3,7: "):
        validate(run.run_dir, top=1, seeds=[3, 7, 100])
    assert not list(Path(run.run_dir).glob("validation_v*"))  # refused before any work


def test_bad_arguments_are_one_error_line_naming_the_value_and_what_is_valid(run_root, tmp_path):
    run = quadratic_run(run_root, n_trials=2)
    cases = [
        ([tmp_path / "nowhere"], "nowhere", "not a slurptuna run"),
        ([run.run_dir, "--top", "0"], "got 0", ">= 1"),
        ([run.run_dir, "--seeds", "0"], "n_seeds", ">= 1"),
        ([run.run_dir, "--seed-start", "5"], "at seeds 5-19", "seed_start >= 20"),
    ]
    for args, *words in cases:
        assert_one_error_line(slurptuna_command("validate", *args), "validate", *words)
    failed = optimize_run(losses.raises_at_seed_7, n_trials=1, n_seeds=10, run_root=run_root, progress=False)
    assert_one_error_line(slurptuna_command("validate", failed.run_dir), "validate", "no complete trial")
    assert_one_error_line(slurptuna_command("validate", failed.run_dir, "--best-set"), "validate", "no best_set")


def test_a_run_of_several_objectives_is_refused(run_root):
    run = optimize_run(
        losses.fit_and_shape,
        n_trials=2,
        n_seeds=4,
        objectives={"fit": "minimize", "shape": "maximize"},
        run_root=run_root,
        progress=False,
    )
    with pytest.raises(ConfigError, match="2 objectives"):
        validate(run.run_dir)


def test_the_best_set_of_the_runs_summary_is_validated_when_asked(run_root):
    run = quadratic_run(run_root)
    summary_path = RunPaths(Path(run.run_dir)).summary
    chosen = [run.study.trials[4], run.study.trials[1], run.study.trials[4]]  # a point twice is validated once
    best_set = [
        {"number": t.number, "params": t.params, "mean": t.value, "standard_error": 0.01, "n_seeds": 20} for t in chosen
    ]
    summary_path.write_text(json.dumps({**read_json(summary_path), "best_set": best_set}))
    result = validate(run.run_dir, top="best-set", n_seeds=10, progress=False)
    assert [c.trial for c in result.candidates] == [4, 1]
    assert [c.run_standard_error for c in result.candidates] == [0.01, 0.01]
    assert all(c.n_seeds == 10 for c in result.candidates)


def test_the_same_call_again_resumes_its_validation_and_other_arguments_start_a_new_one(run_root, seed_counter):
    run = quadratic_run(run_root)
    first = validate(run.run_dir, top=2, n_seeds=10, progress=False)
    evaluated = seed_counter.total()
    again = validate(run.run_dir, top=2, n_seeds=10, progress=False)
    assert again == first and seed_counter.total() == evaluated  # nothing computed twice
    other = validate(run.run_dir, top=3, n_seeds=10, progress=False)
    assert Path(first.validation_dir).name == "validation_v0001"
    assert Path(other.validation_dir).name == "validation_v0002"
    assert read_json(Path(run.run_dir) / "validation.json") == other.to_json()  # the latest
    assert read_json(Path(first.validation_dir) / "validation.json") == first.to_json()  # each keeps its own


def test_the_run_itself_resumes_and_shows_its_status_unconfused_by_its_validations(run_root):
    run = quadratic_run(run_root, n_trials=3)
    validate(run.run_dir, top=2, n_seeds=10, progress=False)
    resumed = quadratic_run(run_root, n_trials=5, run_name=run.run_name)
    assert [t.number for t in resumed.study.trials] == [0, 1, 2, 3, 4]
    status = slurptuna.read_status(Path(run.run_dir))
    assert (status.n_complete, status.n_running, status.seeds_done) == (5, 0, 5 * 20)


CONTROLLER = textwrap.dedent("""
    import sys
    import losses
    from slurptuna import optimize_run, validate
    if sys.argv[2] == "run":
        optimize_run(losses.slow_quadratic, n_trials=3, n_seeds=4, chunk_size=2, run_root=sys.argv[1],
                     run_name="base", random_seed=2, progress=False)
    else:
        result = validate(sys.argv[1] + "/base", top=2, n_seeds=16, progress=False)
        print("PICK", result.pick)
""")


def test_an_interrupted_validation_resumes_and_finishes_without_recomputing_its_finished_chunks(tmp_path, seed_counter):
    runs = tmp_path / "runs"
    assert start_controller(tmp_path, CONTROLLER, runs, "run", SLURPTUNA_TEST_SLEEP="0").wait(timeout=120) == 0
    child = RunPaths(runs / "base" / "validation_v0001")
    process = start_controller(tmp_path, CONTROLLER, runs, "validate", SLURPTUNA_TEST_SLEEP="0.05")
    wait_for(lambda: len(chunk_records(child.trial(0))) >= 2)
    process.send_signal(signal.SIGKILL)
    process.communicate(timeout=60)
    done_before = {n: set(chunk_records(child.trial(n))) for n in (0, 1)}
    before = seed_counter.evaluations()
    assert 0 < sum(map(len, done_before.values())) < 16  # killed halfway

    resumed = run_script(tmp_path / "controller.py", runs, "validate", SLURPTUNA_TEST_SLEEP="0")
    assert resumed.returncode == 0, resumed.stderr
    assert "PICK" in resumed.stdout
    after = seed_counter.evaluations()
    for number, chunks in done_before.items():
        x = read_json(child.trial(number).params)["params"]["x"]
        for chunk in chunks:  # a finished chunk is never computed again
            for seed in range(4 + 2 * chunk, 4 + 2 * chunk + 2):
                assert after[(x, seed)] == before[(x, seed)] == 1
        assert all(after[(x, s)] >= 1 for s in range(4, 20))  # and every fresh seed was evaluated
    result = read_json(runs / "base" / "validation.json")
    assert [c["n_seeds"] for c in result["candidates"]] == [16, 16]
    assert not list((runs / "base").glob("validation_v0002"))  # the same validation, resumed


# ---------------------------------------------------------------- status and report


class _ValidationRows(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.rows: list[list[str]] = []
        self._inside = False

    def handle_starttag(self, tag, attrs):
        self._inside |= tag == "table" and ("class", "validation") in attrs
        if self._inside and tag == "tr":
            self.rows.append([])

    def handle_endtag(self, tag):
        self._inside &= tag != "table"

    def handle_data(self, data):
        if self._inside and self.rows:
            self.rows[-1].append(data)


def test_status_and_the_report_show_the_validation(run_root, tmp_path):
    run = quadratic_run(run_root)
    result = validate(run.run_dir, top=3, n_seeds=10, progress=False)
    shown = slurptuna_command("status", run.run_dir, "--json")
    assert shown.returncode == 0, shown.stderr
    assert json.loads(shown.stdout)["validation"] == result.to_json()
    text = slurptuna_command("status", run.run_dir).stdout
    assert "validation on seeds 20..29 in 2 chunks of 5 (validation_v0001)" in text
    pick_line = next(line for line in text.splitlines() if line.startswith("  *"))
    assert pick_line.split()[1] == str(result.pick)

    pytest.importorskip("plotly")
    assert slurptuna_command("report", run.run_dir).returncode == 0
    page = (Path(run.run_dir) / "report.html").read_text()
    parser = _ValidationRows()
    parser.feed(page)
    header, *rows = parser.rows
    assert header == ["trial", "run mean ± SE", "validation mean ± SE", "P(best)", "params"]
    assert [int(row[1]) for row in rows if row[0] == "*"] == [result.pick]
    assert [float(row[-2]) for row in rows] == [round(c.p_best, 3) for c in result.candidates]

    import browser

    dom, _ = browser.dump_dom((Path(run.run_dir) / "report.html").as_uri(), tmp_path / "profile")
    assert "Validation on fresh seeds" in dom and 'class="pick"' in dom


# ---------------------------------------------------------------- distributed mode


def test_on_fake_slurm_the_validation_runs_as_arrays_with_the_runs_slurm_options(fake_slurm, run_root):
    run = quadratic_run(
        run_root, mode="distributed", slurm_poll_seconds=0.2, slurm_qos="long", mem_per_cpu="3G", n_trials=4
    )
    submitted = len(fake_slurm.submissions())
    result = validate(run.run_dir, top=2, n_seeds=12, chunk_size=4, progress=False)
    arrays = [s for s in fake_slurm.submissions()[submitted:] if s.get("job_id") and s["array_tasks"] is not None]
    names = [a for s in arrays for a in s["argv"] if a.startswith("--job-name=")]
    assert arrays and all(n.startswith("--job-name=validation_v0001.") for n in names)
    assert all("--mem-per-cpu=3G" in s["argv"] and "--qos=long" in s["argv"] for s in arrays)
    assert sum(len(s["array_tasks"]) for s in arrays) == 2 * 3  # 2 candidates x 3 chunks, each once
    assert validation_seeds(result) == {c.trial: list(range(20, 32)) for c in result.candidates}
    assert sum(c.p_best for c in result.candidates) == pytest.approx(1.0)


def test_on_a_real_slurm_the_validation_has_the_means_of_single_mode(run_root):
    from real_slurm import require_real_slurm

    require_real_slurm()
    name = f"validate_{uuid.uuid4().hex[:8]}"
    run = quadratic_run(run_root, mode="distributed", slurm_poll_seconds=0.3, slurm_qos=None, run_name=name)
    result = validate(run.run_dir, top=2, n_seeds=10, progress=False)  # on an error it cancels its own jobs
    for candidate in result.candidates:
        direct = math.fsum(losses.quadratic_value(candidate.params, s) for s in range(20, 30)) / 10
        assert candidate.mean == pytest.approx(direct, rel=1e-13)
    assert sum(c.p_best for c in result.candidates) == pytest.approx(1.0)
