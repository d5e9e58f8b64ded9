"""Each example script under examples/ runs as the README says: `python examples/NAME.py`, single mode."""

from __future__ import annotations

import subprocess
import sys

import pytest
from conftest import REPO, script_env


@pytest.mark.parametrize(
    ("name", "says"),
    [
        ("callbacks.py", "trials, best x ="),
        ("enqueue.py", "enqueued trial 1: {'rate': 0.05, 'kind': 'linear'}"),
        ("objectives.py", "Pareto set: "),
    ],
)
def test_the_example_script_runs_in_single_mode_and_prints_its_result(tmp_path, name, says):
    done = subprocess.run(
        [sys.executable, str(REPO / "examples" / name)],
        cwd=tmp_path,
        env=script_env(),
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert says in done.stdout
    assert list((tmp_path / "runs").glob("*_v0001/summary.json"))
