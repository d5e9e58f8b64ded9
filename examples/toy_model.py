"""A stochastic toy model: recover alpha and beta from noisy simulations.

    python examples/toy_model.py                # single mode, local processes
    python examples/toy_model.py distributed    # the same on Slurm (sbatch on PATH)

Each trial is the mean loss over 1,000 seeds. Results go to runs/toy_model_v0001/.
"""

from __future__ import annotations

import random
import sys
from datetime import timedelta

from slurptuna import execution_mode, loss, optimize_run, search_param

TRUE = {"alpha": 0.3, "beta": 0.7}


@loss(
    name="toy_model",
    description="Recover alpha and beta of a noisy two-parameter simulation",
    parameter_space={
        "alpha": (0.0, 1.0),
        "beta": search_param(range=(0.0, 1.0)),
    },
)
def toy_model(params, seed):
    rng = random.Random(seed)
    simulated = [params["alpha"] * rng.gauss(1.0, 0.1) + params["beta"] * rng.random() for _ in range(20)]
    observed = [TRUE["alpha"] * rng.gauss(1.0, 0.1) + TRUE["beta"] * rng.random() for _ in range(20)]
    fit = abs(sum(simulated) - sum(observed)) / 20
    shape = abs(params["alpha"] - params["beta"] - (TRUE["alpha"] - TRUE["beta"]))
    return {"fit": fit, "shape": shape}  # the trial value is the mean of both, each kept too


if __name__ == "__main__":
    mode = sys.argv[1] if len(sys.argv) > 1 else "single"
    result = optimize_run(
        toy_model,
        mode=execution_mode(mode),
        n_trials=25,
        n_seeds=1000,
        chunk_size=250,
        worker_parallelism=2,
        max_concurrent_trials=2,
        worker_time_limit=timedelta(minutes=10),
        slurm_poll_seconds=1,
        slurm_qos=None,
    )
    print("true :", TRUE)
    print("found:", {k: round(v, 3) for k, v in result.best_params.items()})
    print(f"best value {result.best_value:.4f} after {result.n_complete} trials ({result.n_failed} failed)")
    print("run dir:", result.run_dir)
