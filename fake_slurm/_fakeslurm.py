#!/usr/bin/env -S python3 -S
"""Shared core of the fake Slurm commands in this directory (see README.md).

The executables `sbatch`, `squeue`, `scancel`, `sacct` and `scontrol` only call
`main(<name>, argv)`. Jobs run as real processes, driven by one detached
runner per submission (`python3 _fakeslurm.py run JOBID`). All state lives in
$FAKE_SLURM_DIR: `jobs/<id>.json` (one file per submission, written
atomically under `jobs/<id>.lock`), counters, fault markers, run slots and the
`submissions.jsonl` / `calls.jsonl` logs.
"""

import fcntl
import itertools
import json
import math
import os
import re
import signal
import sys
import time
from contextlib import contextmanager

POLL = 0.02
KILL_WAIT = 1.0
NO_TASK = 4294967294  # what real Slurm substitutes for %a in a non-array job
ACTIVE = ("PENDING", "RUNNING", "COMPLETING")
ENDED = ("COMPLETED", "FAILED", "TIMEOUT", "CANCELLED")
SHORT = {
    "PENDING": "PD",
    "RUNNING": "R",
    "COMPLETING": "CG",
    "COMPLETED": "CD",
    "FAILED": "F",
    "TIMEOUT": "TO",
    "CANCELLED": "CA",
}
INVALID_ID = "slurm_load_jobs error: Invalid job id specified"
SUBMIT_FAILED = "Batch job submission failed: "


class Fail(Exception):
    """A command error: the message goes to stderr and the command exits 1."""


# ---------------------------------------------------------------- state dir


def state_dir():
    d = os.environ.get("FAKE_SLURM_DIR") or "/tmp/fake_slurm_state"
    os.makedirs(os.path.join(d, "jobs"), exist_ok=True)
    return d


def path(*parts):
    return os.path.join(state_dir(), *parts)


def env_num(name, default, kind=float):
    value = os.environ.get(name, "").strip()
    return kind(value) if value else default


def env_list(name):
    return [x.strip() for x in os.environ.get(name, "").split(",") if x.strip()]


@contextmanager
def flocked(file):
    fd = os.open(file, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield fd
    finally:
        os.close(fd)


def bump(name, n=1, start=0):
    """Add n to the counter file `name`; return its value before."""
    with flocked(path(name)) as fd:
        value = int(os.pread(fd, 32, 0) or start)
        os.ftruncate(fd, 0)
        os.pwrite(fd, str(value + n).encode(), 0)
    return value


def write_json(file, obj):
    tmp = f"{file}.{os.getpid()}.tmp"
    with open(tmp, "w") as f:
        json.dump(obj, f)
    os.replace(tmp, file)


def append_log(name, record):
    record["time"] = time.time()
    fd = os.open(path(name), os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, (json.dumps(record) + "\n").encode())  # one write: atomic
    finally:
        os.close(fd)


def load_job(jid):
    try:
        with open(path("jobs", f"{jid}.json")) as f:
            return json.load(f)
    except FileNotFoundError:
        return None


def all_jobs():
    ids = [int(n[:-5]) for n in os.listdir(path("jobs")) if n.endswith(".json")]
    return [j for j in map(load_job, sorted(ids)) if j]


@contextmanager
def job_update(jid):
    """Load job `jid` under its lock, yield it, save it if it was changed."""
    with flocked(path("jobs", f"{jid}.lock")):
        job = load_job(jid)
        before = json.dumps(job)
        yield job
        if json.dumps(job) != before:
            write_json(path("jobs", f"{jid}.json"), job)


# ---------------------------------------------------------------- parsing


def parse_args(argv, spec, allow_unknown=False, stop_at_positional=False):
    """getopt-like parsing. spec maps '-x'/'--xx' to (dest, takes_value).

    Returns (opts, positionals). With allow_unknown, unknown `--x=y` and `--x`
    are recorded under 'x'. With stop_at_positional, everything from the first
    positional on is returned as positionals (sbatch's script and its args).
    """
    opts, pos, i = {}, [], 0
    while i < len(argv):
        arg = argv[i]
        i += 1
        if arg == "--":
            pos += argv[i:]
            break
        if arg.startswith("--"):
            name, eq, value = arg.partition("=")
            if name not in spec:
                if not allow_unknown:
                    raise Fail(f"unrecognized option '{arg}'")
                opts[name[2:]] = value if eq else True
                continue
            dest, takes = spec[name]
            if takes and not eq:
                if i >= len(argv):
                    raise Fail(f"option '{name}' requires an argument")
                value, i = argv[i], i + 1
            opts[dest] = value if takes else True
        elif arg.startswith("-") and len(arg) > 1:
            for k, letter in enumerate(arg[1:], 1):
                if "-" + letter not in spec:
                    raise Fail(f"invalid option -- '{letter}'")
                dest, takes = spec["-" + letter]
                if not takes:
                    opts[dest] = True
                    continue
                value = arg[k + 1 :]
                if not value:
                    if i >= len(argv):
                        raise Fail(f"option requires an argument -- '{letter}'")
                    value, i = argv[i], i + 1
                opts[dest] = value
                break
        else:
            pos.append(arg)
            if stop_at_positional:
                pos += argv[i:]
                break
    return opts, pos


def make_spec(*entries):
    """make_spec(("jobs", True, "-j", "--jobs"), ...) -> parse_args spec."""
    return {alias: (dest, takes) for dest, takes, *aliases in entries for alias in aliases}


def parse_array(spec):
    """'0-9,12,15-20:2%4' -> ([0, ..., 20], 4). Raises ValueError."""
    spec, _, throttle = spec.partition("%")
    ids = set()
    for part in spec.split(","):
        m = re.fullmatch(r"(\d+)(?:-(\d+)(?::(\d+))?)?", part.strip())
        if not m:
            raise ValueError(part)
        first, last, step = int(m[1]), int(m[2] or m[1]), int(m[3] or 1)
        if last < first or step < 1:
            raise ValueError(part)
        ids.update(range(first, last + 1, step))
    return sorted(ids), (int(throttle) if throttle else None)


def format_ranges(ids):
    """[0, 1, 2, 5, 7, 8] -> '0-2,5,7-8' (like Slurm's bit_fmt)."""
    out, ids = [], sorted(ids)
    k = 0
    while k < len(ids):
        j = k
        while j + 1 < len(ids) and ids[j + 1] == ids[j] + 1:
            j += 1
        out.append(str(ids[k]) if j == k else f"{ids[k]}-{ids[j]}")
        k = j + 1
    return ",".join(out)


def parse_time(text):
    """Slurm --time (M, M:S, H:M:S, D-H, D-H:M, D-H:M:S) -> minutes or None."""
    text = text.strip()
    if text.upper() in ("INFINITE", "UNLIMITED", "-1"):
        return None
    m = re.fullmatch(r"(?:(\d+)-)?(\d+)(?::(\d+))?(?::(\d+))?", text)
    if not m:
        raise ValueError(text)
    days, a, b, c = m.groups()
    if days is not None:
        secs = ((int(days) * 24 + int(a)) * 60 + int(b or 0)) * 60 + int(c or 0)
    elif c is not None:
        secs = (int(a) * 60 + int(b)) * 60 + int(c)
    elif b is not None:
        secs = int(a) * 60 + int(b)
    else:
        secs = int(a) * 60
    return math.ceil(secs / 60) or None  # Slurm rounds up to minutes; 0 = none


def fmt_duration(secs, compact=False):
    """Seconds -> 'D-HH:MM:SS' / 'HH:MM:SS' (sacct), or 'M:SS' etc (squeue)."""
    days, rest = divmod(int(max(secs, 0)), 86400)
    hours, rest = divmod(rest, 3600)
    mins, s = divmod(rest, 60)
    if days:
        return f"{days}-{hours:02d}:{mins:02d}:{s:02d}"
    if compact:
        return f"{hours}:{mins:02d}:{s:02d}" if hours else f"{mins}:{s:02d}"
    return f"{hours:02d}:{mins:02d}:{s:02d}"


def fmt_stamp(t):
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(t)) if t else "Unknown"


