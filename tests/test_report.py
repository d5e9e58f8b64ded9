"""`python -m slurptuna report RUN_DIR`: one offline HTML page of plots, checked in a real headless browser.

The run under test has complete and failed trials (``losses.fails_when_x_high``). Pruned trials are not
covered: slurptuna does not prune yet, and a trial marked PRUNED by hand would test nothing real.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import sqlite3
import subprocess
import sys
from html.parser import HTMLParser
from pathlib import Path

import browser
import losses
import pytest
from conftest import REPO, as_sqlite, assert_one_error_line, read_json, script_env, slurptuna_command, wait_for

import slurptuna
from slurptuna import RunPaths, optimize_entries, optimize_run

N_TRIALS = 12


def _importances_computable() -> bool:
    """optuna < 5 computes parameter importances (fANOVA) only with scikit-learn; without it the page
    has a note saying why in place of that plot (optuna 3.6 to 4.9, measured)."""
    import importlib.util

    import optuna

    return int(optuna.__version__.split(".")[0]) >= 5 or importlib.util.find_spec("sklearn") is not None


N_FIGURES = 5 if _importances_computable() else 4


def report(
    *args: str | Path, python: list[str] | None = None, timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    return slurptuna_command("report", *args, python=python, timeout=timeout)


class _Tables(HTMLParser):
    """The rows of the page's table of trials, as lists of cell texts."""

    def __init__(self) -> None:
        super().__init__()
        self.rows: list[list[str]] = []
        self._in_trials = False
        self._cell: list[str] | None = None

    def handle_starttag(self, tag, attrs):
        if tag == "table" and ("class", "trials") in attrs:
            self._in_trials = True
        elif self._in_trials and tag == "tr":
            self.rows.append([])
        elif self._in_trials and tag == "td":
            self._cell = []

    def handle_endtag(self, tag):
        if tag == "table":
            self._in_trials = False
        elif tag == "td" and self._cell is not None:
            self.rows[-1].append("".join(self._cell))
            self._cell = None

    def handle_data(self, data):
        if self._cell is not None:
            self._cell.append(data)


def trial_rows(page: str) -> list[list[str]]:
    parser = _Tables()
    parser.feed(page)
    return [row for row in parser.rows if row]  # the header row has <th> cells only


@pytest.fixture(scope="module")
def mixed_run(tmp_path_factory) -> Path:
    """A finished single-mode run whose trials above x = 0.7 failed, and its report (RUN_DIR/report.html)."""
    root = tmp_path_factory.mktemp("report") / "runs"
    result = optimize_run(
        losses.fails_when_x_high, n_trials=N_TRIALS, n_seeds=40, chunk_size=5, run_root=root, progress=False
    )
    states = {t.state.name for t in result.study.trials}
    assert states == {"COMPLETE", "FAIL"}, f"the run under test needs both complete and failed trials: {states}"
    done = report(result.run_dir)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == f"wrote {Path(result.run_dir) / 'report.html'}"
    return Path(result.run_dir)


# ---------------------------------------------------------------- the page


def test_the_page_is_self_contained_with_no_network_reference(mixed_run):
    page = (mixed_run / "report.html").read_text()
    tags = re.findall(r"<(?:script|link|img|iframe|source|embed)\b[^>]*>", page)
    assert tags and all(not re.search(r"\b(?:src|href)\s*=", tag) for tag in tags), tags
    assert not re.search(r"@import|url\(\s*['\"]?https?:", page.split("<script", 1)[0])  # the page's own CSS
    assert page.count("<figure") == N_FIGURES
    assert page.count("Plotly.newPlot") == N_FIGURES
    assert N_FIGURES == 5 or "parameter importances could not be computed" in page
    assert len(re.findall(r"plotly\.js v\d", page)) == 1, "plotly.js is embedded once, for every figure"


def test_the_page_shows_each_plot_of_the_issue(mixed_run):
    page = (mixed_run / "report.html").read_text()
    headings = re.findall(r"<h2>([^<]*)</h2>", page)
    assert headings == [
        "Optimization history",
        "Mean of each complete trial ± standard error",
        "Parameter importances",
        "The mean against each parameter",
        "Seeds per second over the run",
        "Best set",
        "Trials",
    ]
    assert "Best Value" in page  # optuna's best-so-far line in the optimization history


