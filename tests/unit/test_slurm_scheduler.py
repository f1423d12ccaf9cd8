"""The SLURM backend's pure parsing and argv building, against outputs captured from SLURM 22.05.

Every ``*.txt`` read here is a real capture from the test cluster; ``tests/data/slurm/README.md``
says which command produced it and what the cluster looked like at the time.
"""

from __future__ import annotations

import shlex
import subprocess
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from clustrix.config import Resources
from clustrix.schedulers.base import JobSpec, TaskStatus
from clustrix.schedulers.slurm import (
    _SACCT_FIELDS,
    ENDED_STATES,
    MAX_LISTED_JOBS,
    RUNNING_STATES,
    SlurmScheduler,
    parse_exit_code,
    parse_key_values,
)

DATA = Path(__file__).resolve().parents[1] / "data" / "slurm"


def capture(name: str) -> str:
    return (DATA / name).read_text(encoding="utf-8")


def spec(n_tasks: int = 1) -> JobSpec:
    return JobSpec(
        job_dir="/home/u/.clustrix/jobs/abc",
        n_tasks=n_tasks,
        resources=Resources(),
        job_name="clustrix-f",
        python="python3",
        worker_path="/home/u/.clustrix/runtime/w.zip",
    )


# The captures asked sacct for more columns than the backend does (see cases.tsv); this keeps
# the columns ``detail_argv`` asks for, in its order, from the real rows.
CAPTURED_SACCT_COLUMNS = {
    "sacct_X_fields.txt": "JobID,JobIDRaw,State,ExitCode,DerivedExitCode,Elapsed,Reason",
    "sacct_steps_fields.txt": "JobID,JobIDRaw,State,ExitCode,DerivedExitCode,Elapsed,Reason",
    "sacct_purged_job.txt": "JobID,JobIDRaw,State,ExitCode,DerivedExitCode,Elapsed,Reason",
    "sacct_X_array_task_ids.txt": "JobID,JobIDRaw,State,ExitCode,Reason",
    "sacct_after_cancel_all.txt": "JobID,JobIDRaw,State,ExitCode,Reason",
    "sacct_after_scancel.txt": "JobID,JobIDRaw,State,ExitCode,Reason",
}


def sacct_as_requested(name: str) -> str:
    captured = CAPTURED_SACCT_COLUMNS[name].split(",")
    wanted = _SACCT_FIELDS.split(",")
    lines = []
    for line in capture(name).splitlines():
        row = dict(zip(captured, line.split("|"), strict=True))
        lines.append("|".join(row[column] for column in wanted))
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------- parse_submit
def test_parse_submit_plain_job() -> None:
    assert SlurmScheduler().parse_submit(spec(), capture("sbatch_parsable_plain.txt")) == ["3"]


def test_parse_submit_array_gives_one_id_per_task() -> None:
    ids = SlurmScheduler().parse_submit(spec(10), capture("sbatch_parsable_array.txt"))
    assert ids == [f"4_{i}" for i in range(10)]


def test_parse_submit_job_id_with_cluster_suffix() -> None:
    out = capture("sbatch_parsable_clusters.txt")
    assert out.strip() == "5;testcluster"
    assert SlurmScheduler().parse_submit(spec(), out) == ["5"]
    assert SlurmScheduler().parse_submit(spec(3), out) == ["5_0", "5_1", "5_2"]


@pytest.mark.parametrize(
    "stdout",
    [
        "",
        "\n",
        capture("sbatch_err_invalid_partition.txt"),  # sbatch's stdout on failure is empty
        capture("sbatch_err_invalid_partition.stderr.txt"),
        capture("sbatch_err_array_too_large.stderr.txt"),
        "Submitted batch job 12\n",  # sbatch without --parsable
        "abc;testcluster\n",
    ],
)
def test_parse_submit_rejects_output_without_job_id(stdout: str) -> None:
    with pytest.raises(ValueError, match="no job ID"):
        SlurmScheduler().parse_submit(spec(), stdout)