def fmt_filename(pattern, job, task):
    """Substitute %A %a %j %x %u %N %J %% (with optional zero padding)."""
    values = {
        "A": job["job_id"],
        "j": task["job_id"],
        "J": task["job_id"],
        "a": NO_TASK if task["task_id"] is None else task["task_id"],
        "x": job["name"],
        "u": job["user"],
        "N": "localhost",
        "%": "%",
    }

    def sub(m):
        value = values[m[2]]
        return str(value).zfill(int(m[1])) if m[1] and isinstance(value, int) else str(value)

    return re.sub(r"%(\d*)([AajJxuN%])", sub, pattern)


# ---------------------------------------------------------------- jobs and rows


def ended(task):
    return task["state"] in ENDED


def purged(task, now):
    return ended(task) and task["end"] + env_num("FAKE_SLURM_MIN_JOB_AGE", 300.0) < now


def resolve(ref, jobs):
    """Job id reference ('A', 'A_i', 'A_[1-3,7]' or a task's own id) -> [(job, task)]."""
    m = re.fullmatch(r"(\d+)(?:_(\d+|\[[\d,-]+\]))?", ref.strip())
    if not m:
        return []
    jid = int(m[1])
    tids = None
    if m[2] is not None:
        tids = set()
        for piece in m[2].strip("[]").split(","):
            first, _, last = piece.partition("-")
            tids.update(range(int(first), int(last or first) + 1))
    out = []
    for job in jobs:
        for task in job["tasks"]:
            if tids is not None:
                hit = job["job_id"] == jid and task["task_id"] in tids
            else:
                hit = jid in (job["job_id"], task["job_id"])
            if hit:
                out.append((job, task))
    return out


def select(refs, jobs, states, strict=True, now=None):
    """Pick the (job, task) pairs named by refs (all if None) in `states`.

    With `now`, tasks purged by then don't exist. With strict, a single ref
    naming nothing raises the real 'Invalid job id' error (squeue, scontrol).
    """
    if now is not None:
        jobs = [dict(j, tasks=[t for t in j["tasks"] if not purged(t, now)]) for j in jobs]
    if refs is None:
        pairs = [(j, t) for j in jobs for t in j["tasks"]]
    else:
        pairs = [p for ref in refs for p in resolve(ref, jobs)]
        if strict and len(refs) == 1 and not pairs:
            raise Fail(INVALID_ID)
    seen, out = set(), []
    for job, task in pairs:
        if task["job_id"] not in seen and task["state"] in states:
            seen.add(task["job_id"])
            out.append((job, task))
    return out


def rows(pairs, expand=False):
    """Display records: one per started task; the never-started tasks of an
    array collapse into one `A_[ranges%N]` record per state (unless expand)."""
    by_job = {}
    for job, task in pairs:
        by_job.setdefault(job["job_id"], (job, []))[1].append(task)
    out = []
    for jid in sorted(by_job):
        job, tasks = by_job[jid]
        waiting = {}
        for task in sorted(tasks, key=lambda t: t["task_id"] or 0):
            if job["array"] and task["start"] is None and not expand:
                waiting.setdefault(task["state"], []).append(task)
            else:
                out.append(row(job, task))
        started = any(t["start"] is not None for t in job["tasks"])
        for group in waiting.values():
            r = row(job, group[0])
            r["A"] = str(jid)
            if len(group) == 1 and started:  # the array's last pending task shows as itself
                out.append(r)
                continue
            throttle = f"%{job['throttle']}" if job["throttle"] else ""
            r["K"] = f"{format_ranges(t['task_id'] for t in group)}{throttle}"
            r["i"] = f"{jid}_[{r['K']}]"
            out.append(r)
    return out


def row(job, task):
    """All printable fields of one record; keys are squeue letters."""
    now = time.time()
    start, end, state = task["start"], task["end"], task["state"]
    used = (end or now) - start if start else 0
    tid = task["task_id"]
    reason = task["reason"]
    limit = job["time_limit_min"]
    return {
        "i": f"{job['job_id']}_{tid}" if job["array"] else str(job["job_id"]),
        "A": str(task["job_id"]),
        "F": str(job["job_id"]),
        "K": str(tid) if job["array"] else "N/A",
        "j": job["name"],
        "T": state,
        "t": SHORT[state],
        "r": reason,
        "R": f"({reason})" if state == "PENDING" or (ended(task) and reason != "None") else "localhost",
        "P": job["partition"],
        "u": job["user"],
        "q": job["qos"] or "normal",
        "a": job["account"] or "(null)",
        "M": fmt_duration(used, compact=True),
        "l": fmt_duration(limit * 60, compact=True) if limit else "UNLIMITED",
        "D": "1",
        "C": str(job["cpus"]),
        "N": "localhost" if start else "",
        "Z": job["cwd"],
        "o": job["command"],
        "S": fmt_stamp(start),
        "e": fmt_stamp(end),
        "V": fmt_stamp(job["submit"]),
        "E": job["dependency"] or "(null)",
        "k": job["options"].get("comment") or "(null)",
        # sacct extras
        "elapsed": fmt_duration(used),
        "exitcode": f"{task['exit_code']}:{task['signal']}",
        "cancel_by": task["cancel_by"],
        "end": end,
    }


# ---------------------------------------------------------------- sbatch

SBATCH_SPEC = make_spec(
    ("array", True, "-a", "--array"),
    ("job-name", True, "-J", "--job-name"),
    ("cpus-per-task", True, "-c", "--cpus-per-task"),
    ("time", True, "-t", "--time"),
    ("mem-per-cpu", True, "--mem-per-cpu"),
    ("mem", True, "--mem"),
    ("qos", True, "-q", "--qos"),
    ("partition", True, "-p", "--partition"),
    ("account", True, "-A", "--account"),
    ("output", True, "-o", "--output"),
    ("error", True, "-e", "--error"),
    ("input", True, "-i", "--input"),
    ("dependency", True, "-d", "--dependency"),
    ("kill-on-invalid-dep", True, "--kill-on-invalid-dep"),
    ("export", True, "--export"),
    ("chdir", True, "-D", "--chdir"),
    ("ntasks", True, "-n", "--ntasks"),
    ("nodes", True, "-N", "--nodes"),
    ("wrap", True, "--wrap"),
    ("open-mode", True, "--open-mode"),
    ("mail-type", True, "--mail-type"),
    ("mail-user", True, "--mail-user"),
    ("comment", True, "--comment"),
    ("constraint", True, "-C", "--constraint"),
    ("gres", True, "--gres"),
    ("gpus", True, "-G", "--gpus"),
    ("nodelist", True, "-w", "--nodelist"),
    ("exclude", True, "-x", "--exclude"),
    ("signal", True, "--signal"),
    ("begin", True, "-b", "--begin"),
    ("licenses", True, "-L", "--licenses"),
    ("reservation", True, "--reservation"),
    ("parsable", False, "--parsable"),
    ("wait", False, "-W", "--wait"),
    ("quiet", False, "-Q", "--quiet"),
    ("verbose", False, "-v", "--verbose"),
    ("hold", False, "-H", "--hold"),
    ("requeue", False, "--requeue"),
    ("no-requeue", False, "--no-requeue"),
    ("exclusive", False, "--exclusive"),
    ("oversubscribe", False, "-s", "--oversubscribe"),
)


def read_script(opts, pos):
    """-> (script text, its args, command shown by squeue)."""
    if "wrap" in opts:
        text = f"#!/bin/sh\n# This script was created by sbatch --wrap.\n\n{opts['wrap']}\n"
        return text, pos, "(null)"
    if pos:
        try:
            with open(pos[0]) as f:
                text = f.read()
        except OSError:
            raise Fail(f"Unable to open file {pos[0]}") from None
        return text, pos[1:], os.path.abspath(pos[0])
    return sys.stdin.read(), [], "(null)"


def script_directives(text):
    """The #SBATCH options at the top of a batch script."""
    import shlex

    args = []
    for line in text.splitlines()[1:]:
        if line.startswith("#SBATCH"):
            args += shlex.split(line[7:], comments=True)
        elif line.strip() and not line.startswith("#"):
            break
    return parse_args(args, SBATCH_SPEC, allow_unknown=True)[0]