def test_the_table_lists_every_trial_with_value_error_params_seeds_and_fail_reason(mixed_run):
    study = slurptuna.read_status(mixed_run)
    rows = trial_rows((mixed_run / "report.html").read_text())
    assert [int(row[0]) for row in rows] == list(range(N_TRIALS))
    for number, state, value, params, seeds, _seconds, reason in rows:
        summary = read_json(RunPaths(mixed_run).trial(int(number)).summary) if state == "COMPLETE" else None
        assert "x=" in params and "k=" in params
        if state == "COMPLETE":
            error = summary["std"] / summary["n_seeds"] ** 0.5
            assert value == f"{summary['mean']:.6g} ± {error:.2g}"
            assert seeds == "40" and reason == ""
        else:
            assert state == "FAIL" and value == "" and reason.startswith("loss 'fails_when_x_high' failed at seed")
            assert "model diverged at x=" in reason and "\n" not in reason
    assert sum(row[1] == "FAIL" for row in rows) == study.n_failed > 0


def test_the_error_bars_are_the_standard_error_of_each_trials_mean(mixed_run):
    shown = slurptuna.read_report(mixed_run)
    complete = [t for t in shown.trials if t.state == "COMPLETE"]
    assert complete
    for trial in complete:
        summary = read_json(RunPaths(mixed_run).trial(trial.number).summary)
        assert trial.value == summary["mean"]
        assert trial.standard_error == pytest.approx(summary["std"] / summary["n_seeds"] ** 0.5, rel=1e-12)


def test_seeds_per_second_spreads_each_chunks_seeds_over_the_time_it_ran():
    series = slurptuna._seeds_per_second_series([(0.0, 10.0, 100), (5.0, 10.0, 50)], n_bins=2)
    assert series == [(2.5, 10.0), (7.5, 20.0)]  # 50 seeds in 0-5 s, then 50 + 50 in 5-10 s
    assert slurptuna._seeds_per_second_series([], n_bins=60) == []


def test_the_seeds_per_second_curve_accounts_for_every_seed_computed(mixed_run):
    shown = slurptuna.read_report(mixed_run)
    times = [t for t, _ in shown.seeds_per_second]
    width = (times[-1] - times[0]) / (len(times) - 1) if len(times) > 1 else None  # unix times: average the rounding
    assert width is not None and width > 0
    # unix times of about 1.8e9 s carry float rounding into the widths: agree to 1e-4
    assert sum(rate * width for _, rate in shown.seeds_per_second) == pytest.approx(shown.status.seeds_done, rel=1e-4)


def test_importances_are_skipped_with_a_note_when_fewer_than_two_trials_complete(run_root):
    result = optimize_run(losses.quadratic, n_trials=1, n_seeds=10, chunk_size=5, run_root=run_root, progress=False)
    done = report(result.run_dir, "-o", run_root / "one.html")
    assert done.returncode == 0, done.stderr
    page = (run_root / "one.html").read_text()
    assert "parameter importances need at least 2 complete trials; this run has 1" in page
    assert page.count("<figure") == 4


def test_a_run_where_every_trial_failed_gets_a_page_that_says_so(run_root):
    result = optimize_run(
        losses.raises_at_seed_7, n_trials=2, n_seeds=20, chunk_size=5, run_root=run_root, progress=False
    )
    done = report(result.run_dir)
    assert done.returncode == 0, done.stderr
    page = (Path(result.run_dir) / "report.html").read_text()
    assert "no complete trial yet: nothing to plot" in page
    assert [row[1] for row in trial_rows(page)] == ["FAIL", "FAIL"]


