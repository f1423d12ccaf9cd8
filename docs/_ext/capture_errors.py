"""Capture the error messages that only a real cluster produces, for the troubleshooting page.

The docs build runs every failure it can on the embedded default (``clustrix-raises``); the
ones that need sshd and SLURM are run here, against the test cluster
(``scripts/testcluster.sh start``), and their messages stored in
``docs/guide/cluster-errors.json``, which the page quotes (``clustrix-captured``). Run it
again when a message changes::

    eval "$(scripts/testcluster.sh env)"
    .venv/bin/python docs/_ext/capture_errors.py

Each case is Python code run with ``config`` bound to a working SSH config of the test cluster
(what the page calls "a config that works"); ``setup`` runs first and is not shown.
"""

from __future__ import annotations

import datetime
import json
import os
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

OUTPUT = ROOT / "docs" / "guide" / "cluster-errors.json"

#: Makes a fresh key pair nobody authorized (setup code of two cases).
KEYGEN = 'subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", {!r}], check=True)'

#: The login-test sshds' known_hosts (setup code of the login cases).
LOGIN_KNOWN_HOSTS = (
    "config = config.with_overrides("
    "known_hosts=str(Path(config.known_hosts).parent / 'known_hosts_login'))"
)

CASES: dict[str, dict[str, str]] = {
    "key-file-missing": {
        "code": 'ClusterExecutor(config.with_overrides(key_file="/no/such/id_ed25519"))',
    },
    "key-file-is-a-directory": {
        "code": 'ClusterExecutor(config.with_overrides(key_file="keys"))',
        "setup": 'os.makedirs("keys", exist_ok=True)',
    },
    "key-file-not-a-key": {
        "code": 'ClusterExecutor(config.with_overrides(key_file="id_garbage"))',
        "setup": (
            'Path("id_garbage").write_text("-----BEGIN OPENSSH PRIVATE KEY-----\\nnot a key\\n")'
        ),
    },
    "authentication-refused": {
        "code": (
            "# a key that the cluster does not know\n"
            'ClusterExecutor(config.with_overrides(key_file="id_unknown"))'
        ),
        "setup": KEYGEN.format("id_unknown"),
    },
    "key-locked-nobody-to-ask": {
        "code": (
            "# the cluster's key, with a passphrase; no agent, no passphrase given, no terminal\n"
            'ClusterExecutor(config.with_overrides(key_file="id_locked"))'
        ),
        "setup": "Path('id_locked').write_bytes(Path(config.key_file).read_bytes())\n"
        "os.chmod('id_locked', 0o600)\n"
        "os.environ.pop('SSH_AUTH_SOCK', None)\n"
        "subprocess.run(['ssh-keygen', '-q', '-p', '-P', '', '-N', 'a passphrase', '-f', "
        "'id_locked'], check=True, stdout=subprocess.DEVNULL)",
    },
    "one-time-code-nobody-to-ask": {
        "code": (
            "# a server that wants the key and a one-time code; no terminal to ask in\n"
            "ClusterExecutor(config.with_overrides(cluster_port=2225))"
        ),
        "setup": LOGIN_KNOWN_HOSTS,
    },
    "jump-host-will-not-forward": {
        "code": (
            "# the jump host does not forward to that port (its PermitOpen)\n"
            'ClusterExecutor(config.with_overrides(cluster_port=2223, jump_host="127.0.0.1:2224"))'
        ),
        "setup": LOGIN_KNOWN_HOSTS,
    },
    "host-key-mismatch": {
        "code": (
            "# known_hosts holds another key for this host\n"
            'ClusterExecutor(config.with_overrides(known_hosts="known_hosts_other"))'
        ),
        "setup": KEYGEN.format("id_other")
        + "\nkind, key = Path('id_other.pub').read_text().split()[:2]\n"
        "host = f'[{config.cluster_host}]:{config.cluster_port}'\n"
        "Path('known_hosts_other').write_text(f'{host} {kind} {key}\\n')",
    },
    "unknown-host": {
        "code": 'ClusterExecutor(config.with_overrides(cluster_host="login.no-such-site.invalid"))',
    },
    "work-dir-not-writable": {
        "code": 'ClusterExecutor(config.with_overrides(remote_work_dir="/root/clustrix"))',
    },
    "remote-python-missing": {
        "code": 'ClusterExecutor(config.with_overrides(python_executable="/no/python3"))',
    },
    "invalid-partition": {
        "code": (
            "with ClusterExecutor(config) as ex:\n"
            '    ex.options(partition="nosuchpart").submit(abs, -1).result()'
        ),
    },
    "memory-too-large": {
        "code": (
            "with ClusterExecutor(config) as ex:\n"
            "    ex.options(mem_gb=100000).submit(abs, -1).result()"
        ),
    },
    "time-limit": {
        "code": (
            "with ClusterExecutor(config) as ex:\n"
            "    ex.options(time_limit_min=1).submit(time.sleep, 600).result()"
        ),
    },
    "killed": {
        "code": (
            "with ClusterExecutor(config) as ex:\n"
            "    future = ex.submit(time.sleep, 600)\n"
            "    while not future.running():\n"
            "        time.sleep(0.5)\n"
            "    future.kill()  # or scancel in a shell\n"
            "    future.result()"
        ),
    },
    "module-imports-the-executor": {
        "code": (
            "# mymodule.py begins with: from clustrix import ClusterExecutor\n"
            "from mymodule import work\n\n"
            "with ClusterExecutor(config) as ex:\n"
            "    ex.submit(work, 1).result()"
        ),
        "setup": (
            "Path('mymodule.py').write_text('from clustrix import ClusterExecutor\\n\\n\\n"
            "def work(x):\\n    return x\\n')\n"
            "sys.path.insert(0, os.getcwd())"
        ),
    },
}