def parse_dependency(text, jobs):
    """'afterok:12:13_2,afterany:14' -> [[kind, job file id, [task indexes]]]."""
    deps = []
    for part in text.split(","):
        kind, _, refs = part.partition(":")
        if kind not in ("afterok", "afterany", "afternotok") or not refs:
            raise Fail(SUBMIT_FAILED + "Job dependency problem")
        for ref in refs.split(":"):
            found = resolve(ref, jobs)
            if not found:
                raise Fail(SUBMIT_FAILED + "Job dependency problem")
            for job, task in found:
                deps.append([kind, job["job_id"], job["tasks"].index(task)])
    return deps


# ---------------------------------------------------------------- a site's limits
#
# As measured on Slurm 22.05 (tests/slurm_texts/*max_submit*, *max_job_count*): every array
# task counts as one job toward MaxSubmitJobs and MaxJobCount, pending or running, throttled
# or not, although squeue shows an array's pending tasks as one line; an array that would
# pass a submit limit is refused whole, at once. A full job table (MaxJobCount; ended jobs
# count until MinJobAge purges them) makes sbatch sleep 1, 2, ... 15 s and retry.

POLICY = (
    "Batch job submission failed: Job violates accounting/QOS policy (job submit limit, user's size and/or time limits)"
)
ASSOC_KEYS = ("MaxSubmitJobs", "MaxJobs")
QOS_KEYS = ("MaxSubmitJobsPerUser", "MaxJobsPerUser")


def assoc_limits():
    """The user's association limits: FAKE_SLURM_MAX_SUBMIT_JOBS, FAKE_SLURM_MAX_JOBS (None: unlimited)."""
    return {
        "MaxSubmitJobs": env_num("FAKE_SLURM_MAX_SUBMIT_JOBS", None, int),
        "MaxJobs": env_num("FAKE_SLURM_MAX_JOBS", None, int),
    }


def qos_limits():
    """FAKE_SLURM_QOS_LIMITS='capped:MaxSubmitJobsPerUser=5:MaxJobsPerUser=3,short' -> {qos: {key: n}}.

    The QoSes the user has: these and `normal` (without limits unless listed)."""
    out = {"normal": {}}
    for spec in env_list("FAKE_SLURM_QOS_LIMITS"):
        name, *pairs = spec.split(":")
        out[name.strip()] = limits = {}
        for pair in pairs:
            key, _, value = pair.partition("=")
            if key.strip() not in QOS_KEYS or not value.strip().isdigit():
                raise Fail(f"fake_slurm: bad FAKE_SLURM_QOS_LIMITS entry {spec!r} (keys: {', '.join(QOS_KEYS)})")
            limits[key.strip()] = int(value)
    return out


def admit(n_tasks, qos):
    """Check a submission of n_tasks against MaxJobCount and the submit limits, as slurmctld does.

    Returns a lock to hold until the job is written (None when no limit is set, to stay fast), so
    that submissions at once cannot pass a limit together; raises Fail with Slurm's text."""
    max_count = env_num("FAKE_SLURM_MAX_JOB_COUNT", None, int)
    user_limit = qos_limits().get(qos, {}).get("MaxSubmitJobsPerUser")
    assoc_limit = assoc_limits()["MaxSubmitJobs"]
    if max_count is None and user_limit is None and assoc_limit is None:
        return None
    for retry in itertools.count(1):
        fd = os.open(path("admission.lock"), os.O_RDWR | os.O_CREAT, 0o644)
        fcntl.flock(fd, fcntl.LOCK_EX)
        now, user = time.time(), os.environ.get("USER", "root")
        tasks = [(j, t) for j in all_jobs() for t in j["tasks"] if not purged(t, now)]
        if max_count is None or len(tasks) + n_tasks < max_count:
            queued = [j for j, t in tasks if t["state"] in ACTIVE and j["user"] == user]
            in_qos = sum((j["qos"] or "normal") == qos for j in queued)
            for limit, count, name in (
                (user_limit, in_qos, "QOSMaxSubmitJobPerUserLimit"),
                (assoc_limit, len(queued), "AssocMaxSubmitJobLimit"),
            ):
                if limit is not None and count + n_tasks > limit:
                    os.close(fd)
                    raise Fail(f"{name}\nsbatch: error: {POLICY}")
            return fd
        os.close(fd)
        if retry == 16:
            raise Fail(SUBMIT_FAILED + "Resource temporarily unavailable")
        if retry == 1:
            print("sbatch: error: Slurm temporarily unable to accept job, sleeping and retrying", file=sys.stderr)
        time.sleep(retry * env_num("FAKE_SLURM_RETRY_UNIT", 1.0))
        rpc_token("sbatch")  # each retry is another RPC


def submit(argv):
    """Validate, record and start one submission; returns the job dict."""
    call_no = bump("sbatch_calls") + 1
    opts, pos = parse_args(argv, SBATCH_SPEC, allow_unknown=True, stop_at_positional=True)
    text, args, command = read_script(opts, pos)
    if not text.startswith("#!"):
        raise Fail(
            "This does not look like a batch script.  The first\n"
            "sbatch: error: line must start with #! followed by the path"
            " to an interpreter.\nsbatch: error: For instance: #!/bin/sh"
        )
    opts = {**script_directives(text), **opts}
    fail = os.environ.get("FAKE_SLURM_SBATCH_FAIL")
    calls = env_list("FAKE_SLURM_SBATCH_FAIL_CALLS")
    if fail and (not calls or str(call_no) in calls):
        raise Fail(SUBMIT_FAILED + fail)
    qos = opts.get("qos")
    reject = env_list("FAKE_SLURM_REJECT_QOS")
    if qos and ("*" in reject or qos in reject):
        raise Fail(SUBMIT_FAILED + "Invalid qos specification")
    task_ids, throttle = [None], None
    if "array" in opts:
        try:
            task_ids, throttle = parse_array(opts["array"])
        except ValueError:
            raise Fail("Invalid --array specification") from None
        if task_ids[-1] >= env_num("FAKE_SLURM_MAX_ARRAY_SIZE", 1001, int):
            raise Fail(SUBMIT_FAILED + "Invalid job array specification")
    try:
        minutes = parse_time(opts["time"]) if "time" in opts else None
    except ValueError:
        raise Fail("Invalid --time specification") from None
    cpus = int(opts.get("cpus-per-task", 1))
    if cpus * int(opts.get("ntasks", 1)) > env_num("FAKE_SLURM_NODE_CPUS", 8, int):
        raise Fail(SUBMIT_FAILED + "More processors requested than permitted")
    deps = parse_dependency(opts["dependency"], all_jobs()) if "dependency" in opts else []
    admitted = admit(len(task_ids), qos or "normal")  # a lock held until the job is written

    # Ids as real Slurm hands them out: the array keeps the first id, tasks
    # get the following ones in start order, and the last task keeps the first.
    first = bump("next_job_id", len(task_ids), 1000)
    task_job_ids = [first + 1 + k for k in range(len(task_ids) - 1)] + [first]
    cwd = os.path.abspath(opts.get("chdir", os.getcwd()))
    name = opts.get("job-name") or ("wrap" if "wrap" in opts else os.path.basename(pos[0]) if pos else "sbatch")
    is_array = "array" in opts
    out = opts.get("output") or ("slurm-%A_%a.out" if is_array else "slurm-%j.out")
    err = opts.get("error") or out
    faults = None
    if is_array and os.environ.get("FAKE_SLURM_FAULT_JOBNAME", "") in name:
        faults = {
            "fail": [int(x) for x in env_list("FAKE_SLURM_FAIL_TASKS")],
            "timeout": [int(x) for x in env_list("FAKE_SLURM_TIMEOUT_TASKS")],
            "repeat": os.environ.get("FAKE_SLURM_FAULTS_REPEAT", "0") not in ("", "0"),
        }
    job = {
        "job_id": first,
        "name": name,
        "array": is_array,
        "throttle": throttle,
        "array_spec": opts.get("array"),
        "dependency": opts.get("dependency"),
        "deps": deps,
        "kill_on_invalid_dep": opts.get("kill-on-invalid-dep", "no").lower() in ("yes", "1"),
        "time_limit_min": minutes,
        "time_limit": minutes * 60 * env_num("FAKE_SLURM_TIME_SCALE", 1.0) if minutes else None,
        "cpus": cpus,
        "cpus_given": "cpus-per-task" in opts,
        "partition": opts.get("partition", "debug"),
        "qos": qos,
        "account": opts.get("account"),
        "user": os.environ.get("USER", "root"),
        "cwd": cwd,
        "submit_dir": os.getcwd(),
        "command": command,
        "args": args,
        "script": path("jobs", f"{first}.script"),
        "env": dict(os.environ),
        "append": opts.get("open-mode", "append") == "append",
        "options": opts,
        "faults": faults,
        "max_running": env_num("FAKE_SLURM_MAX_RUNNING", 64, int),
        "max_jobs": assoc_limits()["MaxJobs"],
        "qos_max_jobs": qos_limits().get(qos or "normal", {}).get("MaxJobsPerUser"),
        "submit": time.time(),
        "call_no": call_no,
        "tasks": [],
    }
    for tid, tjid in zip(task_ids, task_job_ids, strict=True):
        task = {
            "task_id": tid,
            "job_id": tjid,
            "state": "PENDING",
            "reason": "Dependency" if deps else "None",
            "exit_code": 0,
            "signal": 0,
            "start": None,
            "end": None,
            "pid": None,
            "cancel_by": None,
            "kill_at": None,
            "timeout": False,
        }
        task["out"] = os.path.join(cwd, fmt_filename(out, job, task))
        task["err"] = os.path.join(cwd, fmt_filename(err, job, task))
        job["tasks"].append(task)
    with open(job["script"], "w") as f:
        f.write(text)
    os.chmod(job["script"], 0o755)
    write_json(path("jobs", f"{first}.json"), job)
    if admitted is not None:
        os.close(admitted)
    import subprocess  # imported here: squeue & co start faster without it

    with open(path("runner.log"), "a") as log:
        subprocess.Popen(
            [sys.executable, "-S", os.path.abspath(__file__), "run", str(first)],
            start_new_session=True,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=log,
            cwd=state_dir(),
        )
    append_log(
        "submissions.jsonl",
        {
            "job_id": first,
            "argv": argv,
            "array_tasks": task_ids if is_array else None,
            "throttle": throttle,
            "dependency": opts.get("dependency"),
            "options": opts,
        },
    )
    return job


