"""Known starting points: evaluated first, in order, before the sampler proposes anything.

    python examples/enqueue.py

A published setting and last month's best are trials 0 and 1. Running the script again with
run_name set resumes the run without evaluating them again. Results go to runs/decay_fit_v0001/.
"""

from __future__ import annotations

import math
import random

from slurptuna import loss, optimize_run, search_param

TRUE = {"rate": 0.08, "kind": "exponential"}


@loss(
    name="decay_fit",
    parameter_space={
        "rate": search_param(range=(1e-3, 1.0), log=True),
        "kind": search_param(allowed=["exponential", "linear"]),
    },
)
def decay_fit(params, seed):
    rng = random.Random(seed)
    t = rng.uniform(0, 20)
    observed = math.exp(-TRUE["rate"] * t) + rng.gauss(0.0, 0.02)
    if params["kind"] == "exponential":
        predicted = math.exp(-params["rate"] * t)
    else:
        predicted = max(0.0, 1 - params["rate"] * t)
    return (predicted - observed) ** 2


if __name__ == "__main__":
    result = optimize_run(
        decay_fit,
        n_trials=12,
        n_seeds=300,
        chunk_size=100,
        enqueue=[
            {"rate": 0.1, "kind": "exponential"},  # the published setting
            {"rate": 0.05, "kind": "linear"},  # last month's best
        ],
        progress=False,
    )
    for trial in result.study.trials[:2]:
        print(f"enqueued trial {trial.number}: {trial.params} -> {trial.value:.5f}")
    print(f"best {result.best_params} -> {result.best_value:.5f}, run dir {result.run_dir}")
