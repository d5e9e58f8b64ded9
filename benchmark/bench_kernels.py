"""Pure-Python kernels shared by the slurptuna losses and the hand-written baselines.

No slurptuna import here: the hand-written sbatch tasks of case 4 import only this.
"""

WORK_ITERATIONS = 9000  # about 1 ms of pure-Python work per seed here (run.py reports the measured time)


def work(x: float, seed: int, iterations: int = WORK_ITERATIONS) -> float:
    """A CPU-bound ~1 ms stochastic loss: an LCG walk from the seed, plus a bowl in x."""
    state = (seed * 2654435761 + 12345) % 2147483648
    acc = 0
    for _ in range(iterations):
        state = (state * 1103515245 + 12345) % 2147483648
        acc += state >> 20
    return (x - 0.3) ** 2 + acc / (iterations * 2048.0) * 0.01