def run_case(case: dict[str, str], config: Any) -> dict[str, Any]:
    import clustrix
    from clustrix import ClusterExecutor

    namespace: dict[str, Any] = {
        "ClusterExecutor": ClusterExecutor,
        "config": config,
        "os": os,
        "Path": Path,
        "subprocess": subprocess,
        "sys": sys,
        "time": time,
    }
    exec(case.get("setup", ""), namespace)
    start = time.monotonic()
    try:
        exec(case["code"], namespace)
    except Exception as exc:
        error = "".join(traceback.format_exception_only(type(exc), exc)).rstrip()
        cause = exc.__cause__
    else:
        raise SystemExit(f"the case raised nothing:\n{case['code']}")
    result = {"code": case["code"], "error": error, "seconds": round(time.monotonic() - start, 1)}
    if isinstance(cause, clustrix.RemoteTraceback):  # what happened on the node
        result["remote_traceback"] = str(cause).rstrip()
    return result


def main() -> None:
    from clustertools import require_cluster

    import clustrix

    cluster = require_cluster(ssh=True, slurm=False)
    config = cluster.ssh_config(
        cluster_type="slurm", remote_work_dir="~/.clustrix-docs", time_limit_min=10
    )
    slurm = subprocess.run(["sinfo", "--version"], capture_output=True, text=True).stdout.strip()
    captured: dict[str, Any] = {
        "_about": {
            "where": f"the test cluster: {cluster.user}@{cluster.host}:{cluster.port}, {slurm}",
            "clustrix": clustrix.__version__,
            "date": datetime.date.today().isoformat(),
        }
    }
    wanted = sys.argv[1:] or list(CASES)
    if OUTPUT.exists() and sys.argv[1:]:
        captured.update({k: v for k, v in json.loads(OUTPUT.read_text()).items() if k != "_about"})
    with tempfile.TemporaryDirectory(prefix="clustrix-capture-") as tmp:
        os.chdir(tmp)
        for name in wanted:
            print(f"--- {name}", flush=True)
            captured[name] = run_case(CASES[name], config)
            print(captured[name]["error"], flush=True)
    OUTPUT.write_text(json.dumps(captured, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    print(f"wrote {OUTPUT}")


if __name__ == "__main__":
    main()
