"""The ``ssh`` backend's host-side programs, run for real on this (Linux) machine.

The launcher, the job script, the status, cancel and GPU programs of
:mod:`clustrix.schedulers.direct` run with ``sh`` against real processes: a stub
"Python" stands in for the worker and behaves as ``behave-<task>`` in the job directory says.
What the tests check is what the host shows: sessions and process groups in ``/proc``, run
records, marker and exit files, the status words. Over SSH, ``tests/integration/test_direct.py``
runs the same programs through the engine.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from clustrix import _wire
from clustrix.config import Resources
from clustrix.errors import ConfigError
from clustrix.lifecycle import JobState
from clustrix.schedulers._direct_sh import DISCOVER
from clustrix.schedulers.base import JobSpec
from clustrix.schedulers.direct import DIRECT_STATES, DirectScheduler

pytestmark = pytest.mark.skipif(
    not Path("/proc/self/stat").exists(), reason="the ssh backend's programs need Linux /proc"
)

# The worker's stand-in: argv is "-c <bootstrap> clustrix.worker run <job dir> <task>".
# Behaviours: "exit N"; "sleep": a child that records the TERM it gets (in term-<task>),
# which only a TERM for the whole group reaches; "stubborn": ignores TERM, as does its
# child; "release": waits for release-<task>.
STUB = r"""#!/bin/sh
d=$5; t=$6
echo "$$" >> "$d/starts-$t"
printf '%s' "${CUDA_VISIBLE_DEVICES-<unset>}" > "$d/cuda-$t"
case $(cat "$d/behave-$t" 2>/dev/null) in
  exit*) read -r _ rc < "$d/behave-$t"; exit "$rc" ;;
  sleep) sh -c 'f=$1; trap "echo TERM > \"\$f\"; exit 0" TERM; sleep 300 & wait' _ "$d/term-$t" &
         echo "$!" > "$d/child-$t"; wait ;;
  stubborn) trap '' TERM; sleep 300 & echo "$!" > "$d/child-$t"
            while :; do wait; done ;;
  release) while [ ! -e "$d/release-$t" ]; do sleep 0.05; done ;;
esac
exit 0
"""

WEIRD_DIR = "job dir 'q' \"$(touch pwned)\" `x` ü"


def stat_fields(pid: int) -> list[str] | None:
    """The fields of /proc/<pid>/stat after the command name (field 3 on), or None."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return None
    return text.rpartition(") ")[2].split()


def alive(pid: int) -> bool:
    """Runs, and is not a zombie (this machine's init may never reap them)."""
    fields = stat_fields(pid)
    return fields is not None and fields[0] != "Z"


def session_members(sid: int) -> list[int]:
    """Live processes of session ``sid``."""
    members = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            fields = stat_fields(int(entry.name))
            if fields is not None and fields[0] != "Z" and fields[3] == str(sid):
                members.append(int(entry.name))
    return members


def wait_until(what: str, condition: Callable[[], object], timeout_s: float = 60) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"not within {timeout_s} s: {what}")
        time.sleep(0.05)