def sbatch(argv):
    fault = injected_fault("sbatch")
    if fault and os.environ.get("FAKE_SLURM_SBATCH_FAULT_QUEUES", "0") in ("", "0"):
        append_log("submissions.jsonl", {"job_id": None, "argv": argv, "rejected": fault["stderr"]})
        return answer(fault)
    try:
        job = submit(argv)
    except Fail as e:
        append_log("submissions.jsonl", {"job_id": None, "argv": argv, "rejected": str(e)})
        raise
    if fault:  # the controller queued the job, but sbatch never heard back
        return answer(fault)
    jid = job["job_id"]
    hang, calls = os.environ.get("FAKE_SLURM_SBATCH_HANG"), env_list("FAKE_SLURM_SBATCH_HANG_CALLS")
    if hang and (not calls or str(job["call_no"]) in calls):  # the job is queued, sbatch answers late
        time.sleep(float(hang))
    print(jid if job["options"].get("parsable") else f"Submitted batch job {jid}", flush=True)
    if not job["options"].get("wait"):
        return 0
    while not all(ended(t) for t in load_job(jid)["tasks"]):
        time.sleep(POLL)
    return max(t["exit_code"] or int(t["state"] != "COMPLETED") for t in load_job(jid)["tasks"])


# ---------------------------------------------------------------- runner


def dependency_status(job):
    """'ok', 'wait' or 'never' (afterok on a task that did not complete)."""
    status = "ok"
    for kind, jid, index in job["deps"]:
        task = load_job(jid)["tasks"][index]
        ok = task["state"] == "COMPLETED"
        if not ended(task):
            status = "wait"
        elif (kind == "afterok" and not ok) or (kind == "afternotok" and ok):
            return "never"
    return status


