"""One fit per participant with optimize_entries: the entry id reaches the loss in `context`.

python examples/participants.py
"""

from __future__ import annotations

import random

from slurptuna import loss, optimize_entries

TRUE_RATE = {"p01": 0.2, "p02": 0.5, "p03": 0.8}


@loss(name="learning_rate_fit", parameter_space={"rate": (0.0, 1.0)})
def learning_rate_fit(params, seed, context):
    rng = random.Random(seed)
    target = TRUE_RATE[context["entry_id"]]
    simulated = sum(rng.random() < params["rate"] for _ in range(50)) / 50
    observed = sum(rng.random() < target for _ in range(50)) / 50
    return (simulated - observed) ** 2


if __name__ == "__main__":
    result = optimize_entries(
        learning_rate_fit, entry_ids=list(TRUE_RATE), n_trials=20, n_seeds=400, chunk_size=200, max_concurrent_entries=3
    )
    for entry, params in result.best_params_by_entry.items():
        print(f"{entry}: true {TRUE_RATE[entry]:.2f}, found {params['rate']:.3f}")
    print("runs:", result.run_dir)