@dataclass
class Host:
    """A work dir on this machine and the backend's programs run against it; ``path``:
    PATH for them (its ``sh`` is the shell under test)."""

    root: Path
    scheduler: DirectScheduler
    stub: str
    path: str
    started: list[int] = field(default_factory=list)

    def job(
        self, behaviours: list[str], resources: Resources | None = None, **spec: object
    ) -> tuple[JobSpec, Path]:
        """A job directory whose task t behaves as ``behaviours[t]``, and its spec."""
        job_dir = self.root / "jobs" / spec.pop("name", f"j{len(os.listdir(self.root / 'jobs'))}")  # type: ignore[arg-type]
        for sub in (_wire.LOGS_DIR, _wire.EXIT_DIR, _wire.TASKS_DIR, _wire.RESULTS_DIR):
            (job_dir / sub).mkdir(parents=True)
        for task, behaviour in enumerate(behaviours):
            (job_dir / f"behave-{task}").write_text(behaviour + "\n")
        job = JobSpec(
            job_dir=str(job_dir),
            n_tasks=len(behaviours),
            resources=resources or Resources(),
            job_name="clustrix-test",
            python=self.stub,
            worker_path="/no/worker.zip",
            **spec,  # type: ignore[arg-type]
        )
        (job_dir / _wire.SCRIPT_FILE).write_text(self.scheduler.render_script(job))
        return job, job_dir

    def run(self, argv: list[str]) -> subprocess.CompletedProcess[str]:
        # run where a path that reached a shell unquoted would leave its "pwned" file
        return subprocess.run(
            argv,
            capture_output=True,
            text=True,
            timeout=120,
            cwd=self.root.parent,
            env={**os.environ, "PATH": self.path},
        )

    def launch(self, spec: JobSpec) -> list[str]:
        result = self.run(self.scheduler.submit_argv(spec, spec.path(_wire.SCRIPT_FILE)))
        assert result.returncode == 0, result.stderr
        self.started += [int(line.split()[1]) for line in result.stdout.splitlines()]
        return self.scheduler.parse_submit(spec, result.stdout)

    def status(self, job_ids: list[str]) -> dict[str, str]:
        result = self.run(self.scheduler.status_argv(job_ids))
        assert result.returncode == 0, result.stderr
        return {k: v.state for k, v in self.scheduler.parse_status(result.stdout).items()}

    def word(self, job_id: str) -> str:
        return self.status([job_id]).get(job_id, "<absent>")

    def wait_word(self, job_id: str, word: str) -> None:
        wait_until(
            f"{job_id} is {word} (is {self.word(job_id)})", lambda: self.word(job_id) == word
        )

    def cancel(self, job_ids: list[str]) -> None:
        result = self.run(self.scheduler.cancel_argv(job_ids))
        assert result.returncode == 0, result.stderr


#: The shells a host's ``sh`` may be: Debian's dash, and bash (``/bin/sh`` on Red Hat and
#: its kin, most clusters), whose ``wait`` and traps differ.
SHELLS = [pytest.param(name, id=name) for name in ("dash", "bash")]


@pytest.fixture(params=SHELLS)
def host(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Host]:
    shell = shutil.which(request.param)
    if shell is None:
        pytest.skip(f"no {request.param} here")
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    # a script, not a symlink: the programs run "sh" by name, and exec keeps the pid
    (bin_dir / "sh").write_text(f'#!/bin/sh\nexec {shell} "$@"\n')
    (bin_dir / "sh").chmod(0o755)
    path = f"{bin_dir}:{os.environ.get('PATH', '/usr/bin:/bin')}"
    root = tmp_path / WEIRD_DIR / "work"  # every path the programs see needs its quotes
    (root / "jobs").mkdir(parents=True)
    stub = tmp_path / "stub-python"
    stub.write_text(STUB)
    stub.chmod(0o755)
    scheduler = DirectScheduler("testhost", kill_grace_s=1)
    scheduler.attach(work_dir=str(root), jobs_root=str(root / "jobs"))
    out = subprocess.run(
        ["sh", "-c", DISCOVER], capture_output=True, text=True, env={"PATH": path}
    ).stdout
    scheduler.read_facts(out)
    h = Host(root, scheduler, str(stub), path)
    yield h
    for pid in h.started:  # whatever a failed test left running
        for member in session_members(pid):
            os.kill(member, 9)


def test_each_task_leads_its_own_session_and_records_pid_start_and_boot(host: Host) -> None:
    spec, job_dir = host.job(["release", "release"], name="0f3c9a")
    job_ids = host.launch(spec)
    assert job_ids == ["testhost:0f3c9a_0", "testhost:0f3c9a_1"]
    boot = Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    for task, pid in enumerate(host.started):
        fields = stat_fields(pid)
        assert fields is not None
        assert fields[2] == fields[3] == str(pid)  # process group and session of its own
        record = (job_dir / "logs" / f"{task}.run").read_text().split()
        assert record == [str(pid), fields[19], boot]  # start time: field 22
        for name in (f"{task}.run", f"{task}.out", f"{task}.err"):  # private, whatever umask
            assert (job_dir / "logs" / name).stat().st_mode & 0o077 == 0
    assert host.status(job_ids) == dict.fromkeys(job_ids, "RUNNING")
    for task in range(2):
        (job_dir / f"release-{task}").touch()
    for job_id in job_ids:
        host.wait_word(job_id, "COMPLETED")
    assert not list(host.root.parent.rglob("pwned"))  # no path was ever unquoted


