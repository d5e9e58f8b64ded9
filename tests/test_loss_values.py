"""What a loss may return: any one real number, also as an array library gives it (single mode, real processes)."""

from __future__ import annotations

import losses
import pytest

import slurptuna
from slurptuna import optimize_run


def _run(definition, run_root, n_seeds=4):
    return optimize_run(definition, n_trials=1, n_seeds=n_seeds, chunk_size=2, run_root=run_root)


def _mean_over_seeds(x: float, n_seeds: int = 4) -> float:
    return x + sum(range(n_seeds)) / n_seeds


def test_a_loss_returning_a_zero_dimensional_array_is_accepted(run_root):
    result = _run(losses.zero_dimensional_array, run_root)
    assert result.n_complete == 1
    assert result.best_value == pytest.approx(_mean_over_seeds(result.best_params["x"]))


def test_a_loss_returning_a_one_element_array_is_accepted(run_root):
    result = _run(losses.one_element_array, run_root)
    assert result.n_complete == 1
    assert result.best_value == pytest.approx(_mean_over_seeds(result.best_params["x"]))


def test_a_loss_returning_an_object_with_float_is_accepted(run_root):
    result = _run(losses.float_like, run_root)
    assert result.n_complete == 1
    assert result.best_value == pytest.approx(_mean_over_seeds(result.best_params["x"]))


def test_a_loss_returning_a_one_element_tensor_is_read_by_its_item_method(run_root):
    result = _run(losses.tensor_like, run_root)
    assert result.n_complete == 1
    assert result.best_value == pytest.approx(_mean_over_seeds(result.best_params["x"]))


def test_arrays_and_tensors_inside_a_dict_or_a_list_count_as_their_numbers(run_root):
    result = _run(losses.arrays_in_a_dict_and_a_list, run_root)
    x = result.best_params["x"]
    # seeds 0 and 2 return dicts, seeds 1 and 3 lists: each the mean of (x, seed, 2 * seed)
    assert result.best_value == pytest.approx(x / 3 + sum(3 * s for s in range(4)) / 4 / 3)
    components = result.study.trials[0].user_attrs["components"]
    assert components == pytest.approx({"fit": x, "size": 1.0, "rest": 2.0})  # the dict seeds: 0 and 2


def test_a_loss_returning_a_larger_array_still_fails_its_trial_saying_it_is_not_a_number(run_root):
    result = _run(losses.larger_array, run_root)
    trial = result.study.trials[0]
    assert trial.state.name == "FAIL" and result.n_failed == 1
    reason = trial.user_attrs["fail_reason"]
    assert "'larger_array'" in reason and "seed 0" in reason
    assert "returned ndarray array([" in reason and "not a number, dict or list of numbers" in reason


@pytest.mark.parametrize("value", [True, 1 + 2j, "0.5", None, [], {"note": "text"}])
def test_bools_complex_numbers_text_and_empty_containers_are_still_not_a_loss(value):
    with pytest.raises(slurptuna._BadLossValue):
        slurptuna._loss_value(value, {})
