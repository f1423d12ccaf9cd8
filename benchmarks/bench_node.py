"""What one clustrix array task costs on the node: the job script as SLURM runs it
(``bash job.sh``), timed on the cluster itself, against the bare interpreter.

    eval "$(scripts/testcluster.sh env)"
    python benchmarks/bench_node.py                      # this checkout (about 30 s)
    python benchmarks/bench_node.py --against HEAD~1     # and that revision, interleaved

The job script and the runtime zip are rendered from this checkout (and from ``--against``'s
revision, a ``git archive`` of it). On the cluster, over SSH, a scratch job directory gets
one call (``abs``, pickled by reference, then a function pickled by value as ``__main__``
code travels), and each script runs ``--runs`` times, the scripts in turn, the result
removed between runs. The CPU is the user+system time of the script and its children
(``wait4``): the machine's load moves it much less than the wall time.
"""

from __future__ import annotations

import argparse
import io
import json
import secrets
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

from bench_slurm import Login

REPO = Path(__file__).resolve().parent.parent

#: Run by the cluster's python3 in the scratch dir: stdlib, and the runtime zip of the first
#: side for sealing the task file (the format is the same on every side).
NODE_PROGRAM = r"""
import json, os, pickle, statistics, sys, time
root, runs, sides = sys.argv[1], int(sys.argv[2]), sys.argv[3:]
job = os.path.join(root, "job")
for sub in ("tasks", "results", "exit", "logs", "claims"):
    os.makedirs(os.path.join(job, sub), exist_ok=True)
secret = os.urandom(32)
with open(os.open(os.path.join(job, "secret"), os.O_WRONLY | os.O_CREAT, 0o600), "wb") as fh:
    fh.write(secret)
sys.path.insert(0, os.path.join(root, sides[0] + ".zip"))
from clustrix import _wire
import cloudpickle

def noop(x=None):
    return x

env = {k: v for k, v in os.environ.items() if not k.startswith("PYTHON")}
env["SLURM_ARRAY_TASK_ID"] = "0"
result = os.path.join(job, "results", "0.pkl")
commands = {"python3 -c pass": ["python3", "-c", "pass"], "bash -c true": ["bash", "-c", "true"]}
out = {}
for mode, fn in (("by reference", pickle.dumps(abs)), ("by value", cloudpickle.dumps(noop))):
    calls = [(0, fn, pickle.dumps(((1,), {})))]
    _wire.write_atomic(os.path.join(job, "tasks", "0.pkl"),
                       _wire.seal(secret, pickle.dumps(calls, protocol=5)))
    argvs = {side: ["bash", os.path.join(root, side + ".sh")] for side in sides}
    if mode == "by reference":
        argvs.update(commands)
    cpu = {name: [] for name in argvs}
    for i in range(runs + 2):
        for name, argv in argvs.items():
            if os.path.exists(result):
                os.unlink(result)
            pid = os.posix_spawnp(argv[0], argv, env)
            _, status, usage = os.wait4(pid, 0)
            assert status == 0, (name, status)
            if name in sides:
                with open(result, "rb") as fh:
                    record = _wire.load_record(secret, fh.read())
                assert record["ok"] and pickle.loads(record["value"]) == 1, record
            if i >= 2:  # the first two warm the caches
                cpu[name].append((usage.ru_utime + usage.ru_stime) * 1e3)
    out[mode] = {name: statistics.median(values) for name, values in cpu.items()}
print(json.dumps(out))
"""

#: Run with the tree to measure first on sys.path: its runtime zip and SLURM job script.
RENDER = r"""
import sys
import clustrix
assert clustrix.__file__.startswith(sys.argv[1]), clustrix.__file__
from clustrix._bundle import worker_bundle
from clustrix.config import Resources
from clustrix.schedulers.base import JobSpec
from clustrix.schedulers.slurm import SlurmScheduler
root, out = sys.argv[2], sys.argv[3]
spec = JobSpec(job_dir=f"{root}/job", n_tasks=2, resources=Resources(), job_name="bench-node",
               python="python3", worker_path=f"{root}/{out}.zip")
sys.stdout.buffer.write(worker_bundle().data)
sys.stderr.write(SlurmScheduler().render_script(spec))
"""


def render(tree: Path, root: str, side: str) -> tuple[bytes, str]:
    """The runtime zip and the job script of ``tree``, for the scratch dir ``root``."""
    done = subprocess.run(
        [sys.executable, "-c", RENDER, str(tree), root, side],
        env={"PYTHONPATH": str(tree), "PATH": "/usr/bin:/bin"},
        cwd=tree,
        capture_output=True,
        check=True,
    )
    return done.stdout, done.stderr.decode()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=100, help="runs of each script")
    parser.add_argument("--against", help="a git revision to measure too (before/after)")
    opts = parser.parse_args()
    login = Login.from_env()
    ssh = [
        *("ssh", "-q", "-o", "BatchMode=yes", "-o", f"UserKnownHostsFile={login.known_hosts}"),
        *("-p", str(login.port), "-i", login.key_file, f"{login.user}@{login.host}"),
    ]

    def remote(command: str, stdin: bytes = b"") -> str:
        done = subprocess.run([*ssh, command], input=stdin, capture_output=True, check=True)
        return done.stdout.decode()

    home = remote('printf %s "$HOME"')
    root = f"{home}/.clustrix-bench-node-{secrets.token_hex(4)}"
    files: dict[str, bytes] = {"node.py": NODE_PROGRAM.encode()}
    sides = ["checkout"]
    with tempfile.TemporaryDirectory() as tmp:
        trees = {"checkout": REPO}
        if opts.against:
            archive = subprocess.run(
                ["git", "-C", str(REPO), "archive", opts.against], capture_output=True, check=True
            ).stdout
            with tarfile.open(fileobj=io.BytesIO(archive)) as tree_tar:
                tree_tar.extractall(tmp, filter="data")
            trees[opts.against] = Path(tmp)
            sides.append(opts.against)
        for index, tree in enumerate(trees.values()):
            data, script = render(tree, root, f"side{index}")
            files[f"side{index}.zip"], files[f"side{index}.sh"] = data, script.encode()
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as archive:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size, info.mode = len(data), 0o600
            archive.addfile(info, io.BytesIO(data))
    remote(f"umask 077 && mkdir -p {root} && tar -x -C {root}", buffer.getvalue())
    try:
        names = [f"side{i}" for i in range(len(sides))]
        answer = remote(f"cd {root} && python3 node.py {root} {opts.runs} {' '.join(names)}")
    finally:
        remote(f"rm -rf -- {root}")
    medians = json.loads(answer)
    print(f"CPU per task on the node, median of {opts.runs} (user+sys, wait4):\n")
    print("| job script from | a call by reference | a call by value |\n|---|---:|---:|")
    for side, name in zip(sides, names, strict=True):
        ref, value = medians["by reference"][name], medians["by value"][name]
        print(f"| {side} | {ref:.1f} ms | {value:.1f} ms |")
    for command in ("python3 -c pass", "bash -c true"):
        print(f"| (`{command}`) | {medians['by reference'][command]:.1f} ms | |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