def test_a_report_of_a_live_run_leaves_it_running_and_shows_its_running_trial(tmp_path):
    live = "import sys, losses, slurptuna; slurptuna.optimize_run(losses.slow_quadratic, n_trials=30, n_seeds=16, "
    live += "chunk_size=4, run_root=sys.argv[1], progress=False)"
    controller = subprocess.Popen(
        [sys.executable, "-c", live, str(tmp_path / "runs")],
        env=script_env(SLURPTUNA_TEST_SLEEP="0.1"),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        run = RunPaths(tmp_path / "runs" / "slow_quadratic_v0001")
        wait_for(lambda: run.trial(1).summary.exists() or controller.poll() is not None, timeout=60)
        done = report(run.dir)
        assert done.returncode == 0, done.stderr
        assert controller.poll() is None, "the run goes on while and after the report reads it"
    finally:
        controller.terminate()
        controller.wait(timeout=30)
    page = (run.dir / "report.html").read_text()
    states = [row[1] for row in trial_rows(page)]
    assert states.count("COMPLETE") >= 2 and set(states) <= {"COMPLETE", "RUNNING"}
    assert "controller: running (pid " in page and page.count("<figure") == N_FIGURES


# ---------------------------------------------------------------- errors: one line, exit 2


def test_a_directory_that_is_not_a_run_is_one_line_and_exit_2(tmp_path):
    assert_one_error_line(report(tmp_path), "report", "is not a slurptuna run")
    assert_one_error_line(report(tmp_path / "missing"), "report", "is not a directory")


def test_a_run_in_an_unknown_file_format_is_one_line_and_exit_2(tmp_path):
    run = tmp_path / "old_v0001"
    run.mkdir()
    (run / "meta.json").write_text(json.dumps({"slurptuna_version": "9.9", "format": "other"}))
    assert_one_error_line(report(run), "report", "cannot read", "9.9")


def test_an_older_runs_locked_database_is_one_line_and_exit_2(mixed_run, tmp_path):
    copy = tmp_path / mixed_run.name
    shutil.copytree(mixed_run, copy)
    as_sqlite(RunPaths(copy))  # a run made before optuna.journal keeps its optuna.db
    holder = sqlite3.connect(copy / "optuna.db")
    try:
        holder.execute("PRAGMA locking_mode = EXCLUSIVE")
        holder.execute("BEGIN EXCLUSIVE")
        assert_one_error_line(report(copy), "report", "locked")
    finally:
        holder.close()


def test_an_entries_directory_names_its_runs_to_report_on(run_root):
    result = optimize_entries(
        losses.context_loss, entry_ids=["p1", "p2"], n_trials=1, n_seeds=4, chunk_size=2, run_root=run_root
    )
    assert_one_error_line(report(result.run_dir), "report", "one run per entry", "p1")


def test_without_plotly_the_error_names_the_extra_and_slurptuna_still_imports(mixed_run):
    no_plotly = [
        sys.executable,
        "-c",
        "import sys; sys.modules['plotly'] = None; import slurptuna; sys.exit(slurptuna.main())",
    ]
    assert_one_error_line(report(mixed_run, python=no_plotly), "report", "pip install 'slurptuna[report]'", "plotly")
    imports = "import sys, pathlib, slurptuna; slurptuna.main(['status', sys.argv[1]]); print('plotly' in sys.modules)"
    done = subprocess.run(
        [sys.executable, "-c", imports, str(mixed_run)], env=script_env(), capture_output=True, text=True, check=True
    )
    assert done.stdout.splitlines()[-1] == "False", "slurptuna imports plotly only inside report"


# ---------------------------------------------------------------- in a real browser


def test_every_plot_renders_offline_in_headless_chromium_without_a_javascript_error(mixed_run, tmp_path):
    probed = browser.with_probe(mixed_run / "report.html", tmp_path / "probed.html")
    dom, console = browser.dump_dom(probed.as_uri(), tmp_path / "profile")
    seen = browser.read_probe(dom)
    assert seen["errors"] == [] and not [line for line in console if "Uncaught" in line], (seen["errors"], console)
    assert seen["figures"] == N_FIGURES and seen["rendered"] == N_FIGURES, seen
    assert all(r.split(":", 1)[0] in ("file", "data", "blob") for r in seen["resources"]), seen["resources"]
    png = browser.screenshot((mixed_run / "report.html").as_uri(), tmp_path / "profile", tmp_path / "report.png")
    if os.environ.get("SLURPTUNA_KEEP_SCREENSHOT") == "1":
        shutil.copyfile(png, REPO / "benchmark" / "report_screenshot.png")


def test_the_browser_check_sees_a_script_error_and_a_plot_that_did_not_render(tmp_path):
    page = tmp_path / "broken.html"
    page.write_text("<html><head></head><body><figure class='plot'><div></div></figure><script>nope()</script></body>")
    dom, console = browser.dump_dom(browser.with_probe(page, tmp_path / "probed.html").as_uri(), tmp_path / "profile")
    seen = browser.read_probe(dom)
    assert seen["figures"] == 1 and seen["rendered"] == 0
    assert any("nope is not defined" in error for error in seen["errors"])
    assert any("Uncaught" in line for line in console)