def test_a_launcher_run_again_starts_no_task_twice(host: Host) -> None:
    spec, job_dir = host.job(["release", "release"], name="again")
    first = host.launch(spec)
    assert host.launch(spec) == first  # as after a connection lost during the submission
    for task in range(2):
        (job_dir / f"release-{task}").touch()
    for job_id in first:
        host.wait_word(job_id, "COMPLETED")
    assert [len((job_dir / f"starts-{t}").read_text().split()) for t in range(2)] == [1, 1]
    found = host.run(host.scheduler.find_submitted_argv(spec.path(_wire.SCRIPT_FILE)) or [])
    assert host.scheduler.parse_find_submitted(spec, found.stdout, "") == first


def test_status_words_from_exit_files_and_missing_processes(host: Host) -> None:
    spec, job_dir = host.job(["exit 0", "exit 3", "release"], name="words")
    ok, failed, lost = host.launch(spec)
    host.wait_word(ok, "COMPLETED")
    host.wait_word(failed, "FAILED")
    result = host.run(host.scheduler.status_argv([failed]))
    assert host.scheduler.parse_status(result.stdout)[failed].exit_code == 3
    host.wait_word(lost, "RUNNING")
    record = (job_dir / "logs" / "2.run").read_text().split()
    os.killpg(int(record[0]), 9)  # gone without an exit status
    host.wait_word(lost, "LOST")
    assert host.word("testhost:nosuchjob_0") == "<absent>"
    assert set(host.status([ok, failed, lost]).values()) <= set(DIRECT_STATES)


def test_a_reused_pid_is_never_taken_for_the_job(host: Host) -> None:
    spec, job_dir = host.job(["release"], name="reused")
    (job_id,) = host.launch(spec)
    record = job_dir / "logs" / "0.run"
    pid, start, boot = record.read_text().split()
    # the same pid started at another time (as after the job ended and the pid came back),
    # or since another boot: not this job
    record.write_text(f"{pid} {int(start) + 1} {boot}\n")
    assert host.word(job_id) == "LOST"
    record.write_text(f"{pid} {start} not-this-boot\n")
    assert host.word(job_id) == "LOST"
    host.cancel([job_id])  # must not touch the process that has the pid now
    assert alive(int(pid))
    record.write_text(f"{pid} {start} {boot}\n")
    assert host.word(job_id) == "RUNNING"
    (job_dir / "release-0").touch()
    host.wait_word(job_id, "COMPLETED")


def test_cancel_stops_the_whole_process_group(host: Host) -> None:
    spec, job_dir = host.job(["sleep", "stubborn"], name="cancel")
    job_ids = host.launch(spec)
    wait_until("the children run", lambda: all((job_dir / f"child-{t}").exists() for t in (0, 1)))
    children = [int((job_dir / f"child-{t}").read_text()) for t in (0, 1)]
    host.cancel(job_ids)
    # TERM for the group; the stubborn one (and its child) ignore it: KILL after the grace
    for leader, child in zip(host.started, children, strict=True):
        wait_until(f"session {leader} is empty", lambda s=leader: not session_members(s))
        assert not alive(child)
    assert host.status(job_ids) == dict.fromkeys(job_ids, "CANCELLED")
    assert (job_dir / "term-0").read_text() == "TERM\n"  # the group got it, not one process
    assert (job_dir / "exit" / "0").read_text() == "143\n"  # the script passed TERM on


def test_time_limit_stops_the_group_and_says_timeout(host: Host) -> None:
    # 0.05 min = 3 s (Resources validates whole minutes; the watchdog works in seconds)
    limited = Resources.model_construct(time_limit_min=0.05)
    spec, job_dir = host.job(["sleep", "stubborn"], limited, name="limit")
    job_ids = host.launch(spec)
    for job_id in job_ids:
        host.wait_word(job_id, "TIMEOUT")
    for leader in host.started:
        wait_until(f"session {leader} is empty", lambda s=leader: not session_members(s))
    assert (job_dir / "term-0").read_text() == "TERM\n"
    assert (job_dir / "exit" / "0").read_text() == "143\n"
    assert not (job_dir / "exit" / "1").exists()  # KILLed with its job script
    assert "time limit" in (job_dir / "logs" / "0.err").read_text()