def test_submit_argv_is_parsable_sbatch_of_the_script() -> None:
    argv = SlurmScheduler().submit_argv(spec(), "/d/job.sh")
    assert argv == ["sbatch", "--parsable", "/d/job.sh"]


# --------------------------------------------------------------------------- parse_status
def test_parse_status_all_jobs_one_line_per_array_task() -> None:
    states = SlurmScheduler().parse_status(capture("squeue_all_r.txt"))
    assert len(states) == len(capture("squeue_all_r.txt").splitlines()) == 37
    assert states["26_2"] == TaskStatus("26_2", "PENDING", reason="JobArrayTaskLimit")
    assert states["26_0"].state == "RUNNING"
    assert "26_7" not in states  # cancelled while pending: vanished from squeue
    assert states["4_9"].state == "COMPLETED"
    assert states["18"] == TaskStatus("18", "FAILED", reason="NonZeroExitCode")
    assert states["6"] == TaskStatus("6", "TIMEOUT", reason="TimeLimit")
    assert states["23"] == TaskStatus("23", "CANCELLED", reason="BeginTime")
    assert states["22"].reason == "BeginTime"
    assert states["24"].reason == "JobHeldUser"
    assert states["25"].reason == "Dependency"
    assert all(s.exit_code is None for s in states.values())  # squeue's -o has no exit code
    assert {s.job_id for s in states.values()} == set(states)


def test_parse_status_states_are_all_known() -> None:
    known = RUNNING_STATES | ENDED_STATES | {"PENDING"}
    for name in ("squeue_all_r.txt", "squeue_after_cancel_all_r.txt", "squeue_slots_20_jobs.txt"):
        states = SlurmScheduler().parse_status(capture(name))
        assert states
        assert {s.state for s in states.values()} <= known


def test_parse_status_after_cancelling_everything() -> None:
    states = SlurmScheduler().parse_status(capture("squeue_after_cancel_all_r.txt"))
    assert states["26_5"] == TaskStatus("26_5", "CANCELLED", reason="JobArrayTaskLimit")
    assert states["26_0"].state == "COMPLETED"
    assert sorted(k for k, s in states.items() if s.state == "CANCELLED") == sorted(
        ["19", "22", "25", "26_5", "26_6", "26_8", "26_4", "26_2", "26_3", "24"]
    )


def test_parse_status_array_base_and_single_tasks() -> None:
    base = SlurmScheduler().parse_status(capture("squeue_j_array_base_r.txt"))
    assert sorted(base) == sorted(f"26_{i}" for i in (0, 1, 2, 3, 4, 5, 6, 8, 9))
    tasks = SlurmScheduler().parse_status(capture("squeue_j_array_task.txt"))
    assert set(tasks) == {"26_5", "26_0"}  # 26_7 asked for, but gone


@pytest.mark.parametrize(
    "name",
    [
        "squeue_j_one_unknown.txt",
        "squeue_jlist_all_unknown.txt",
        "squeue_j_single_cancelled_pending_element.txt",
        "sacct_X_bad_field.stderr.txt",
        "squeue_j_one_unknown.stderr.txt",
    ],
)
def test_parse_status_of_no_jobs_is_empty(name: str) -> None:
    assert SlurmScheduler().parse_status(capture(name)) == {}


def test_parse_status_ignores_stderr_mixed_into_stdout() -> None:
    # The poll runs squeue with 2>&1.
    text = capture("squeue_j_one_unknown.stderr.txt") + capture("squeue_j_dup_ids.txt")
    assert SlurmScheduler().parse_status(text) == {
        "18": TaskStatus("18", "FAILED", reason="NonZeroExitCode")
    }


