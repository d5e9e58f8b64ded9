"""Several objectives from a loss's components: a Pareto set, each mean with its standard error.

    python examples/objectives.py

The loss returns two summary statistics; "fit" is minimized and "shape" maximized. Optuna's
default sampler for several objectives works on them; the run's summary.json, `python -m
slurptuna status` and `report` show the Pareto set. Results go to runs/two_statistics_v0001/.
"""

from __future__ import annotations

import random

from slurptuna import loss, optimize_run


@loss(name="two_statistics", parameter_space={"gain": (0.0, 2.0), "leak": (0.0, 1.0)})
def two_statistics(params, seed):
    rng = random.Random(seed)
    response = params["gain"] * rng.gauss(1.0, 0.2) - params["leak"] * rng.random()
    fit = (response - 0.8) ** 2  # distance to the observed mean response
    shape = 1.0 - abs(params["gain"] - 1.5) - 0.3 * params["leak"] + rng.gauss(0.0, 0.05)  # a shape score
    return {"fit": fit, "shape": shape}


if __name__ == "__main__":
    result = optimize_run(
        two_statistics,
        n_trials=16,
        n_seeds=200,
        chunk_size=100,
        objectives={"fit": "minimize", "shape": "maximize"},
        progress=False,
    )
    print(f"Pareto set: {len(result.best_trials)} of {result.n_complete} trials")
    for trial in result.best_trials:
        errors = trial.user_attrs["component_standard_errors"]
        shown = ", ".join(f"{n} {v:.4f} ± {errors[n]:.4f}" for n, v in zip(("fit", "shape"), trial.values, strict=True))
        print(f"  trial {trial.number}: {shown}  {trial.params}")
    print("run dir:", result.run_dir)
