"""Losses the tests run through the real worker path: workers import this module by name."""

from __future__ import annotations

import math
import os
import time

from slurptuna import loss, search_param


def _record(params: dict, seed: int) -> None:
    """Append "x seed" to $SLURPTUNA_TEST_COUNT_DIR/<pid> so a test can count evaluations."""
    directory = os.environ.get("SLURPTUNA_TEST_COUNT_DIR")
    if directory:
        with open(os.path.join(directory, str(os.getpid())), "a") as handle:
            handle.write(f"{params['x']!r} {seed}\n")


def quadratic_value(params: dict, seed: int) -> float:
    return (params["x"] - 0.3) ** 2 + math.sin(seed * 1.7) * 0.05


@loss(name="quadratic", parameter_space={"x": (-1.0, 1.0)})
def quadratic(params, seed):
    _record(params, seed)
    return quadratic_value(params, seed)


@loss(
    name="mixed_space",
    parameter_space={
        "lr": search_param(range=(1e-4, 1e-1), log=True),
        "steps": search_param(range=(1, 10), dtype="int"),
        "mode": search_param(allowed=["fast", "slow"]),
    },
)
def mixed_space(params, seed, context):
    assert isinstance(params["steps"], int)
    penalty = 0.0 if params["mode"] == "fast" else 0.1
    return {"fit": math.log10(params["lr"]) ** 2 / 10 + penalty, "steps": params["steps"] / 10 + seed % 3}


@loss(name="total_loss_dict", parameter_space={"x": (0.0, 1.0)})
def total_loss_dict(params, seed):
    return {"total_loss": params["x"] + seed, "a": 1.0, "b": float(seed)}


@loss(name="list_loss", parameter_space={"x": (0.0, 1.0)})
def list_loss(params, seed):
    return [params["x"], seed, 2 * seed]


@loss(name="numpy_loss", parameter_space={"x": (0.0, 1.0)})
def numpy_loss(params, seed):
    import numpy as np

    return np.float32(params["x"]) + np.int64(seed)


@loss(name="context_loss", parameter_space={"x": (0.0, 1.0)})
def context_loss(params, seed, context):
    return float(len(context["entry_id"] or "")) + 0.0 * params["x"] + context["chunk_index"] * 0


@loss(name="raises_at_seed_7", parameter_space={"x": (0.0, 1.0)})
def raises_at_seed_7(params, seed):
    if seed == 7:
        raise RuntimeError("model diverged")
    return params["x"]


@loss(name="nan_when_x_high", parameter_space={"x": (0.0, 1.0)})
def nan_when_x_high(params, seed):
    return float("nan") if params["x"] > 0.5 else params["x"]


@loss(name="returns_text", parameter_space={"x": (0.0, 1.0)})
def returns_text(params, seed):
    return "oops"


@loss(name="slow_quadratic", parameter_space={"x": (-1.0, 1.0)})
def slow_quadratic(params, seed):
    _record(params, seed)
    time.sleep(float(os.environ.get("SLURPTUNA_TEST_SLEEP", "0.05")))
    return quadratic_value(params, seed)


@loss(name="sleeps_at_seed_0", parameter_space={"x": (0.0, 1.0)})
def sleeps_at_seed_0(params, seed):
    """Seed 0 sleeps once per marker directory (a timeout the first time, then fine)."""
    _record(params, seed)
    marker = os.path.join(os.environ["SLURPTUNA_TEST_COUNT_DIR"], "slept")
    if seed == 0 and not os.path.exists(marker):
        open(marker, "w").close()
        time.sleep(600)
    return params["x"] + seed


@loss(name="records_busy_intervals", parameter_space={"x": (0.0, 1.0)})
def records_busy_intervals(params, seed):
    """Sleeps $SLURPTUNA_TEST_BUSY (20 ms) and appends "pid start end" to $SLURPTUNA_TEST_COUNT_DIR/busy.<pid>."""
    start = time.time()
    time.sleep(float(os.environ.get("SLURPTUNA_TEST_BUSY", "0.02")))
    with open(os.path.join(os.environ["SLURPTUNA_TEST_COUNT_DIR"], f"busy.{os.getpid()}"), "a") as handle:
        handle.write(f"{os.getpid()} {start} {time.time()}\n")
    return params["x"]


def _first_time(name: str) -> bool:
    """True once per $SLURPTUNA_TEST_COUNT_DIR: the first call of a loss that misbehaves once."""
    marker = os.path.join(os.environ["SLURPTUNA_TEST_COUNT_DIR"], name)
    try:
        os.close(os.open(marker, os.O_CREAT | os.O_EXCL))
        return True
    except FileExistsError:
        return False


@loss(name="aborts_once_at_seed_5", parameter_space={"x": (0.0, 1.0)})
def aborts_once_at_seed_5(params, seed):
    """Kills its own process (SIGABRT) the first time it meets seed 5, like a segfaulting extension."""
    _record(params, seed)
    if seed == 5 and _first_time("aborted"):
        os.abort()
    return params["x"] + seed


@loss(name="exits_once_at_seed_2", parameter_space={"x": (0.0, 1.0)})
def exits_once_at_seed_2(params, seed):
    if seed == 2 and _first_time("exited"):
        os._exit(3)
    return params["x"]


@loss(name="uses_its_own_pool", parameter_space={"x": (0.0, 1.0)})
def uses_its_own_pool(params, seed):
    """Starts processes of its own, as a loss using multiprocessing or joblib does."""
    import multiprocessing

    with multiprocessing.get_context("fork").Pool(2) as pool:
        parts = pool.map(abs, [params["x"], -float(seed)])
    return sum(parts)


@loss(name="fails_when_x_high", parameter_space={"x": (0.0, 1.0), "k": search_param(range=(1, 4), dtype="int")})
def fails_when_x_high(params, seed):
    """Raises for x > 0.7 only, so one run has complete and failed trials."""
    if params["x"] > 0.7:
        raise RuntimeError(f"model diverged at x={params['x']:.3f}")
    return quadratic_value(params, seed) + 0.01 * params["k"]


@loss(name="cliff", parameter_space={"x": (0.0, 1.0)})
def cliff(params, seed):
    """``quadratic`` plus 5 for x > 0.5: a trial there is clearly bad from its first seeds on."""
    _record(params, seed)
    time.sleep(float(os.environ.get("SLURPTUNA_TEST_SLEEP", "0.001")))
    return cliff_value(params, seed)


def cliff_value(params: dict, seed: int) -> float:
    return quadratic_value(params, seed) + (5.0 if params["x"] > 0.5 else 0.0)


@loss(name="cliff_fails_above_0_95", parameter_space={"x": (0.0, 1.0)})
def cliff_fails_above_0_95(params, seed):
    """``cliff``, but raising for x > 0.95: one run can have COMPLETE, PRUNED and FAIL trials."""
    if params["x"] > 0.95:
        raise RuntimeError(f"model diverged at x={params['x']}")
    time.sleep(float(os.environ.get("SLURPTUNA_TEST_SLEEP", "0.001")))
    return cliff_value(params, seed)


@loss(name="fit_and_shape", parameter_space={"x": (0.0, 1.0), "y": (0.0, 1.0)})
def fit_and_shape(params, seed):
    """Two components that pull apart: "fit" is best at x = 0.2, "shape" (maximized) at x = 0.8."""
    noise = math.sin(seed * 1.7) * 0.05
    return {"fit": (params["x"] - 0.2) ** 2 + noise + 0.1 * params["y"], "shape": 1 - (params["x"] - 0.8) ** 2 + noise}