def test_parse_status_known_ids_among_unknown_ones() -> None:
    sched = SlurmScheduler()
    assert set(sched.parse_status(capture("squeue_jlist_valid_and_unknown.txt"))) == {"19"}
    assert set(sched.parse_status(capture("squeue_jlist_unknown_and_valid.txt"))) == {"19"}
    assert set(sched.parse_status(capture("squeue_jlist_finished_and_unknown.txt"))) == {"18"}
    got = sched.parse_status(capture("squeue_j_valid_and_cancelled_pending_element.txt"))
    assert set(got) == {"18"}


def test_parse_status_reason_none_means_no_reason() -> None:
    states = SlurmScheduler().parse_status(capture("squeue_all_r.txt"))
    assert states["19"].reason == ""
    assert states["21"].reason == ""


# --------------------------------------------------------------------------- status_ok_anyway
def test_status_ok_anyway_for_single_unknown_id() -> None:
    sched = SlurmScheduler()
    for name in (
        "squeue_j_one_unknown.stderr.txt",
        "squeue_j_purged_after_minjobage.stderr.txt",
        "squeue_j_unknown_array_task.stderr.txt",
        "squeue_me_j_unknown.stderr.txt",
    ):
        assert sched.status_ok_anyway(capture(name)), name


@pytest.mark.parametrize(
    "output",
    [
        "",
        capture("sacct_X_bad_field.stderr.txt"),
        "slurm_load_jobs error: Unable to contact slurm controller (connect failure)\n",
        "sh: 1: squeue: not found\n",
    ],
)
def test_status_not_ok_for_real_failures(output: str) -> None:
    assert not SlurmScheduler().status_ok_anyway(output)


# --------------------------------------------------------------------------- status_argv
def test_status_argv_lists_bases_deduplicated_and_sorted_numerically() -> None:
    argv = SlurmScheduler().status_argv(["26_2", "100", "4", "26_0", "4_1", "9"])
    assert argv == ["squeue", "-h", "-t", "all", "-r", "-o", "%i|%T|%r", "-j", "4,9,26,100"]


def test_status_argv_asks_for_finished_jobs_and_one_line_per_task() -> None:
    # -t all: finished jobs stay listed (squeue_jlist_finished_no_t is empty without it);
    # -r: pending array tasks one per line (squeue_all_compact folds them into 26_[2-6,...]).
    argv = SlurmScheduler().status_argv(["1"])
    assert argv[argv.index("-t") + 1] == "all"
    assert "-r" in argv
    assert argv[argv.index("-o") + 1] == "%i|%T|%r"
    assert not capture("squeue_jlist_finished_no_t.txt").strip()


def test_status_argv_many_tasks_of_one_array_stay_one_id() -> None:
    argv = SlurmScheduler().status_argv([f"7_{i}" for i in range(5000)])
    assert argv[-2:] == ["-j", "7"]


def test_status_argv_switches_to_me_past_max_listed_jobs() -> None:
    sched = SlurmScheduler()
    at_limit = sched.status_argv([str(i) for i in range(1, MAX_LISTED_JOBS + 1)])
    assert at_limit[-2] == "-j"
    assert at_limit[-1].split(",") == [str(i) for i in range(1, MAX_LISTED_JOBS + 1)]
    # duplicates and array tasks do not count towards the limit
    dup = [str(i) for i in range(1, MAX_LISTED_JOBS + 1)] * 2 + ["1_5"]
    assert sched.status_argv(dup)[-2] == "-j"
    past = sched.status_argv([str(i) for i in range(1, MAX_LISTED_JOBS + 2)])
    assert past[-1] == "--me"
    assert "-j" not in past


@given(
    st.lists(
        st.tuples(st.integers(1, 10**7), st.one_of(st.none(), st.integers(0, 1000))),
        min_size=1,
        max_size=40,
    )
)
def test_status_argv_covers_exactly_the_bases(ids: list[tuple[int, int | None]]) -> None:
    job_ids = [str(b) if t is None else f"{b}_{t}" for b, t in ids]
    argv = SlurmScheduler().status_argv(job_ids)
    listed = [int(x) for x in argv[argv.index("-j") + 1].split(",")]
    assert listed == sorted({b for b, _ in ids})


