"""Losses the tests run through the real worker path: workers import this module by name."""

from __future__ import annotations

import contextlib
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


# ---- what array libraries return for one number: taken as that number, without importing them


class FloatLike:
    """Has ``__float__`` and nothing else (a ``decimal.Decimal``, a unit-carrying quantity)."""

    def __init__(self, value: float) -> None:
        self.value = value

    def __float__(self) -> float:
        return self.value


class TensorLike:
    """Like a torch tensor: one element gives its number by ``.item()``, more elements raise."""

    def __init__(self, *values: float) -> None:
        self.values = values

    def item(self) -> float:
        if len(self.values) != 1:
            raise RuntimeError(f"a Tensor with {len(self.values)} elements cannot be converted to Scalar")
        return self.values[0]


@loss(name="zero_dimensional_array", parameter_space={"x": (0.0, 1.0)})
def zero_dimensional_array(params, seed):
    import numpy as np

    return np.array(params["x"] + seed)  # shape (), not a numpy scalar


@loss(name="one_element_array", parameter_space={"x": (0.0, 1.0)})
def one_element_array(params, seed):
    import numpy as np

    return np.array([params["x"] + seed])


@loss(name="float_like", parameter_space={"x": (0.0, 1.0)})
def float_like(params, seed):
    return FloatLike(params["x"] + seed)


@loss(name="tensor_like", parameter_space={"x": (0.0, 1.0)})
def tensor_like(params, seed):
    return TensorLike(params["x"] + seed)


@loss(name="arrays_in_a_dict_and_a_list", parameter_space={"x": (0.0, 1.0)})
def arrays_in_a_dict_and_a_list(params, seed):
    import numpy as np

    if seed % 2:
        return [np.array(params["x"]), TensorLike(float(seed)), FloatLike(2.0 * seed)]
    return {"fit": np.array(params["x"]), "size": TensorLike(float(seed)), "rest": np.array([2.0 * seed])}


@loss(name="larger_array", parameter_space={"x": (0.0, 1.0)})
def larger_array(params, seed):
    import numpy as np

    return np.array([params["x"], seed])


# ---- a disk that fills up while the run writes it


def fill_the_disk(path: str) -> None:
    """Append to ``path`` until its file system has no byte left (ENOSPC)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    try:
        for size in (1 << 16, 1 << 12, 1):
            with contextlib.suppress(OSError):  # ENOSPC: go on with smaller writes, to the last byte
                while True:
                    os.write(fd, b"\0" * size)
    finally:
        os.close(fd)


@loss(name="fills_the_disk", parameter_space={"x": (0.0, 1.0)})
def fills_the_disk(params, seed, context):
    """Fills $SLURPTUNA_TEST_BALLAST's disk once, as a model writing output might, then returns as ``quadratic``.

    It fills at seed $SLURPTUNA_TEST_FILL_SEED (0) of trial $SLURPTUNA_TEST_FILL_TRIAL (unset: the
    first trial that gets there), $SLURPTUNA_TEST_FILL_AFTER (0) seconds after the call; every other
    call sleeps $SLURPTUNA_TEST_SLEEP (0) seconds.
    """
    _record(params, seed)
    trial = os.environ.get("SLURPTUNA_TEST_FILL_TRIAL")
    at_seed = seed == int(os.environ.get("SLURPTUNA_TEST_FILL_SEED", "0"))
    if at_seed and trial in (None, str(context["trial_number"])) and _first_time("filled"):
        time.sleep(float(os.environ.get("SLURPTUNA_TEST_FILL_AFTER", "0")))
        fill_the_disk(os.environ["SLURPTUNA_TEST_BALLAST"])
    else:
        time.sleep(float(os.environ.get("SLURPTUNA_TEST_SLEEP", "0")))
    return quadratic_value(params, seed)


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


@loss(name="front_loaded_noise", parameter_space={"x": (0.0, 1.0)})
def front_loaded_noise(params, seed):
    """Noise +-2 on seeds 0-39 only: the first chunks overstate the std, so a trial's later chunks
    run past what its standard error needs (and are cancelled); sleeps SLURPTUNA_TEST_SLEEP per seed."""
    _record(params, seed)
    time.sleep(float(os.environ.get("SLURPTUNA_TEST_SLEEP", "0")))
    return (params["x"] - 0.3) ** 2 + ((2.0 if seed % 2 else -2.0) if seed < 40 else 0.0)


def _draw(seed: int, salt: float) -> float:
    """A deterministic pseudo-random number in [-1, 1) per (seed, salt)."""
    return (math.sin(seed * 12.9898 + salt * 78.233) * 43758.5453) % 2.0 - 1.0


@loss(name="racing_model", parameter_space={"x": (0.0, 1.0), "noise": (0.0, 3.0), "luck": (-1.0, 0.0)})
def racing_model(params, seed):
    """(x - 0.3)^2, noise every trial shares by seed, noise of its own (``noise`` wide: how many seeds
    its standard error needs), and ``luck`` added to seeds 0-39 only (a challenger that looks better
    than it is); seeds 40 and up sleep SLURPTUNA_TEST_SLEEP (a race's chunks, for a test to kill)."""
    _record(params, seed)
    if seed >= 40:
        time.sleep(float(os.environ.get("SLURPTUNA_TEST_SLEEP", "0")))
    own = params["noise"] * _draw(seed, params["x"])
    return (params["x"] - 0.3) ** 2 + 0.5 * _draw(seed, 0.0) + own + (params["luck"] if seed < 40 else 0.0)
