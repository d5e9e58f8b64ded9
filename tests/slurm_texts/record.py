"""Record one Slurm command's answer as a fixture of this directory (run by hand, not by tests).

    python tests/slurm_texts/record.py NAME "how it was set up" -- CMD [ARGS...]

Runs CMD (timeout $RECORD_TIMEOUT, default 120 s like slurptuna's `_run_slurm`; a command
that times out is recorded with exit code 124 as `timeout` gives), and writes NAME.json: the
command, exit code, stdout, stderr, seconds taken, Slurm's version and the setup text.
"""

import json
import os
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent


def main(name: str, how: str, argv: list[str]) -> None:
    version = subprocess.run(["sbatch", "--version"], capture_output=True, text=True).stdout.strip()
    timeout = float(os.environ.get("RECORD_TIMEOUT", "120"))
    start = time.monotonic()
    try:
        process = subprocess.run(argv, capture_output=True, text=True, timeout=timeout)
        returncode, stdout, stderr = process.returncode, process.stdout, process.stderr
    except subprocess.TimeoutExpired as e:  # exit 124, as timeout(1) gives
        returncode = 124
        stdout = (e.stdout or b"").decode() if isinstance(e.stdout, bytes) else (e.stdout or "")
        stderr = (e.stderr or b"").decode() if isinstance(e.stderr, bytes) else (e.stderr or "")
    seconds = round(time.monotonic() - start, 1)
    record = {
        "recorded": f"{version} (slurm/local-slurm start --accounting), {time.strftime('%Y-%m-%d')}: {how}",
        "command": argv,
        "returncode": returncode,
        "seconds": seconds,
        "stdout": stdout,
        "stderr": stderr,
    }
    (HERE / f"{name}.json").write_text(json.dumps(record, indent=2) + "\n")
    print(f"{name}: rc={returncode} in {seconds} s\n{stderr}{stdout}")


if __name__ == "__main__":
    split = sys.argv.index("--")
    main(sys.argv[1], sys.argv[2], sys.argv[split + 1 :])