# --------------------------------------------------------------------------- parse_detail
def test_detail_fields_are_valid_sacct_fields() -> None:
    valid = set(capture("sacct_helpformat.txt").split())
    sched = SlurmScheduler(use_sacct=True)
    argv = sched.detail_argv(["1"])
    assert argv is not None
    sacct = shlex.split(argv[2].partition(" 2>/dev/null")[0])
    assert set(sacct[sacct.index("-o") + 1].split(",")) <= valid


def test_parse_detail_sacct_final_states() -> None:
    details = SlurmScheduler().parse_detail(sacct_as_requested("sacct_X_fields.txt"))
    assert details["18"] == TaskStatus("18", "FAILED", reason="", exit_code=7)
    assert details["21"] == TaskStatus("21", "CANCELLED", reason="", exit_code=None)
    assert details["23"] == TaskStatus("23", "CANCELLED", reason="BeginTime", exit_code=None)
    assert details["6"].state == "TIMEOUT"
    assert details["2"] == TaskStatus("2", "COMPLETED", exit_code=0)
    # sacct says 0:0 for jobs that never exited normally: that is no exit status
    assert details["22"] == TaskStatus("22", "PENDING", reason="BeginTime", exit_code=None)
    assert details["6"].exit_code is None
    # array tasks by <base>_<task>, as the executor's job ids are
    assert details["4_9"].state == "COMPLETED"
    assert [details[f"29_{i}"].exit_code for i in range(4)] == [0, 1, 2, 3]
    assert details["29_0"].state == "COMPLETED"
    assert details["29_3"].state == "FAILED"
    assert details["26_1"].state == "RUNNING"
    assert len(details) == 31


def test_parse_detail_sacct_cancelled_by_uid_is_cancelled() -> None:
    details = SlurmScheduler().parse_detail(sacct_as_requested("sacct_after_cancel_all.txt"))
    for job_id in ("19", "22", "24", "25", "26_2", "26_3", "26_4"):
        assert details[job_id].state == "CANCELLED", job_id
    assert details["24"].reason == "JobHeldUser"
    assert details["26_0"] == TaskStatus("26_0", "COMPLETED", exit_code=0)


def test_parse_detail_sacct_array_task_ids_and_purged_job() -> None:
    sched = SlurmScheduler()
    tasks = sched.parse_detail(sacct_as_requested("sacct_X_array_task_ids.txt"))
    assert tasks == {
        "26_0": TaskStatus("26_0", "RUNNING", exit_code=None),
        "29_2": TaskStatus("29_2", "FAILED", exit_code=2),
    }
    purged = sched.parse_detail(sacct_as_requested("sacct_purged_job.txt"))
    assert purged == {"6": TaskStatus("6", "TIMEOUT", exit_code=None)}


def test_parse_detail_sacct_signal_exit_code_of_batch_step() -> None:
    details = SlurmScheduler().parse_detail(sacct_as_requested("sacct_steps_fields.txt"))
    assert details["21.batch"] == TaskStatus("21.batch", "CANCELLED", exit_code=143)
    assert details["6.batch"].exit_code == 143
    assert details["18.batch"].exit_code == 7


@pytest.mark.parametrize(
    "text",
    [
        "",
        capture("sacct_X_unknown.txt"),
        capture("sacct_X_bad_field.stderr.txt"),
        capture("scontrol_show_job_unknown.stderr.txt"),
        capture("scontrol_show_job_array_task_cancelled_pending.txt"),  # "Job 26_7 not found"
        "JobID|State|ExitCode|Reason\n",  # a header line
    ],
)
def test_parse_detail_without_jobs_is_empty(text: str) -> None:
    assert SlurmScheduler().parse_detail(text) == {}


