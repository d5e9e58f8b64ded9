"""Optuna callbacks: called after every finished trial, as study.optimize calls them.

    python examples/callbacks.py

A user's callback prints each trial with its standard error and stops the run once a trial
is good enough; MaxTrialsCallback caps the complete trials. Results go to runs/noisy_bowl_v0001/.
"""

from __future__ import annotations

import random

import optuna

from slurptuna import loss, optimize_run


@loss(name="noisy_bowl", parameter_space={"x": (-2.0, 2.0)})
def noisy_bowl(params, seed):
    return (params["x"] - 0.5) ** 2 + random.Random(seed).gauss(0.0, 0.1)


def good_enough(study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
    if trial.state != optuna.trial.TrialState.COMPLETE:
        return
    print(f"trial {trial.number}: {trial.value:.4f} ± {trial.user_attrs['standard_error']:.4f}")
    if trial.value < 0.01:
        print("good enough: stopping (trials in flight finish)")
        study.stop()


if __name__ == "__main__":
    result = optimize_run(
        noisy_bowl,
        n_trials=40,
        n_seeds=100,
        chunk_size=50,
        callbacks=[good_enough, optuna.study.MaxTrialsCallback(25)],
        progress=False,
    )
    print(f"{result.n_complete} trials, best x = {result.best_params['x']:.3f}, run dir {result.run_dir}")
