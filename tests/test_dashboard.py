"""optuna-dashboard on a live run's optuna.db: its JSON API over HTTP, and its study page in headless Chromium."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import browser
import pytest
from conftest import read_json, script_env, wait_for

import slurptuna
from slurptuna import RunPaths

N_TRIALS = 10
LIVE_RUN = f"""
import sys, losses, slurptuna
slurptuna.optimize_run(
    losses.slow_quadratic, n_trials={N_TRIALS}, n_seeds=16, chunk_size=4, run_root=sys.argv[1], progress=False
)
"""


@dataclass
class LiveDashboard:
    url: str
    run_dir: Path
    controller: subprocess.Popen


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def get_json(url: str) -> dict:
    with urllib.request.urlopen(url, timeout=10) as answer:
        return json.load(answer)


def dashboard_command() -> list[str]:
    pytest.importorskip("optuna_dashboard", reason="optuna-dashboard is not installed (pip install -e '.[test]')")
    found = shutil.which(
        "optuna-dashboard", path=os.pathsep.join([os.path.dirname(sys.executable), os.environ["PATH"]])
    )
    assert found, "optuna_dashboard imports but its optuna-dashboard command is not on PATH"
    return [found]


def stop(process: subprocess.Popen) -> None:
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)


@pytest.fixture(scope="module")
def live_dashboard(tmp_path_factory):
    """A single-mode run going on in a subprocess (a slow loss), and optuna-dashboard serving its optuna.db."""
    command = dashboard_command()
    root = tmp_path_factory.mktemp("dashboard") / "runs"
    run_dir = root / "slow_quadratic_v0001"
    log = (root.parent / "controller.log").open("w")
    server_log = (root.parent / "dashboard.log").open("w")
    controller = subprocess.Popen(
        [sys.executable, "-c", LIVE_RUN, str(root)],
        env=script_env(SLURPTUNA_TEST_SLEEP="0.1"),
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    server = None
    try:
        wait_for(lambda: RunPaths(run_dir).trial(0).summary.exists() or controller.poll() is not None, timeout=60)
        assert controller.poll() is None, "the run ended before the dashboard started: make its loss slower"
        port = free_port()
        server = subprocess.Popen(
            [*command, str(RunPaths(run_dir).journal), "--host", "127.0.0.1", "--port", str(port), "--quiet"],
            stdout=subprocess.DEVNULL,
            stderr=server_log,
        )
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 30
        while True:
            assert server.poll() is None, (root.parent / "dashboard.log").read_text()
            try:
                get_json(f"{url}/api/studies")
                break
            except (urllib.error.URLError, ConnectionError):
                assert time.monotonic() < deadline, "optuna-dashboard did not answer in 30 s"
                time.sleep(0.1)
        yield LiveDashboard(url, run_dir, controller)
    finally:
        if server is not None:
            stop(server)
        stop(controller)
        log.close()
        server_log.close()


def test_optuna_dashboard_reads_a_live_runs_study_and_trials_over_http(live_dashboard):
    [study] = get_json(f"{live_dashboard.url}/api/studies")["study_summaries"]
    assert study["study_name"] == live_dashboard.run_dir.name and study["directions"] == ["minimize"]
    detail = get_json(f"{live_dashboard.url}/api/studies/{study['study_id']}")
    assert live_dashboard.controller.poll() is None, "read while the run goes on"
    assert detail["name"] == live_dashboard.run_dir.name
    trials = detail["trials"]
    assert trials and [t["number"] for t in trials] == list(range(len(trials)))
    assert "Complete" in {t["state"] for t in trials} and len(trials) <= N_TRIALS
    run = RunPaths(live_dashboard.run_dir)
    for trial in trials:
        if trial["state"] == "Complete":
            assert trial["values"] == [read_json(run.trial(trial["number"]).summary)["mean"]]


def test_the_run_finishes_under_the_dashboard_and_it_shows_every_trial(live_dashboard):
    assert live_dashboard.controller.wait(timeout=180) == 0
    [study] = get_json(f"{live_dashboard.url}/api/studies")["study_summaries"]
    trials = get_json(f"{live_dashboard.url}/api/studies/{study['study_id']}")["trials"]
    assert [t["state"] for t in trials] == ["Complete"] * N_TRIALS
    assert slurptuna.read_status(live_dashboard.run_dir).n_complete == N_TRIALS


def test_the_dashboards_study_page_renders_in_headless_chromium(live_dashboard, tmp_path):
    [study] = get_json(f"{live_dashboard.url}/api/studies")["study_summaries"]
    page = f"{live_dashboard.url}/dashboard/studies/{study['study_id']}"
    dom, console = browser.dump_dom(page, tmp_path / "profile", budget_ms=8000)
    assert not [line for line in console if "Uncaught" in line], console
    assert live_dashboard.run_dir.name in dom
    assert "MuiTable-root" in dom and "js-plotly-plot" in dom, "the trial table and the history plot"
    browser.screenshot(page, tmp_path / "profile", tmp_path / "dashboard.png", width=1200, height=900)