def test_parse_detail_scontrol_failed_timeout_cancelled() -> None:
    sched = SlurmScheduler()
    assert sched.parse_detail(capture("scontrol_show_job_failed.txt")) == {
        "18": TaskStatus("18", "FAILED", reason="NonZeroExitCode", exit_code=7)
    }
    assert sched.parse_detail(capture("scontrol_show_job_timeout.txt")) == {
        "6": TaskStatus("6", "TIMEOUT", reason="TimeLimit", exit_code=143)
    }
    assert sched.parse_detail(capture("scontrol_show_job_cancelled.txt")) == {
        "21": TaskStatus("21", "CANCELLED", reason="", exit_code=143)
    }


def test_parse_detail_scontrol_array_tasks_as_base_task() -> None:
    sched = SlurmScheduler()
    finished = sched.parse_detail(capture("scontrol_show_job_array_base_finished.txt"))
    assert finished == {
        "29_3": TaskStatus("29_3", "FAILED", reason="NonZeroExitCode", exit_code=3),
        "29_2": TaskStatus("29_2", "FAILED", reason="NonZeroExitCode", exit_code=2),
        "29_1": TaskStatus("29_1", "FAILED", reason="NonZeroExitCode", exit_code=1),
        "29_0": TaskStatus("29_0", "COMPLETED", reason="", exit_code=0),
    }
    running = sched.parse_detail(capture("scontrol_show_job_array_task_running.txt"))
    assert running == {"26_0": TaskStatus("26_0", "RUNNING", exit_code=None)}  # JobId=27 itself
    pending = sched.parse_detail(capture("scontrol_show_job_array_task_pending.txt"))
    assert pending == {
        "26_5": TaskStatus("26_5", "PENDING", reason="JobArrayTaskLimit", exit_code=None)
    }
    base = sched.parse_detail(capture("scontrol_show_job_array_base.txt"))
    assert base["26_0"].state == base["26_1"].state == "RUNNING"
    assert "26" not in base and "27" not in base and "28" not in base


def test_parse_detail_scontrol_lines_of_several_jobs() -> None:
    text = "".join(
        capture(f"scontrol_show_job_{n}.txt") for n in ("failed", "timeout", "array_base_finished")
    )
    assert set(SlurmScheduler().parse_detail(text)) == {"18", "6", "29_0", "29_1", "29_2", "29_3"}


def test_parse_key_values_of_an_scontrol_line() -> None:
    fields = parse_key_values(capture("scontrol_show_job_failed.txt"))
    assert fields["JobId"] == "18"
    assert fields["ExitCode"] == "7:0"
    assert fields["UserId"] == "clustrix(1001)"
    assert fields["AllocNode:Sid"] == "localhost:8625"
    assert fields["TRES"] == "cpu=1,node=1,billing=1"  # split at the first '=' only
    assert fields["NodeList"] == "vm"
    assert fields["Power"] == ""


# --------------------------------------------------------------------------- exit codes
@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("0:0", 0),
        ("7:0", 7),
        ("1:0", 1),
        ("0:15", 143),  # killed by SIGTERM: cancelled or timed out
        ("0:9", 137),
        ("2:0\n", 2),
        (" 3:0 ", 3),
        ("3", 3),
        ("", None),
        ("N/A", None),
        (":15", None),
        ("-1:0", None),
    ],
)
def test_parse_exit_code(text: str, expected: int | None) -> None:
    assert parse_exit_code(text) == expected


@given(st.integers(0, 255), st.integers(1, 64))
def test_parse_exit_code_signal_wins(code: int, signal: int) -> None:
    assert parse_exit_code(f"{code}:{signal}") == 128 + signal
    assert parse_exit_code(f"{code}:0") == code


# --------------------------------------------------------------------------- cancel, detail argv
def test_cancel_argv_one_scancel_for_all_ids() -> None:
    argv = SlurmScheduler().cancel_argv(["26_2", "26_9", "19"])
    assert argv == ["scancel", "26_2", "26_9", "19"]