def take_slot(limit, group="slots"):
    """Lock one of `limit` slot files in `group` (a kernel-enforced running cap over all runners)."""
    os.makedirs(path(group), exist_ok=True)
    for k in range(limit):
        fd = os.open(path(group, str(k)), os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return fd
        except BlockingIOError:
            os.close(fd)
    return None


def take_slots(job):
    """The run slots a task of `job` needs (node, QoS MaxJobsPerUser), or the reason it waits."""
    qos_limit = job.get("qos_max_jobs")
    qos_fd = None
    if qos_limit is not None:
        qos_fd = take_slot(qos_limit, f"slots_qos_{job['qos'] or 'normal'}")
        if qos_fd is None:
            return None, "QOSMaxJobsPerUserLimit"
    max_jobs = job.get("max_jobs")
    node_fd = take_slot(min(job["max_running"], max_jobs or job["max_running"]))
    if node_fd is None:
        if qos_fd is not None:
            os.close(qos_fd)
        return None, "AssocMaxJobsLimit" if max_jobs is not None and max_jobs < job["max_running"] else "Resources"
    return [fd for fd in (node_fd, qos_fd) if fd is not None], None


def fault_fires(job, kind, tid):
    faults = job["faults"]
    if not faults or tid not in faults[kind]:
        return False
    if faults["repeat"]:
        return True
    os.makedirs(path("faults"), exist_ok=True)
    try:  # O_EXCL: the first task to create the marker fires the fault
        os.close(os.open(path("faults", f"{kind}_{tid}"), os.O_CREAT | os.O_EXCL))
        return True
    except FileExistsError:
        return False


def task_env(job, task):
    env = {k: v for k, v in job["env"].items() if not k.startswith("SLURM_ARRAY_")}
    env.update(
        SLURM_JOB_ID=str(task["job_id"]),
        SLURM_JOBID=str(task["job_id"]),
        SLURM_JOB_NAME=job["name"],
        SLURM_SUBMIT_DIR=job["submit_dir"],
        SLURM_SUBMIT_HOST="localhost",
        SLURM_JOB_NODELIST="localhost",
        SLURMD_NODENAME="localhost",
        SLURM_NNODES="1",
        SLURM_JOB_NUM_NODES="1",
        SLURM_JOB_PARTITION=job["partition"],
        SLURM_CLUSTER_NAME="fake",
        SLURM_CPUS_ON_NODE=str(job["cpus"]),
        SLURM_JOB_USER=job["user"],
    )
    if job["cpus_given"]:
        env["SLURM_CPUS_PER_TASK"] = str(job["cpus"])
    if job["qos"]:
        env["SLURM_JOB_QOS"] = job["qos"]
    if job["account"]:
        env["SLURM_JOB_ACCOUNT"] = job["account"]
    if job["array"]:
        ids = [t["task_id"] for t in job["tasks"]]
        env.update(
            SLURM_ARRAY_JOB_ID=str(job["job_id"]),
            SLURM_ARRAY_TASK_ID=str(task["task_id"]),
            SLURM_ARRAY_TASK_COUNT=str(len(ids)),
            SLURM_ARRAY_TASK_MIN=str(min(ids)),
            SLURM_ARRAY_TASK_MAX=str(max(ids)),
            SLURM_ARRAY_TASK_STEP="1",
        )
    return env


# ---------------------------------------------------------------- fast launch (FAKE_SLURM_FORK_PYTHON=1)
#
# A task whose batch script only does `exec "$@"` and whose command is
# `<this python> -m slurptuna ARGS` runs as a fork of the runner, which imported
# slurptuna once (with the job's PYTHONPATH): the real worker code runs, without
# paying a new interpreter start (~100 ms) per task. Anything else starts as usual.

_FORK_MODULE = None


def fork_target(job, cmd):
    """The slurptuna argv to run in a fork, or None to start the task normally."""
    if job["env"].get("FAKE_SLURM_FORK_PYTHON", "0") in ("", "0") or cmd[0] != job["script"]:
        return None
    args = cmd[1:]
    if len(args) < 3 or args[1:3] != ["-m", "slurptuna"]:
        return None
    exe = args[0] if os.sep in args[0] else None
    if exe is None or os.path.realpath(exe) != os.path.realpath(sys.executable):
        return None  # another interpreter: its packages may differ
    with open(job["script"]) as f:
        body = [ln.strip() for ln in f.read().splitlines()[1:] if ln.strip() and not ln.lstrip().startswith("#")]
    if body != ['exec "$@"']:
        return None
    try:
        fork_module(job)
    except Exception as e:  # the task itself will show the error
        print(f"fake_slurm: fast launch off, importing slurptuna failed: {e!r}", file=sys.stderr)
        return None
    return args[3:]


def fork_module(job):
    """slurptuna, imported once per runner the way the task's interpreter would find it."""
    global _FORK_MODULE
    if _FORK_MODULE is None:
        if sys.flags.no_site:  # the runner runs with -S; the task's python would load site
            import site

            site.main()
        extra = [p for p in job["env"].get("PYTHONPATH", "").split(os.pathsep) if p]
        sys.path[:0] = [p for p in extra if p not in sys.path]
        import importlib

        _FORK_MODULE = importlib.import_module("slurptuna")
    return _FORK_MODULE


class ForkedTask:
    """The part of Popen the runner uses: pid and poll()."""

    def __init__(self, pid):
        self.pid, self.returncode = pid, None

    def poll(self):
        if self.returncode is None:
            pid, status = os.waitpid(self.pid, os.WNOHANG)
            if pid:
                self.returncode = os.waitstatus_to_exitcode(status)
        return self.returncode


def fork_task(job, task, argv, out_path, err_path, mode):
    """Fork a child that runs `slurptuna.main(argv)` as the task would; returns a ForkedTask."""
    module = fork_module(job)
    env = task_env(job, task)
    same = err_path == out_path
    out_fd = os.open(out_path, os.O_WRONLY | os.O_CREAT | (os.O_APPEND if "a" in mode else os.O_TRUNC), 0o644)
    err_fd = (
        out_fd
        if same
        else os.open(err_path, os.O_WRONLY | os.O_CREAT | (os.O_APPEND if "a" in mode else os.O_TRUNC), 0o644)
    )
    sys.stdout.flush()
    sys.stderr.flush()
    pid = os.fork()
    if pid:
        os.close(out_fd)
        if not same:
            os.close(err_fd)
        return ForkedTask(pid)
    code = 1
    try:  # the child: never returns into the runner
        os.setsid()
        null = os.open(os.devnull, os.O_RDONLY)
        os.dup2(null, 0)
        os.dup2(out_fd, 1)
        os.dup2(err_fd, 2)
        os.closerange(3, 65536)  # like close_fds: no job lock or run slot stays held by a task
        os.chdir(job["cwd"])
        os.environ.clear()
        os.environ.update(env)
        sys.path.insert(0, job["cwd"])  # `python -m` puts the cwd first
        sys.argv = [module.__file__, *argv]
        code = module.main(argv)
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
        if not isinstance(e.code, int) and e.code is not None:
            print(e.code, file=sys.stderr)
    except BaseException:
        import traceback

        traceback.print_exc()
        code = 1
    finally:
        try:
            sys.stdout.flush()
            sys.stderr.flush()
        finally:
            os._exit(code if isinstance(code, int) else 1)


def start_task(job, task, now):
    """Start one task in its own process group; returns the Popen or None."""
    import subprocess

    tid = task["task_id"]
    cmd = [job["script"], *job["args"]]
    if fault_fires(job, "fail", tid):
        cmd = ["/bin/sh", "-c", "echo 'fake_slurm: injected failure' >&2; exit 1"]
    elif fault_fires(job, "timeout", tid):
        cmd = ["/bin/sh", "-c", "while :; do sleep 60; done"]
    task.update(state="RUNNING", reason="None", start=now)
    mode = "ab" if job["append"] else "wb"
    try:
        same = task["err"] == task["out"]
        forked = fork_target(job, cmd)
        if forked is not None:
            proc = fork_task(job, task, forked, task["out"], task["err"], mode)
            task["pid"] = proc.pid
            return proc
        with open(task["out"], mode) as out, open(os.devnull if same else task["err"], mode) as err:
            proc = subprocess.Popen(
                cmd,
                cwd=job["cwd"],
                env=task_env(job, task),
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT if same else err,
                start_new_session=True,
            )
    except OSError as e:
        print(f"fake_slurm: job {task['job_id']}: {e}", file=sys.stderr)
        task.update(state="FAILED", reason="NonZeroExitCode", exit_code=1, end=time.time())
        return None
    task["pid"] = proc.pid
    return proc


def kill_group(pid, sig):
    try:
        os.killpg(pid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def police(job, task, now):
    """Enforce the time limit and the SIGKILL that follows a SIGTERM."""
    if task["kill_at"] is not None:
        if now >= task["kill_at"]:
            kill_group(task["pid"], signal.SIGKILL)
            task["kill_at"] = now + KILL_WAIT
    elif job["time_limit"] is not None and now - task["start"] > job["time_limit"]:
        with open(task["err"], "a") as f:
            f.write(
                f"slurmstepd-localhost: error: *** JOB {task['job_id']} ON localhost "
                f"CANCELLED AT {fmt_stamp(now)} DUE TO TIME LIMIT ***\n"
            )
        task.update(state="COMPLETING", reason="TimeLimit", timeout=True, kill_at=now + KILL_WAIT)
        kill_group(task["pid"], signal.SIGTERM)


def finish(task, rc, now):
    task.update(end=now, pid=None, kill_at=None, exit_code=max(rc, 0), signal=max(-rc, 0))
    if task["cancel_by"] is not None:
        task["state"] = "CANCELLED"
    elif task["timeout"]:
        task["state"] = "TIMEOUT"
    elif rc == 0:
        task["state"] = "COMPLETED"
    else:
        task.update(state="FAILED", reason="NonZeroExitCode")


def run(jid):
    """The runner: wait for dependencies, then run the tasks."""
    while True:
        job = load_job(jid)
        if job is None or not any(t["state"] == "PENDING" for t in job["tasks"]):
            return
        status = dependency_status(job)
        if status == "ok":
            break
        if status == "never":
            with job_update(jid) as job:
                for task in job["tasks"]:
                    if task["state"] == "PENDING":
                        task["reason"] = "DependencyNeverSatisfied"
                        if job["kill_on_invalid_dep"]:
                            task.update(state="CANCELLED", end=time.time())
            return  # a job left PENDING is only ever scancel'ed
        time.sleep(POLL)
    procs, slots = {}, {}
    while True:
        now = time.time()
        with job_update(jid) as job:
            tasks = job["tasks"]
            for k, proc in list(procs.items()):
                rc = proc.poll()
                if rc is None:
                    police(job, tasks[k], now)
                    continue
                kill_group(proc.pid, signal.SIGKILL)  # like Slurm: no process outlives its job
                finish(tasks[k], rc, now)
                del procs[k]
                for fd in slots.pop(k):
                    os.close(fd)
            limit, blocked = job["throttle"] or len(tasks), None  # blocked: why no other task starts now
            for k, task in enumerate(tasks):
                if task["state"] != "PENDING":
                    continue
                if len(procs) >= limit:
                    task["reason"] = "JobArrayTaskLimit"
                    continue
                if blocked is None:
                    fds, blocked = take_slots(job)
                if blocked is not None:
                    task["reason"] = blocked
                    continue
                proc = start_task(job, task, now)
                if proc is None:
                    for fd in fds:
                        os.close(fd)
                else:
                    procs[k], slots[k] = proc, fds
            busy = procs or any(t["state"] == "PENDING" for t in tasks)
        if not busy:
            return
        time.sleep(POLL)


# ---------------------------------------------------------------- squeue

SQUEUE_SPEC = make_spec(
    ("noheader", False, "-h", "--noheader"),
    ("jobs", True, "-j", "--jobs"),
    ("format", True, "-o", "--format"),
    ("states", True, "-t", "--states"),
    ("expand", False, "-r", "--array"),
    ("user", True, "-u", "--user"),
    ("me", False, "--me"),
    ("all", False, "-a", "--all"),
    ("long", False, "-l", "--long"),
    ("name", True, "-n", "--name"),
    ("partition", True, "-p", "--partition"),
    ("qos", True, "-q", "--qos"),
    ("account", True, "-A", "--account"),
    ("sort", True, "-S", "--sort"),
    ("verbose", False, "-v", "--verbose"),
)
HEADERS = {
    "i": "JOBID",
    "A": "JOBID",
    "F": "ARRAY_JOB_ID",
    "K": "ARRAY_TASK_ID",
    "j": "NAME",
    "T": "STATE",
    "t": "ST",
    "r": "REASON",
    "R": "NODELIST(REASON)",
    "P": "PARTITION",
    "u": "USER",
    "q": "QOS",
    "a": "ACCOUNT",
    "M": "TIME",
    "l": "TIME_LIMIT",
    "D": "NODES",
    "C": "CPUS",
    "N": "NODELIST",
    "Z": "WORK_DIR",
    "o": "COMMAND",
    "S": "START_TIME",
    "e": "END_TIME",
    "V": "SUBMIT_TIME",
    "E": "DEPENDENCY",
    "k": "COMMENT",
}
DEFAULT_FORMAT = "%.18i %.9P %.8j %.8u %.2t %.10M %.6D %R"
LONG_FORMAT = "%.18i %.9P %.8j %.8u %.8T %.10M %.9l %.6D %R"


def parse_states(text):
    if text.lower() == "all":
        return ACTIVE + ENDED
    names = {**{s: s for s in SHORT}, **{v: k for k, v in SHORT.items()}}
    try:
        return tuple(names[s.strip().upper()] for s in text.split(","))
    except KeyError as e:
        raise Fail(f"Invalid job state specified: {e.args[0]}") from None


def format_line(fmt, record):
    """Expand a squeue -o format (%[.][-]N<letter>) for one record (or header)."""

    def sub(m):
        if m[0] == "%%":
            return "%"
        right, width, letter = m[1], m[3], m[4]
        value = HEADERS.get(letter, letter) if record is None else record.get(letter, "")
        if width:
            value = value[: int(width)]
            value = value.rjust(int(width)) if right else value.ljust(int(width))
        return value

    return re.sub(r"%%|%(\.)?(-)?(\d*)([a-zA-Z])", sub, fmt)


def squeue(argv):
    calls = bump("squeue_calls") + 1
    if calls <= env_num("FAKE_SLURM_SQUEUE_FAIL", 0, int):
        raise Fail("slurm_load_jobs error: Socket timed out on send/recv operation")
    opts, _ = parse_args(argv, SQUEUE_SPEC)
    states = parse_states(opts["states"]) if "states" in opts else ACTIVE
    refs = opts["jobs"].split(",") if "jobs" in opts else None
    pairs = select(refs, all_jobs(), states, now=time.time())
    if "name" in opts:
        pairs = [(j, t) for j, t in pairs if j["name"] in opts["name"].split(",")]
    fmt = opts.get("format") or (LONG_FORMAT if "long" in opts else DEFAULT_FORMAT)
    lines = [] if "noheader" in opts else [format_line(fmt, None)]
    lines += [format_line(fmt, r) for r in rows(pairs, expand="expand" in opts)]
    if lines:
        print("\n".join(lines))
    return 0


# ---------------------------------------------------------------- scancel

SCANCEL_SPEC = make_spec(
    ("user", True, "-u", "--user"),
    ("me", False, "--me"),
    ("name", True, "-n", "--name"),
    ("state", True, "-t", "--state"),
    ("quiet", False, "-Q", "--quiet"),
    ("verbose", False, "-v", "--verbose"),
    ("batch", False, "-b", "--batch"),
    ("full", False, "-f", "--full"),
    ("partition", True, "-p", "--partition"),
    ("account", True, "-A", "--account"),
    ("qos", True, "-q", "--qos"),
)


def cancel_task(task, now):
    if task["state"] == "PENDING":
        task.update(state="CANCELLED", end=now, cancel_by=os.getuid())
    elif task["state"] in ("RUNNING", "COMPLETING") and task["cancel_by"] is None:
        task.update(state="COMPLETING", cancel_by=os.getuid(), kill_at=now + KILL_WAIT)
        kill_group(task["pid"], signal.SIGTERM)


def scancel(argv):
    opts, refs = parse_args(argv, SCANCEL_SPEC)
    refs = [r for ref in refs for r in ref.split(",") if r]
    if not refs and not {"user", "me", "name"} & set(opts):
        raise Fail("No job identification provided")
    now, jobs, rc = time.time(), all_jobs(), 0
    states = parse_states(opts["state"]) if "state" in opts else ACTIVE + ENDED
    targets = []
    for ref in refs or [None]:
        found = select(None if ref is None else [ref], jobs, states, strict=False, now=now)
        if ref is not None and not found:
            if "quiet" not in opts:
                print(f"scancel: error: Kill job error on job id {ref}: Invalid job id specified", file=sys.stderr)
            rc = 1
        targets += found
    if "name" in opts:
        targets = [(j, t) for j, t in targets if j["name"] == opts["name"]]
    for jid in sorted({j["job_id"] for j, _ in targets}):
        wanted = {t["job_id"] for j, t in targets if j["job_id"] == jid}
        with job_update(jid) as job:
            for task in job["tasks"]:
                if task["job_id"] in wanted:
                    cancel_task(task, now)
    return rc


# ---------------------------------------------------------------- sacct

SACCT_SPEC = make_spec(
    ("allocations", False, "-X", "--allocations"),
    ("noheader", False, "-n", "--noheader"),
    ("parsable2", False, "-P", "--parsable2"),
    ("parsable", False, "-p", "--parsable"),
    ("jobs", True, "-j", "--jobs"),
    ("format", True, "-o", "--format"),
    ("state", True, "-s", "--state"),
    ("user", True, "-u", "--user"),
    ("allusers", False, "-a", "--allusers"),
    ("starttime", True, "-S", "--starttime"),
    ("endtime", True, "-E", "--endtime"),
    ("duplicates", False, "-D", "--duplicates"),
    ("name", True, "--name"),
    ("units", True, "--units"),
    ("long", False, "-l", "--long"),
)
SACCT_FIELDS = {  # name: (header, width, function of (record, step))
    "jobid": ("JobID", 12, lambda r, s: r["i"] + s),
    "jobidraw": ("JobIDRaw", 12, lambda r, s: r["A"] + s),
    "jobname": ("JobName", 10, lambda r, s: s[1:] or r["j"]),
    "state": ("State", 10, lambda r, s: sacct_state(r, s)),
    "exitcode": ("ExitCode", 8, lambda r, s: "0:0" if s == ".extern" else r["exitcode"]),
    "derivedexitcode": ("DerivedExitCode", 10, lambda r, s: "0:0"),
    "elapsed": ("Elapsed", 10, lambda r, s: r["elapsed"]),
    "start": ("Start", 19, lambda r, s: r["S"]),
    "end": ("End", 19, lambda r, s: r["e"]),
    "submit": ("Submit", 19, lambda r, s: r["V"]),
    "timelimit": ("Timelimit", 10, lambda r, s: "" if s else r["l"]),
    "partition": ("Partition", 10, lambda r, s: "" if s else r["P"]),
    "account": ("Account", 10, lambda r, s: r["a"]),
    "qos": ("QOS", 10, lambda r, s: r["q"]),
    "alloccpus": ("AllocCPUS", 10, lambda r, s: r["C"]),
    "ncpus": ("NCPUS", 10, lambda r, s: r["C"]),
    "nodelist": ("NodeList", 15, lambda r, s: r["N"] or "None assigned"),
    "reason": ("Reason", 10, lambda r, s: r["r"]),
    "user": ("User", 9, lambda r, s: r["u"]),
    "workdir": ("WorkDir", 20, lambda r, s: r["Z"]),
    "arrayjobid": ("ArrayJobID", 12, lambda r, s: r["F"] if r["K"] != "N/A" else ""),
    "arraytaskid": ("ArrayTaskID", 12, lambda r, s: r["K"] if r["K"] != "N/A" else ""),
}


def sacct_state(record, step):
    state = "COMPLETED" if step == ".extern" and record["T"] in ENDED else record["T"]
    if state == "COMPLETING":
        state = "RUNNING"
    if state == "CANCELLED" and not step and record["cancel_by"] is not None:
        return f"CANCELLED by {record['cancel_by']}"
    return state


def sacct(argv):
    if os.environ.get("FAKE_SLURM_NO_ACCOUNTING", "0") not in ("", "0"):
        raise Fail("Slurm accounting storage is disabled")
    opts, _ = parse_args(argv, SACCT_SPEC)
    fields = []
    for spec in (opts.get("format") or "jobid,jobname,partition,account,alloccpus,state,exitcode").split(","):
        name, _, width = spec.strip().lower().partition("%")
        if name not in SACCT_FIELDS:
            raise Fail(f'Invalid field requested: "{spec}"')
        header, default, get = SACCT_FIELDS[name]
        fields.append((header, int(width) if width else default, get))
    refs = opts["jobs"].split(",") if "jobs" in opts else None
    states = parse_states(opts["state"]) if "state" in opts else ACTIVE + ENDED
    now, lag = time.time(), env_num("FAKE_SLURM_SACCT_LAG", 0.0)
    pairs = select(refs, all_jobs(), states, strict=False)  # accounting never purges
    records = []
    for r in rows(pairs):
        if r["T"] in ENDED and r["end"] and r["end"] > now - lag:
            r.update(T="RUNNING", exitcode="0:0")  # accounting lags behind squeue
        records.append((r, ""))
        if "allocations" not in opts and r["N"]:
            records += [(r, ".batch"), (r, ".extern")]
    sep = "|" if "parsable2" in opts or "parsable" in opts else None
    lines = []
    if "noheader" not in opts:
        lines.append([h for h, _, _ in fields])
        if sep is None:
            lines.append(["-" * w for _, w, _ in fields])
    lines += [[get(r, s) for _, _, get in fields] for r, s in records]
    for line in lines:
        if sep is None:
            line = " ".join(
                (v if len(v) <= w else v[: w - 1] + "+").rjust(w) for v, (_, w, _) in zip(line, fields, strict=True)
            )
        else:
            line = sep.join(line) + ("|" if "parsable" in opts else "")
        print(line)
    return 0


# ---------------------------------------------------------------- scontrol


def show_config():
    accounting = (
        "accounting_storage/none"
        if os.environ.get("FAKE_SLURM_NO_ACCOUNTING", "0") not in ("", "0")
        else "accounting_storage/slurmdbd"
    )
    config = {
        "AccountingStorageType": accounting,
        "ClusterName": "fake",
        "KillWait": f"{KILL_WAIT:g} sec",
        "MaxArraySize": env_num("FAKE_SLURM_MAX_ARRAY_SIZE", 1001, int),
        "MaxJobCount": env_num("FAKE_SLURM_MAX_JOB_COUNT", 10000, int),
        "MinJobAge": f"{env_num('FAKE_SLURM_MIN_JOB_AGE', 300.0):g} sec",
        "SLURM_VERSION": "22.05.8",
        "SchedulerType": "sched/backfill",
        "SelectType": "select/cons_tres",
        "SlurmctldHost[0]": "localhost",
        "SlurmctldParameters": "(null)",
    }
    bucket = env_num("FAKE_SLURM_RPC_BUCKET", 0, int)
    if bucket > 0:  # as Slurm >= 23.02 would show it
        config["SlurmctldParameters"] = (
            f"rl_enable,rl_bucket_size={bucket},rl_refill_rate={env_num('FAKE_SLURM_RPC_REFILL', 2, int)},"
            f"rl_refill_period={env_num('FAKE_SLURM_RPC_REFILL_PERIOD', 1.0):g}"
        )
    print(f"Configuration data as of {fmt_stamp(time.time())}")
    for key, value in config.items():
        print(f"{key:<23} = {value}")


def scontrol(argv):
    words = [a.lower() for a in argv if not a.startswith("-")]
    if words[:1] != ["show"] or len(words) < 2:
        raise Fail("fake scontrol supports only 'show config' and 'show job [ID]'")
    if words[1] in ("config", "conf"):
        show_config()
        return 0
    if words[1] not in ("job", "jobs"):
        raise Fail(f"invalid entity:{words[1]} for keyword:show")
    refs = words[2].split(",") if len(words) > 2 else None
    pairs = select(refs, all_jobs(), ACTIVE + ENDED, now=time.time())
    for r in rows(pairs):
        array = f" ArrayJobId={r['F']} ArrayTaskId={r['K']}" if r["K"] != "N/A" else ""
        print(
            f"JobId={r['A']}{array} JobName={r['j']}\n"
            f"   UserId={r['u']} Account={r['a']} QOS={r['q']}\n"
            f"   JobState={r['T']} Reason={r['r']} Dependency={r['E']}\n"
            f"   RunTime={r['M']} TimeLimit={r['l']}\n"
            f"   StartTime={r['S']} EndTime={r['e']}\n"
            f"   Partition={r['P']} NodeList={r['N'] or '(null)'}\n"
            f"   ExitCode={r['exitcode']}\n   WorkDir={r['Z']}\n"
        )
    return 0


# ---------------------------------------------------------------- sacctmgr: the limits a site set
#
# `sacctmgr show qos` / `show assoc` answer with the limits of FAKE_SLURM_QOS_LIMITS,
# FAKE_SLURM_MAX_SUBMIT_JOBS and FAKE_SLURM_MAX_JOBS, in the real formats
# (tests/slurm_texts/sacctmgr_*.json); an unset limit is a blank field, as in Slurm.

SACCTMGR_SPEC = make_spec(
    ("noheader", False, "-n", "--noheader"),
    ("parsable2", False, "-P", "--parsable2"),
    ("parsable", False, "-p", "--parsable"),
    ("immediate", False, "-i", "--immediate"),
    ("quiet", False, "-Q", "--quiet"),
    ("verbose", False, "-v", "--verbose"),
)
NO_SLURMDBD = (
    "You are not running a supported accounting_storage plugin\nOnly 'accounting_storage/slurmdbd' is supported."
)


def limit_text(value):
    return "" if value is None else str(value)


# field (lower case): (header, width, function of a row dict); rows hold the limits by their sacctmgr names
QOS_FIELDS = {
    "name": ("Name", 10, lambda r: r["Name"]),
    "priority": ("Priority", 10, lambda r: "0"),
    "gracetime": ("GraceTime", 10, lambda r: "00:00:00"),
    "preemptmode": ("PreemptMode", 11, lambda r: "cluster"),
    "usagefactor": ("UsageFactor", 11, lambda r: "1.000000"),
    "maxsubmitjobsperuser": ("MaxSubmitPU", 11, lambda r: limit_text(r.get("MaxSubmitJobsPerUser"))),
    "maxjobsperuser": ("MaxJobsPU", 9, lambda r: limit_text(r.get("MaxJobsPerUser"))),
}
QOS_DEFAULT = (  # the 26 columns of a plain `sacctmgr show qos`; those not modelled are blank
    "Name,Priority,GraceTime,Preempt,PreemptExitTime,PreemptMode,Flags,UsageThres,UsageFactor,GrpTRES,"
    "GrpTRESMins,GrpTRESRunMins,GrpJobs,GrpSubmit,GrpWall,MaxTRES,MaxTRESPerNode,MaxTRESMins,MaxWall,"
    "MaxTRESPU,MaxJobsPU,MaxSubmitPU,MaxTRESPA,MaxJobsPA,MaxSubmitPA,MinTRES"
)
ASSOC_FIELDS = {
    "cluster": ("Cluster", 10, lambda r: "fake"),
    "account": ("Account", 10, lambda r: "root"),
    "user": ("User", 10, lambda r: r["User"]),
    "share": ("Share", 9, lambda r: "1"),
    "qos": ("QOS", 20, lambda r: ",".join(sorted(qos_limits()))),
    "defaultqos": ("Def QOS", 9, lambda r: ""),
    "maxsubmitjobs": ("MaxSubmit", 9, lambda r: limit_text(r.get("MaxSubmitJobs"))),
    "maxjobs": ("MaxJobs", 7, lambda r: limit_text(r.get("MaxJobs"))),
}
ASSOC_DEFAULT = (  # the 20 columns of a plain `sacctmgr show assoc`
    "Cluster,Account,User,Partition,Share,Priority,GrpJobs,GrpTRES,GrpSubmit,GrpWall,GrpTRESMins,MaxJobs,"
    "MaxTRES,MaxTRESPerNode,MaxSubmit,MaxWall,MaxTRESMins,QOS,Def QOS,GrpTRESRunMins"
)
BLANK_FIELDS = {  # sacctmgr's header and width of some columns that are always blank here
    "grpjobs": ("GrpJobs", 7),
    "grpsubmitjobs": ("GrpSubmit", 9),
    "maxsubmitjobsperaccount": ("MaxSubmitPA", 11),
    "maxjobsperaccount": ("MaxJobsPA", 9),
    "parentname": ("Par Name", 10),
}
FIELD_ALIASES = {  # headers and short names -> the field
    "maxsubmit": "maxsubmitjobs",
    "grpsubmit": "grpsubmitjobs",
    "def qos": "defaultqos",
    "maxsubmitpu": "maxsubmitjobsperuser",
    "maxjobspu": "maxjobsperuser",
    "maxsubmitpa": "maxsubmitjobsperaccount",
    "maxjobspa": "maxjobsperaccount",
}


def sacctmgr_columns(spec, fields, default):
    columns = []
    for name in (spec or default).split(","):
        key, _, width = name.strip().lower().partition("%")
        key = FIELD_ALIASES.get(key, key)
        header, size, get = fields.get(key) or (*BLANK_FIELDS.get(key, (name.strip(), 10)), lambda r: "")
        columns.append((header, int(width) if width else size, get))
    return columns


def sacctmgr(argv):
    opts, words = parse_args(argv, SACCTMGR_SPEC)
    if os.environ.get("FAKE_SLURM_NO_ACCOUNTING", "0") not in ("", "0"):
        print(NO_SLURMDBD, file=sys.stderr)
        return 1
    if len(words) < 2 or words[0].lower() not in ("show", "list"):
        raise Fail("fake sacctmgr supports only 'show qos' and 'show assoc'")
    entity, filters, spec = words[1].lower(), {}, None
    for word in words[2:]:
        key, eq, value = word.partition("=")
        if word.lower() in ("where", "set"):
            continue
        if not eq:
            filters.setdefault("names", []).extend(word.split(","))
        elif key.lower() == "format":
            spec = value
        else:
            filters[key.lower().rstrip("s")] = value.split(",")
    if entity == "qos":
        columns = sacctmgr_columns(spec, QOS_FIELDS, QOS_DEFAULT)
        wanted = filters.get("names") or filters.get("name")
        rows = [{"Name": n, **lim} for n, lim in qos_limits().items() if not wanted or n in wanted]
        rows.sort(key=lambda r: r["Name"] != "normal")  # normal first, then as listed
    elif entity.startswith("assoc"):
        columns = sacctmgr_columns(spec, ASSOC_FIELDS, ASSOC_DEFAULT)
        user = os.environ.get("USER", "root")
        rows = [{"User": user, **assoc_limits()}]
        if user not in filters.get("user", [user]):
            rows = []
    else:
        raise Fail(f"fake sacctmgr: 'show {entity}' is not modelled (qos, assoc)")
    lines = [] if "noheader" in opts else [[h for h, _, _ in columns]]
    if lines and "parsable2" not in opts and "parsable" not in opts:
        lines.append(["-" * w for _, w, _ in columns])
    lines += [[get(r) for _, _, get in columns] for r in rows]
    for line in lines:
        if "parsable2" in opts or "parsable" in opts:
            print("|".join(line) + ("|" if "parsable" in opts else ""))
        else:
            print("".join(v[:w].rjust(w) + " " for v, (_, w, _) in zip(line, columns, strict=True)))
    return 0


# ---------------------------------------------------------------- RPC rate limit and latency
#
# Slurm >= 23.02 can rate-limit each user's RPCs to slurmctld (SlurmctldParameters=rl_enable;
# src/slurmctld/rate_limit.c): a bucket of rl_bucket_size tokens (30), refilled by
# rl_refill_rate tokens (2) each time a whole rl_refill_period (1 s) of the epoch has begun;
# an RPC takes a token, or, when there is none, is answered SLURMCTLD_COMMUNICATIONS_BACKOFF
# without taking one. The client (slurm_send_recv_controller_msg) then sleeps 1 s, sends
# again, sleeps 2 s after a second refusal, and so on: nothing is printed (only with -v).
# SlurmUser and root are exempt in Slurm; the fake limits whoever runs it. sacct and
# sacctmgr ask slurmdbd, which has no such bucket.

RPC_COMMANDS = ("sbatch", "squeue", "scancel", "scontrol")


def rpc_token(cmd):
    """Take one token from the RPC bucket, waiting as Slurm's client does; each wait is logged."""
    size = env_num("FAKE_SLURM_RPC_BUCKET", 0, int)
    if size <= 0:
        return
    refill = env_num("FAKE_SLURM_RPC_REFILL", 2, int)
    period = env_num("FAKE_SLURM_RPC_REFILL_PERIOD", 1.0)
    for attempt in itertools.count(1):
        with flocked(path("rpc_bucket")) as fd:
            now = int(time.time() // period)
            saved = os.pread(fd, 64, 0).split()
            tokens = min(size, int(saved[0]) + (now - int(saved[1])) * refill) if saved else size
            granted = tokens > 0
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{tokens - granted} {now}".encode(), 0)
        if granted:
            return
        seconds = round(attempt * env_num("FAKE_SLURM_RETRY_UNIT", 1.0), 6)
        append_log("calls.jsonl", {"cmd": "rpc_backoff", "command": cmd, "attempt": attempt, "seconds": seconds})
        time.sleep(seconds)


def latency(cmd):
    """FAKE_SLURM_LATENCY: seconds every command takes (`0.2`), or per command (`squeue=0.5,sbatch=1`)."""
    spec = os.environ.get("FAKE_SLURM_LATENCY", "").strip()
    if not spec:
        return 0.0
    if "=" not in spec:
        return float(spec)
    per_command = dict(part.split("=", 1) for part in spec.split(",") if "=" in part)
    return float(per_command.get(cmd, 0))


# ---------------------------------------------------------------- faults: answers recorded from real Slurm


def recorded_text(name):
    """A recorded answer: `name`.json in $FAKE_SLURM_TEXTS (default ../tests/slurm_texts), or a .json path."""
    folder = os.environ.get("FAKE_SLURM_TEXTS") or os.path.join(
        os.path.dirname(os.path.abspath(__file__)), os.pardir, "tests", "slurm_texts"
    )
    file = name if name.endswith(".json") else os.path.join(folder, f"{name}.json")
    try:
        with open(file) as f:
            return json.load(f)
    except (OSError, ValueError) as e:
        raise Fail(f"fake_slurm: cannot read the recorded text {file}: {e}") from None


def injected_fault(cmd):
    """The recorded answer `cmd` gives this time instead of its own, per FAKE_SLURM_<CMD>_FAULT=name[:count]."""
    spec = os.environ.get(f"FAKE_SLURM_{cmd.upper()}_FAULT", "").strip()
    if not spec:
        return None
    name, _, count = spec.rpartition(":")
    if not count.isdigit():
        name, count = spec, ""
    if count and bump(f"{cmd}_fault_calls") >= int(count):
        return None
    return recorded_text(name)


def answer(record):
    """Print a recorded answer as the real command did; return its exit code."""
    sys.stdout.write(record["stdout"])
    sys.stderr.write(record["stderr"])
    return record["returncode"]


# ---------------------------------------------------------------- entry point

COMMANDS = {
    "sbatch": sbatch,
    "squeue": squeue,
    "scancel": scancel,
    "sacct": sacct,
    "scontrol": scontrol,
    "sacctmgr": sacctmgr,
}


def main(cmd, argv):
    """Run fake command `cmd`; returns its exit status."""
    try:
        if cmd in RPC_COMMANDS:
            rpc_token(cmd)
        delay = latency(cmd)
        if delay > 0:
            time.sleep(delay)
        if cmd != "sbatch":
            append_log("calls.jsonl", {"cmd": cmd, "argv": argv})
            fault = injected_fault(cmd) if cmd != "scontrol" else None
            if fault:
                return answer(fault)
        return COMMANDS[cmd](argv)
    except Fail as e:
        text = str(e)
        print(text if text.startswith("slurm_load_jobs") else f"{cmd}: error: {text}", file=sys.stderr)
        return 1


if __name__ == "__main__" and sys.argv[1:2] == ["run"]:
    run(int(sys.argv[2]))
