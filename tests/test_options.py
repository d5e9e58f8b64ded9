"""Options defined once (optimize_run's signature), safe run names, the loss's code identity, compatibility."""

from __future__ import annotations

import math
import re
import textwrap
from pathlib import Path

import losses
import pytest
from conftest import REPO, read_json, rewrite_chunk_record

import slurptuna
from slurptuna import ConfigError, RunPaths, loss, optimize_entries, optimize_run

pytestmark = pytest.mark.compat  # fast: .ci/run also runs it on the other Pythons and the optuna floor


def test_the_readme_table_of_options_is_the_one_made_from_the_signature():
    readme = (REPO / "README.md").read_text()
    shown = re.search(r"<!-- options:[^\n]*-->\n(.*?)\n<!-- /options -->", readme, re.DOTALL)
    assert shown is not None, "README.md lost its options table markers"
    assert shown.group(1).strip() == slurptuna._options_table()


def test_every_option_has_help_a_known_kind_and_a_default_that_passes_its_own_check():
    options = slurptuna._options()
    assert len(options) >= 33 and "resume_with_changed_loss" in options
    for name, option in options.items():
        assert option.help and option.kind in slurptuna._KINDS, name
        assert option.name == name
        option.check(option.default)  # raises if a default is invalid


def test_optimize_entries_takes_the_same_options_and_names_an_unknown_one(run_root):
    with pytest.raises(ConfigError, match=r"unknown option\(s\) \['n_trails'\].*n_trials"):
        optimize_entries(losses.quadratic, entry_ids=["a"], n_trails=3, run_root=run_root)
    assert not run_root.exists()


@pytest.mark.parametrize("hostile", ["../x", "/abs", "a/b", "", "..", "x" * 300, "a\\b"])
@pytest.mark.parametrize("where", ["run_name", "run_name_prefix"])
def test_a_run_name_or_prefix_that_could_leave_run_root_is_refused_before_anything_is_written(tmp_path, where, hostile):
    run_root = tmp_path / "inner" / "runs"
    call = optimize_run if where == "run_name" else optimize_entries
    extra = {} if where == "run_name" else {"entry_ids": ["a"]}
    with pytest.raises(ConfigError, match=rf"{where} must be a plain directory name") as raised:
        call(losses.quadratic, run_root=run_root, n_trials=1, n_seeds=2, **{where: hostile}, **extra)
    assert repr(hostile)[:40] in str(raised.value)
    assert list(tmp_path.rglob("*")) == []


def test_an_entry_id_longer_than_a_directory_name_may_be_is_refused(run_root):
    with pytest.raises(ConfigError, match="entry id"):
        optimize_entries(losses.quadratic, entry_ids=["p" * 300], run_root=run_root, n_trials=1, n_seeds=2)


LOSS_V1 = """
from slurptuna import loss

@loss(name="edited_model", parameter_space={"x": (0.0, 1.0)})
def model(params, seed):
    # a comment does not change the code
    return params["x"] + seed
"""


def _load(path: Path, text: str):
    path.write_text(textwrap.dedent(text))
    slurptuna._import_file(str(path))
    return slurptuna._LOSSES["edited_model"]


def test_a_resume_after_the_loss_code_changed_is_refused_naming_the_trials_of_the_old_code(tmp_path):
    module = tmp_path / "edited.py"
    options = {"n_seeds": 4, "chunk_size": 2, "run_root": tmp_path / "runs", "loss_module": str(module)}
    first = optimize_run(_load(module, LOSS_V1), n_trials=2, **options)
    same = _load(module, LOSS_V1.replace("# a comment does not change the code", "# another comment"))
    again = optimize_run(same, n_trials=2, run_name=first.run_name, **options)  # comments do not count
    assert again.n_complete == 2
    changed = _load(module, LOSS_V1.replace('params["x"] + seed', 'params["x"] * 2 + seed'))
    with pytest.raises(ConfigError, match=r"the loss's code changed since trials 0-1 were computed by it"):
        optimize_run(changed, n_trials=3, run_name=first.run_name, **options)
    resumed = optimize_run(changed, n_trials=3, run_name=first.run_name, resume_with_changed_loss=True, **options)
    new = resumed.study.trials[2]
    assert new.value == pytest.approx(new.params["x"] * 2 + 1.5)
    meta = read_json(RunPaths(Path(first.run_dir)).meta)
    assert meta["code_id"] == slurptuna._code_id(changed) != slurptuna._code_id(same)


def test_a_chunk_computed_by_other_loss_code_is_not_trusted(run_root):
    result = optimize_run(losses.quadratic, n_trials=1, n_seeds=4, chunk_size=2, run_root=run_root)
    trial = RunPaths(Path(result.run_dir)).trial(0)
    expected = slurptuna.TrialParams.load(trial)
    assert expected.code_id and slurptuna.missing_chunks(trial, expected) == []
    rewrite_chunk_record(trial, 1, code_id="0123456789abcdef")
    assert slurptuna.missing_chunks(trial, expected) == [1]


@loss(name="keyword_context", parameter_space={"x": (0.0, 1.0)})
def keyword_context(params, seed, *, context):
    return params["x"] + context["chunk_index"]


@loss(name="nested_components", parameter_space={"x": (0.0, 1.0)})
def nested_components(params, seed):
    return {"total_loss": params["x"] + seed, "components": {"fit": params["x"], "penalty": float(seed)}}


def test_the_earlier_packages_keyword_only_context_and_nested_components_work(run_root):
    result = optimize_run(keyword_context, n_trials=1, n_seeds=4, chunk_size=2, run_root=run_root, loss_module=__name__)
    trial = result.study.trials[0]
    assert trial.value == pytest.approx(trial.params["x"] + 0.5)
    result = optimize_run(nested_components, n_trials=1, n_seeds=4, run_root=run_root, loss_module=__name__)
    trial = result.study.trials[0]
    assert trial.value == pytest.approx(trial.params["x"] + 1.5)
    components = trial.user_attrs["components"]
    assert components["fit"] == pytest.approx(trial.params["x"]) and components["penalty"] == 1.5
    assert math.isclose(components["total_loss"], trial.value)
