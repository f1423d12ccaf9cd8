"""Capture real Grid Engine outputs for the SGE backend's parsing tests (run as root).

    eval "$(scripts/testcluster.sh env)"
    sudo -E python3 tests/data/sge/capture.py

Every user command runs as the test user over the test cluster's sshd, in ``~/sgecap``, as
clustrix's own commands do; daemon faults (execd down, a queue suspended) are made as root
on this machine. Each case writes ``NAME.txt`` (stdout), ``NAME.stderr.txt`` (stderr, when
not empty) and a line of ``cases.tsv`` (name, exit status, command); ``jobs.json`` says which
job is which. Job numbers differ from run to run: the tests read them from ``jobs.json``.
Not run by the test suite (it submits ~40 jobs and takes about two minutes).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[2]
TESTCLUSTER = REPO / "scripts" / "testcluster.sh"
STATE = Path(os.environ.get("CLUSTRIX_TEST_STATE", "/tmp/clustrix-testcluster"))
KEY = os.environ.get("CLUSTRIX_TEST_SSH_KEY", str(STATE / "keys" / "id_ed25519"))
KNOWN = os.environ.get("CLUSTRIX_TEST_KNOWN_HOSTS", str(STATE / "keys" / "known_hosts"))
PORT = os.environ.get("CLUSTRIX_TEST_SSH_PORT", "2222")
USER = os.environ.get("CLUSTRIX_TEST_SSH_USER", "clustrix")
ROOT_ENV = {**os.environ, "SGE_ROOT": "/var/lib/gridengine", "SGE_CELL": "default"}

rows: list[str] = []
jobs: dict[str, str] = {}


def ssh(command: str) -> subprocess.CompletedProcess[str]:
    argv = ["ssh", "-q", "-o", "BatchMode=yes", "-o", f"UserKnownHostsFile={KNOWN}"]
    argv += ["-i", KEY, "-p", PORT, f"{USER}@127.0.0.1", f"cd ~/sgecap && {command}"]
    return subprocess.run(argv, capture_output=True, text=True, timeout=120)


def root(command: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["bash", "-c", command], capture_output=True, text=True, timeout=120, env=ROOT_ENV
    )


def capture(name: str, command: str, *, as_root: bool = False) -> str:
    """Run ``command``, store its output as case ``name``; its stdout."""
    result = root(command) if as_root else ssh(command)
    (HERE / f"{name}.txt").write_text(result.stdout)
    stderr = HERE / f"{name}.stderr.txt"
    if result.stderr:
        stderr.write_text(result.stderr)
    elif stderr.exists():
        stderr.unlink()
    who = "root" if as_root else USER
    rows.append(f"{name}\t{result.returncode}\t{who}\t{command}")
    print(f"{name}: exit {result.returncode}", file=sys.stderr)
    return result.stdout


def submit(label: str, options: str, command: str = "true") -> str:
    out = ssh(f"qsub -terse -b y {options} {command}").stdout.strip()
    job = out.split(".")[0]
    assert job.isdigit(), (label, out)
    jobs[label] = job
    return job


def state_of(job: str) -> str:
    out = ssh(f"qstat -u {USER} | awk '$1 == {job} {{print $5; exit}}'").stdout.strip()
    return out


def wait_state(job: str, wanted: set[str], timeout_s: float = 60) -> str:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        state = state_of(job)
        if state in wanted:
            return state
        time.sleep(0.3)
    raise RuntimeError(f"job {job} not in {wanted} (is {state_of(job)!r})")


def wait_gone(job: str, timeout_s: float = 120) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if not state_of(job):
            return
        time.sleep(0.3)
    raise RuntimeError(f"job {job} still in qstat")


def wait_accounted(job: str, tasks: int = 1, timeout_s: float = 60) -> float:
    """Seconds until qacct has ``tasks`` records of ``job``."""
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout_s:
        out = ssh(f"qacct -j {job} 2>/dev/null | grep -c '^jobnumber'").stdout.strip()
        if out.isdigit() and int(out) >= tasks:
            return time.monotonic() - t0
        time.sleep(0.1)
    raise RuntimeError(f"no qacct record of {job}")


def set_global(**values: str) -> None:
    """Change global config values (``qconf -Mconf`` reads the name from the file name)."""
    edits = " ".join(f"-e 's/^{k} .*/{k} {v}/'" for k, v in values.items())
    root(
        "d=$(mktemp -d) && qconf -sconf global | grep -v '^#' "
        f"| sed {edits} > $d/global && (cd $d && qconf -Mconf global); rm -rf $d"
    )


def limits_and_master() -> None:
    """A job count limit (max_u_jobs), then qsub and qstat while sge_qmaster is down."""
    set_global(max_u_jobs="2")
    try:
        for i in range(2):
            submit(f"limit_{i}", "-h -o /dev/null -e /dev/null")
        capture("qsub_err_max_u_jobs", "qsub -terse -b y -h -o /dev/null true")
        capture("qsub_err_max_u_jobs_array", "qsub -terse -b y -h -t 1-5 -o /dev/null true")
    finally:
        set_global(max_u_jobs="0")
        ssh(f"qdel {jobs['limit_0']} {jobs['limit_1']}")
    # qmaster takes a few seconds to shut down (and answers meanwhile): wait until it is gone
    root(
        "p=$(cat /var/spool/gridengine/qmaster/qmaster.pid); kill $p; "
        "while kill -0 $p 2>/dev/null; do sleep 0.2; done"
    )
    try:
        capture("qsub_err_qmaster_down", "qsub -terse -b y -o /dev/null true")
        capture("qstat_xml_qmaster_down", f"qstat -xml -u {USER}")
        capture("qacct_j_qmaster_down", f"qacct -j {jobs.get('completed', '1')}")
    finally:
        root(f"/usr/sbin/sge_qmaster && sleep 2 && {TESTCLUSTER} restart-execd 0")


def main() -> int:
    if sys.argv[1:] == ["limits"]:  # only this part, added to an earlier run's cases
        limits_and_master()
        with (HERE / "cases.tsv").open("a") as fh:
            fh.write("\n".join(rows) + "\n")
        return 0
    if os.geteuid() != 0:
        print("run as root (daemon faults)", file=sys.stderr)
        return 1
    ssh("true")
    root(f"qdel -u {USER} >/dev/null 2>&1; true")
    deadline = time.monotonic() + 120
    while ssh(f"qstat -u {USER}").stdout.strip() and time.monotonic() < deadline:
        time.sleep(1)  # until earlier jobs have left (a deleted job may linger in dr)
    ssh("rm -rf ~/sgecap/* ; mkdir -p ~/sgecap")
    (HERE / "script").mkdir(exist_ok=True)

    # ---------------------------------------------------------------- qconf / qstat -g c
    capture("qconf_sconf", "qconf -sconf")
    capture("qconf_spl", "qconf -spl")
    capture("qconf_sp_smp", "qconf -sp smp")
    capture("qconf_sql", "qconf -sql")
    capture("qstat_g_c", "qstat -g c")
    capture("qstat_xml_no_jobs", f"qstat -xml -u {USER}")

    # ---------------------------------------------------------------- submission
    capture("qsub_terse_plain", "qsub -terse -b y -o /dev/null -e /dev/null true")
    capture("qsub_terse_array", "qsub -terse -b y -t 1-10 -o /dev/null -e /dev/null true")
    capture("qsub_terse_array_throttled", "qsub -terse -b y -t 1-4 -tc 2 -o /dev/null true")
    capture("qsub_plain_message", "qsub -b y -o /dev/null -e /dev/null true")
    capture("qsub_array_message", "qsub -b y -t 1-3 -o /dev/null -e /dev/null true")
    script = (
        "#!/bin/bash\n#$ -N name_from_script\n#$ -S /bin/bash\n#$ -o /dev/null\n"
        "#$ -e /dev/null\n#$ -l h_rt=600\n#$ -pe smp 2\n#$ -A proj42\necho hi\n"
    )
    ssh(f"printf %s {json.dumps(script)} > directives.sh")
    capture("qsub_terse_script_directives", "qsub -terse directives.sh")
    capture("qsub_err_unknown_queue", "qsub -terse -b y -q nosuchq -o /dev/null true")
    capture("qsub_err_unknown_pe", "qsub -terse -b y -pe nosuchpe 2 -o /dev/null true")
    capture("qsub_err_array_too_large", "qsub -terse -b y -t 1-75001 -o /dev/null true")
    capture("qsub_err_bad_h_rt", "qsub -terse -b y -l h_rt=abc -o /dev/null true")
    capture("qsub_err_unknown_resource", "qsub -terse -b y -l nosuch=1 -o /dev/null true")
    capture("qsub_err_missing_script", "qsub -terse no-such-script.sh")
    capture("qsub_err_name_space", "qsub -terse -b y -N 'a b' -o /dev/null true")
    capture("qsub_err_name_digit", "qsub -terse -b y -N 1abc -o /dev/null true")
    capture("qsub_err_name_slash", "qsub -terse -b y -N a/b -o /dev/null true")
    capture("qsub_err_unknown_project", "qsub -terse -b y -P nosuchproj -o /dev/null true")
    capture("qsub_err_no_sge_root", "env -u SGE_ROOT /usr/lib/gridengine/qsub -terse -b y true")
    capture("qsub_not_on_path", "PATH=/nonexistent; export PATH; qsub -terse -b y true")
    jobs["pe_too_many_slots"] = capture(
        "qsub_pe_too_many_slots_accepted", "qsub -terse -b y -pe smp 64 -o /dev/null true"
    ).strip()
    time.sleep(3)
    capture("qstat_j_pe_too_many_slots", f"qstat -j {jobs['pe_too_many_slots']}")
    ssh(f"qdel {jobs['pe_too_many_slots']}")

    # ---------------------------------------------------------------- states
    running = submit("running", "-N run -o /dev/null -e /dev/null", "sleep 600")
    held = submit("held", "-h -o /dev/null -e /dev/null")
    array = submit("array_throttled", "-t 1-6 -tc 2 -o /dev/null -e /dev/null", "sleep 600")
    eqw = submit("eqw", "-wd /no/such/dir -o /dev/null -e /dev/null")
    eqw_array = submit("eqw_array", "-t 1-3 -wd /no/such/dir -o /dev/null -e /dev/null")
    root_job = subprocess.run(
        ["qsub", "-terse", "-b", "y", "-o", "/dev/null", "-e", "/dev/null", "sleep", "60"],
        capture_output=True,
        text=True,
        env=ROOT_ENV,
        cwd="/tmp",
    ).stdout.strip()
    jobs["other_users_job"] = root_job
    wait_state(running, {"r"})
    wait_state(eqw, {"Eqw"})
    wait_state(eqw_array, {"Eqw"})
    time.sleep(2)
    capture("qstat_xml_mixed", f"qstat -xml -u {USER}")
    capture("qstat_plain_mixed", f"qstat -u {USER}")
    capture("qstat_xml_default_user", "qstat -xml")
    capture("qstat_j_error_single", f"qstat -j {eqw}")
    capture("qstat_j_error_array", f"qstat -j {eqw_array}")
    capture("qstat_j_list_error_and_other", f"qstat -j {eqw},{running},{eqw_array}")
    capture("qstat_j_unknown", "qstat -j 9999999")
    capture("qstat_j_unknown_and_known", f"qstat -j 9999999,{eqw}")
    capture("qalter_ac_error_job", f"qalter -ac clustrix_eqw_1=1 {eqw}")
    capture("qstat_j_error_single_marked", f"qstat -j {eqw}")
    capture("qacct_j_eqw", f"qacct -j {eqw}")
    capture("qdel_other_users_job", f"qdel {root_job}")
    root(f"qdel {root_job}")

    # suspended (by the owner: s; the queue, by the admin: S)
    capture("qmod_sj_own_job", f"qmod -sj {running}")
    time.sleep(1)
    capture("qstat_xml_suspended_job", f"qstat -xml -u {USER}")
    ssh(f"qmod -usj {running}")
    root("qmod -sq all.q")
    time.sleep(1)
    capture("qstat_xml_queue_suspended", f"qstat -xml -u {USER}")
    root("qmod -usq all.q")

    # rescheduled (Rq), deleted while execd is down (dr)
    rerun = submit("rescheduled", "-r y -o /dev/null -e /dev/null", "sleep 600")
    wait_state(rerun, {"r"})
    capture("qmod_rj_own_job", f"qmod -rj {rerun}")
    wait_state(rerun, {"Rq", "Rr"})
    capture("qstat_xml_rescheduled", f"qstat -xml -u {USER}")
    try:
        wait_state(rerun, {"Rr", "r"}, timeout_s=60)
        capture("qstat_xml_rescheduled_running", f"qstat -xml -u {USER}")
    except RuntimeError as exc:
        print(f"rescheduled job did not run again: {exc}", file=sys.stderr)
    ssh(f"qdel {rerun}")
    wait_gone(rerun)
    wait_accounted(rerun)
    capture("qacct_j_rescheduled", f"qacct -j {rerun}")

    deleting = submit("deleting", "-o /dev/null -e /dev/null", "sleep 600")
    wait_state(deleting, {"r"})
    root("for f in /var/spool/gridengine/execd/*/execd.pid; do kill $(cat $f); done; sleep 2")
    capture("qdel_running_execd_down", f"qdel {deleting}")
    time.sleep(1)
    capture("qstat_xml_deleting_execd_down", f"qstat -xml -u {USER}")
    root(f"{TESTCLUSTER} restart-execd 0")
    wait_gone(deleting)
    wait_accounted(deleting)
    capture("qacct_j_deleted_while_execd_down", f"qacct -j {deleting}")

    # ---------------------------------------------------------------- ends, accounting
    done = submit("completed", "-o /dev/null -e /dev/null")
    exit7 = submit("exit7", "-N e7 -o /dev/null -e /dev/null", "'exit 7'")
    h_rt = submit("h_rt", "-l h_rt=0:0:3 -o /dev/null -e /dev/null", "sleep 600")
    mixed = submit(
        "array_exit_codes", "-N ax -t 1-4 -o /dev/null -e /dev/null", "'exit $((SGE_TASK_ID % 3))'"
    )
    pending_del = submit("qdel_pending", "-h -o /dev/null -e /dev/null")
    wait_gone(done)
    delay = wait_accounted(done)
    jobs["qacct_delay_s"] = f"{delay:.2f}"
    capture("qacct_j_completed", f"qacct -j {done}")
    wait_gone(exit7)
    wait_accounted(exit7)
    capture("qacct_j_exit7", f"qacct -j {exit7}")
    wait_gone(h_rt)
    wait_accounted(h_rt)
    capture("qacct_j_h_rt", f"qacct -j {h_rt}")
    wait_gone(mixed)
    wait_accounted(mixed, tasks=4)
    capture("qacct_j_array_exit_codes", f"qacct -j {mixed}")
    capture("qdel_running", f"qdel {running}")
    capture("qdel_pending", f"qdel {pending_del}")
    capture("qdel_array_tasks", f"qdel {array}.1 {array}.5-6")
    capture("qdel_unknown", "qdel 9999999")
    capture("qdel_finished", f"qdel {done}")
    capture("qdel_list_known_and_unknown", f"qdel 9999999 {array}.2")
    capture("qdel_error_jobs", f"qdel {eqw} {eqw_array}.1-3")
    wait_gone(running)
    wait_accounted(running)
    capture("qacct_j_qdel_running", f"qacct -j {running}")
    capture("qacct_j_qdel_pending", f"qacct -j {pending_del}")
    capture("qacct_j_unknown", "qacct -j 9999999")
    capture("qstat_xml_array_after_qdel_tasks", f"qstat -xml -u {USER}")
    ssh(f"qdel {array} {held}")

    # ---------------------------------------------------------------- execd faults
    survivor = submit("survives_execd_restart", "-o /dev/null -e /dev/null", "sleep 8")
    killed = submit("killed_while_execd_down", "-o /dev/null -e /dev/null", "sleep 600")
    wait_state(survivor, {"r"})
    wait_state(killed, {"r"})
    root(f"{TESTCLUSTER} restart-execd 3 {killed}")
    capture("qstat_xml_after_execd_restart", f"qstat -xml -u {USER}")
    wait_gone(killed)
    wait_accounted(killed)
    capture("qacct_j_killed_while_execd_down", f"qacct -j {killed}")
    wait_gone(survivor)
    wait_accounted(survivor)
    capture("qacct_j_survived_execd_restart", f"qacct -j {survivor}")
    worker = submit("worker_killed", "-N wk -o /dev/null -e /dev/null", "'sleep 600; exit $?'")
    wait_state(worker, {"r"})
    time.sleep(1)
    # the job's own child only: shepherd -> job shell -> sleep
    root(
        f"s=$(cat /var/spool/gridengine/execd/*/active_jobs/{worker}.1/pid); "
        'for c in $(pgrep -P "$s"); do pkill -KILL -P "$c"; done'
    )
    wait_gone(worker)
    wait_accounted(worker)
    capture("qacct_j_job_shell_child_killed", f"qacct -j {worker}")

    limits_and_master()
    (HERE / "cases.tsv").write_text("name\texit\tuser\tcommand\n" + "\n".join(rows) + "\n")
    (HERE / "jobs.json").write_text(json.dumps(jobs, indent=2, sort_keys=True) + "\n")
    print(json.dumps(jobs, indent=2), file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
