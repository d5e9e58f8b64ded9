"""The benchmark's losses, registered at module level so workers can import them."""

import time

from bench_kernels import work

from slurptuna import loss


@loss(name="bench_noop", parameter_space={"x": (0.0, 1.0)})
def bench_noop(params, seed):
    """Framework overhead: no work at all."""
    return 0.0


@loss(name="bench_work", parameter_space={"x": (0.0, 1.0)})
def bench_work(params, seed):
    """About 1 ms of pure-Python work per seed (holds the GIL)."""
    return work(params["x"], seed)


@loss(name="bench_sleep", parameter_space={"x": (0.0, 1.0)})
def bench_sleep(params, seed):
    """5 ms of waiting per seed, no CPU: array tasks that last a while without loading the machine."""
    time.sleep(0.005)
    return params["x"]


@loss(name="bench_sleep_wide", parameter_space={"x": (0.0, 1.0)})
def bench_sleep_wide(params, seed):
    """0.6 s of waiting per seed (case 12): 400 seeds over 4 threads = a 60 s task that loads no core."""
    time.sleep(0.6)
    return params["x"]


@loss(name="bench_sleep_wide_quick", parameter_space={"x": (0.0, 1.0)})
def bench_sleep_wide_quick(params, seed):
    """0.1 s of waiting per seed (case 12 --quick): 400 seeds over 4 threads = a 10 s task."""
    time.sleep(0.1)
    return params["x"]