def test_detail_argv_with_sacct_falls_back_to_scontrol() -> None:
    argv = SlurmScheduler(use_sacct=True).detail_argv(["26_5", "18", "29_2"])
    assert argv is not None
    assert argv[:2] == ["sh", "-c"]
    assert argv[2].startswith(
        "sacct -X -n -P -o JobID,State,ExitCode,Reason -j 26_5,18,29_2 2>/dev/null || "
    )
    assert argv[4:] == ["18", "26", "29"]  # scontrol takes whole jobs (array bases)


def test_detail_script_uses_scontrol_when_sacct_fails(tmp_path: Path) -> None:
    # stand-ins on PATH: an sacct whose database is down, an scontrol that knows the job
    (tmp_path / "sacct").write_text("#!/bin/sh\necho 'Unable to connect to database' >&2\nexit 1\n")
    line = capture("scontrol_show_job_failed.txt").strip()
    (tmp_path / "scontrol").write_text(f"#!/bin/sh\ncat <<'EOF'\n{line}\nEOF\n")
    for name in ("sacct", "scontrol"):
        (tmp_path / name).chmod(0o755)
    sched = SlurmScheduler(use_sacct=True)
    argv = sched.detail_argv(["18"])
    assert argv is not None
    out = subprocess.run(
        argv, capture_output=True, text=True, env={"PATH": f"{tmp_path}:/usr/bin:/bin"}
    ).stdout
    assert sched.parse_detail(out)["18"].state == "FAILED"
    assert sched.parse_detail(out)["18"].exit_code == 7


@pytest.mark.parametrize("use_sacct", [False, None])
def test_detail_argv_without_sacct_shows_each_base_with_scontrol(use_sacct: bool | None) -> None:
    argv = SlurmScheduler(use_sacct=use_sacct).detail_argv(["26_5", "100", "9", "26_0"])
    assert argv is not None
    assert argv[:2] == ["sh", "-c"]
    assert "scontrol -o show job" in argv[2]
    assert "exit 0" in argv[2]  # an unknown id (exit 1) must not hide the others' output
    # the ids travel as positional parameters, never inside the script text
    assert argv[4:] == ["9", "26", "100"]
    assert "26" not in argv[2]


# --------------------------------------------------------------------------- discovery
def test_read_config_of_the_test_cluster() -> None:
    sched = SlurmScheduler()
    assert sched.use_sacct is None
    sched.read_config(capture("scontrol_show_config.txt"))
    assert sched.max_array_size == 1001
    assert sched.use_sacct is True
    assert "sacct" in sched.detail_argv(["1"])[2]  # type: ignore[index]


def test_read_config_max_array_size_is_read_not_assumed() -> None:
    text = capture("scontrol_show_config.txt").replace(
        "MaxArraySize            = 1001", "MaxArraySize            = 40001"
    )
    assert "40001" in text
    sched = SlurmScheduler()
    sched.read_config(text)
    assert sched.max_array_size == 40001


def without_accounting() -> str:
    text = capture("scontrol_show_config.txt").replace(
        "accounting_storage/slurmdbd", "accounting_storage/none"
    )
    assert "accounting_storage/none" in text
    return text


def test_read_config_without_accounting_uses_scontrol() -> None:
    sched = SlurmScheduler()
    sched.read_config(without_accounting())
    assert sched.use_sacct is False
    assert sched.detail_argv(["1"])[0] == "sh"  # type: ignore[index]


def test_read_config_keeps_a_forced_choice() -> None:
    forced_on = SlurmScheduler(use_sacct=True)
    forced_on.read_config(without_accounting())
    assert forced_on.use_sacct is True
    forced_off = SlurmScheduler(use_sacct=False)
    forced_off.read_config(capture("scontrol_show_config.txt"))
    assert forced_off.use_sacct is False