def test_a_job_within_its_time_limit_leaves_no_watchdog_behind(host: Host) -> None:
    # tasks that end at once, many side by side: the watchdog's TERM comes at every point
    # of its start (a sleep was left behind for the whole time limit, ~1 task in 150: 300 tasks
    # found it on every run)
    n_tasks = 300
    spec, _ = host.job(["exit 0"] * n_tasks, Resources(time_limit_min=30), name="quick")
    job_ids = host.launch(spec)
    for job_id in job_ids:
        host.wait_word(job_id, "COMPLETED")

    def left() -> list[int]:
        return [pid for sid in host.started for pid in session_members(sid)]

    wait_until("the watchdogs are gone", lambda: not left())


def cuda(job_dir: Path, task: int) -> str:
    return (job_dir / f"cuda-{task}").read_text()


def test_gpus_are_handed_out_once_and_waited_for(host: Host) -> None:
    pool = {"CUDA_VISIBLE_DEVICES": "0,1"}
    spec, job_dir = host.job(["release"] * 3, Resources(gpus=1), name="gpus", environment=pool)
    job_ids = host.launch(spec)

    def holding() -> list[int]:
        return [t for t in range(3) if (job_dir / f"cuda-{t}").exists()]

    wait_until("two have GPUs", lambda: len(holding()) == 2)  # whichever came first
    first, second = holding()
    (waiting,) = {0, 1, 2} - {first, second}
    host.wait_word(job_ids[waiting], "WAITING")  # both devices are taken: it waits, unstarted
    assert host.scheduler.lifecycle("WAITING") is JobState.QUEUED
    assert {cuda(job_dir, first), cuda(job_dir, second)} == {"0", "1"}
    assert holding() == [first, second]
    (job_dir / f"release-{first}").touch()
    host.wait_word(job_ids[first], "COMPLETED")
    wait_until("the third has a GPU", lambda: len(holding()) == 3)
    assert cuda(job_dir, waiting) == cuda(job_dir, first)  # the device the first gave back
    for task in (second, waiting):
        (job_dir / f"release-{task}").touch()
    host.wait_word(job_ids[waiting], "COMPLETED")
    both, both_dir = host.job(["exit 0"], Resources(gpus=2), name="both", environment=pool)
    none, none_dir = host.job(["exit 0"], Resources(gpus=0), name="none", environment=pool)
    for job_id in host.launch(both) + host.launch(none):
        host.wait_word(job_id, "COMPLETED")
    assert cuda(both_dir, 0) == "0,1" and cuda(none_dir, 0) == ""


def test_a_gpu_held_by_a_dead_job_is_taken_over(host: Host) -> None:
    pool = {"CUDA_VISIBLE_DEVICES": "GPU-a"}
    spec, job_dir = host.job(["sleep"], Resources(gpus=1), name="holder", environment=pool)
    (holder,) = host.launch(spec)
    host.wait_word(holder, "RUNNING")
    os.killpg(host.started[0], 9)  # no clean-up ran: its claim names a process that is gone
    spec, job_dir = host.job(["exit 0"], Resources(gpus=1), name="next", environment=pool)
    (job_id,) = host.launch(spec)
    host.wait_word(job_id, "COMPLETED")
    assert cuda(job_dir, 0) == "GPU-a"


def test_gpus_beyond_the_pool_or_without_flock_are_refused(host: Host) -> None:
    pool = {"CUDA_VISIBLE_DEVICES": "0,1"}
    with pytest.raises(ConfigError, match=r"gpus=3: testhost has only 0, 1.*ask for fewer"):
        host.job(["exit 0"], Resources(gpus=3), environment=pool)
    with pytest.raises(ConfigError, match=r"gpus=1: testhost has none.*CUDA_VISIBLE_DEVICES"):
        host.job(["exit 0"], Resources(gpus=1))  # no nvidia-smi here, no pool given
    host.scheduler.has_flock = False
    with pytest.raises(ConfigError, match="needs flock"):
        host.job(["exit 0"], Resources(gpus=1), environment=pool)
