"""Cases 8 and 12's hand-written baseline task: what a user would write without slurptuna.

    python handwritten.py chunk TRIAL_DIR CHUNK_SIZE   (an array task: chunk = $SLURM_ARRAY_TASK_ID)
    python handwritten.py sleep TRIAL_DIR CHUNK_SIZE SECONDS THREADS
                                                       (case 12: each seed sleeps SECONDS, THREADS at once)
    python handwritten.py reduce TRIAL_DIR N_CHUNKS

Each chunk task sums the same loss over its seeds and writes one small JSON file;
the reduce job adds them up into result.json. Imports only the stdlib and the kernel.
"""

import json
import os
import sys
import time
from concurrent.futures import ThreadPoolExecutor

from bench_kernels import work


def write_json(path, record):
    tmp = f"{path}.{os.getpid()}.tmp"
    with open(tmp, "w") as f:
        json.dump(record, f)
    os.replace(tmp, path)


def main(argv):
    kind, trial_dir, number = argv[0], argv[1], int(argv[2])
    if kind == "chunk":
        index = int(os.environ["SLURM_ARRAY_TASK_ID"])
        with open(os.path.join(trial_dir, "params.json")) as f:
            x = json.load(f)["x"]
        seeds = range(index * number, (index + 1) * number)
        total = sum(work(x, seed) for seed in seeds)
        write_json(os.path.join(trial_dir, f"chunk_{index}.json"), {"sum": total, "count": len(seeds)})
        return 0
    if kind == "sleep":
        index = int(os.environ["SLURM_ARRAY_TASK_ID"])
        seconds, threads = float(argv[3]), int(argv[4])
        with open(os.path.join(trial_dir, "params.json")) as f:
            x = json.load(f)["x"]

        def one(seed):
            time.sleep(seconds)
            return x

        started = time.perf_counter()
        seeds = range(index * number, (index + 1) * number)
        with ThreadPoolExecutor(max_workers=threads) as pool:
            total = sum(pool.map(one, seeds))
        elapsed = time.perf_counter() - started
        record = {"sum": total, "count": len(seeds), "elapsed_seconds": elapsed, "finished_at": time.time()}
        write_json(os.path.join(trial_dir, f"chunk_{index}.json"), record)
        return 0
    parts = []
    for index in range(number):
        with open(os.path.join(trial_dir, f"chunk_{index}.json")) as f:
            parts.append(json.load(f))
    mean = sum(p["sum"] for p in parts) / sum(p["count"] for p in parts)
    write_json(os.path.join(trial_dir, "result.json"), {"mean": mean})
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