def test_read_partitions_and_slots() -> None:
    sched = SlurmScheduler()
    assert sched.slots(Resources()) is None  # nothing discovered yet
    sched.read_partitions(capture("scontrol_show_partition.txt"))
    # TotalCPUs=2 x OverSubscribe=FORCE:8
    assert sched.slots(Resources()) == 16
    assert sched.slots(Resources(cores=2)) == 8
    assert sched.slots(Resources(partition="debug", cores=1)) == 16
    assert sched.slots(Resources(partition="nosuchpart")) is None


def test_slots_match_what_the_cluster_ran() -> None:
    # Of 20 one-CPU jobs submitted together, exactly as many ran as slots() predicts.
    sched = SlurmScheduler()
    sched.read_partitions(capture("scontrol_show_partition.txt"))
    states = sched.parse_status(capture("squeue_slots_20_jobs.txt"))
    running = [s for s in states.values() if s.state == "RUNNING"]
    assert len(states) == 20
    assert len(running) == sched.slots(Resources())


def test_read_partitions_oversubscription_modes_and_default() -> None:
    line = capture("scontrol_show_partition.txt").strip()
    other = (
        line.replace("PartitionName=debug", "PartitionName=big")
        .replace("Default=YES", "Default=NO")
        .replace("OverSubscribe=FORCE:8", "OverSubscribe=YES:4")
        .replace("TotalCPUs=2", "TotalCPUs=48")
    )
    exclusive = (
        line.replace("PartitionName=debug", "PartitionName=excl")
        .replace("Default=YES", "Default=NO")
        .replace("OverSubscribe=FORCE:8", "OverSubscribe=EXCLUSIVE")
    )
    sched = SlurmScheduler()
    sched.read_partitions("\n".join([other, exclusive, line]) + "\n")
    assert sched.slots(Resources(partition="big")) == 48  # YES:4 shares only on request
    assert sched.slots(Resources(partition="big", cores=5)) == 9
    assert sched.slots(Resources(partition="excl")) == 2
    assert sched.slots(Resources()) == 16  # the Default=YES partition
    assert sched.slots(Resources(cores=64)) == 1  # never below one


def test_max_array_size_default_before_discovery() -> None:
    assert SlurmScheduler().max_array_size == 1001
    assert SlurmScheduler.supports_array_throttle is True


# Captured from `squeue --me -h -t all -o '%F|%o'` on the test cluster: a pending array
# (one collapsed line), its running task, an unrelated job, and a path with a space.
FIND_SUBMITTED_OUTPUT = """\
45373|/tmp/lk/job one.sh
45372|/tmp/exp1.sh
45373|/tmp/lk/job one.sh
45374|/home/u/.clustrix/jobs/ab12/job.sh
"""


def test_find_submitted_argv_lists_every_job_of_the_user_with_its_command() -> None:
    argv = SlurmScheduler().find_submitted_argv("/x/job.sh")
    assert argv == ["squeue", "--me", "-h", "-t", "all", "-o", "%F|%o"]


def test_parse_find_submitted_finds_the_job_of_the_script() -> None:
    found = SlurmScheduler().parse_find_submitted(
        spec(), FIND_SUBMITTED_OUTPUT, "/home/u/.clustrix/jobs/ab12/job.sh"
    )
    assert found == ["45374"]


def test_parse_find_submitted_numbers_array_tasks() -> None:
    found = SlurmScheduler().parse_find_submitted(
        spec(3), FIND_SUBMITTED_OUTPUT, "/tmp/lk/job one.sh"
    )
    assert found == ["45373_0", "45373_1", "45373_2"]


@pytest.mark.parametrize("path", ["/tmp/lk/job", "/home/u/.clustrix/jobs/ab12", "job.sh", ""])
def test_parse_find_submitted_is_none_when_the_script_is_not_queued(path: str) -> None:
    assert SlurmScheduler().parse_find_submitted(spec(), FIND_SUBMITTED_OUTPUT, path) is None
