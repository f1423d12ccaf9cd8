"""The Grid Engine backend's pure parsing and argv building, against outputs captured from
Debian 12's gridengine 8.1.9 (``tests/data/sge/``: ``README.md`` says which command produced
each file, ``jobs.json`` which job is which)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from clustrix.config import ClusterConfig, Resources
from clustrix.errors import ConfigError
from clustrix.lifecycle import JobState
from clustrix.schedulers import _sge_sh
from clustrix.schedulers.base import JobSpec, TaskStatus
from clustrix.schedulers.sge import (
    QACCT_FAILED,
    SGE_STATES,
    SgeScheduler,
    expand_tasks,
    job_ranges,
    parse_qacct,
    parse_qstat_xml,
)

DATA = Path(__file__).resolve().parents[1] / "data" / "sge"
JOBS: dict[str, str] = json.loads((DATA / "jobs.json").read_text())


def capture(name: str) -> str:
    return (DATA / name).read_text(encoding="utf-8")


def job(label: str) -> str:
    return JOBS[label]


def spec(n_tasks: int = 1, **resources: object) -> JobSpec:
    return JobSpec(
        job_dir="/home/u/.clustrix/jobs/0f3c9a",
        n_tasks=n_tasks,
        resources=Resources(**resources),  # type: ignore[arg-type]
        job_name="clustrix-f",
        python="python3",
        worker_path="/home/u/.clustrix/runtime/w.zip",
    )


def discovered(text: str | None = None, **hint: str) -> SgeScheduler:
    scheduler = SgeScheduler(environment=hint)
    scheduler.read_discovery(text if text is not None else discovery_answer())
    return scheduler


def discovery_answer(found: str = "path", bin_dir: str = "/usr/bin", env: str = "") -> str:
    """What the discovery script prints, around the captured qconf/qstat outputs."""
    m = _sge_sh.DISCOVER_MARK
    return "\n".join(
        [
            f"{m} found={found}",
            f"{m} bin={bin_dir}",
            *(f"{m} env {pair}" for pair in env.split()),
            f"{m} conf",
            capture("qconf_sconf.txt"),
            f"{m} pes",
            capture("qconf_sp_smp.txt"),
            f"{m} queues",
            capture("qstat_g_c.txt"),
        ]
    )


# --------------------------------------------------------------------------- submission
def test_parse_submit_plain_job_and_array() -> None:
    sched = SgeScheduler()
    plain = capture("qsub_terse_plain.txt")
    assert plain.strip().isdigit()
    assert sched.parse_submit(spec(), plain) == [plain.strip()]
    array = capture("qsub_terse_array.txt")
    number, _, tasks = array.strip().partition(".")
    assert tasks == "1-10:1"
    ids = sched.parse_submit(spec(10), array)
    assert ids == [f"{number}.{i}" for i in range(1, 11)]  # task index i is Grid Engine's i+1
    throttled = sched.parse_submit(spec(4), capture("qsub_terse_array_throttled.txt"))
    assert throttled[-1].endswith(".4")


@pytest.mark.parametrize(
    "stdout",
    [
        "",
        capture("qsub_plain_message.txt"),  # without -terse: "Your job 91 (...) ..."
        capture("qsub_err_unknown_queue.stderr.txt"),
        capture("qsub_err_qmaster_down.stderr.txt"),
    ],
)
def test_parse_submit_rejects_output_without_job_id(stdout: str) -> None:
    with pytest.raises(ValueError, match="no job ID"):
        SgeScheduler().parse_submit(spec(), stdout)


def test_submit_argv_is_terse_qsub_of_the_script() -> None:
    assert SgeScheduler().submit_argv(spec(), "/d/job.sh") == ["qsub", "-terse", "/d/job.sh"]


@pytest.mark.parametrize(
    ("name", "transient", "count_limit"),
    [
        ("qsub_err_max_u_jobs", True, True),
        ("qsub_err_max_u_jobs_array", True, True),
        ("qsub_err_qmaster_down", True, False),
        ("qsub_err_array_too_large", False, True),
        ("qsub_err_unknown_queue", False, False),
        ("qsub_err_unknown_pe", False, False),
        ("qsub_err_unknown_project", False, False),
        ("qsub_err_bad_h_rt", False, False),
        ("qsub_err_unknown_resource", False, False),
        ("qsub_err_name_space", False, False),
        ("qsub_err_no_sge_root", False, False),
    ],
)
def test_refusals_are_told_apart(name: str, transient: bool, count_limit: bool) -> None:
    message = capture(f"{name}.stderr.txt")
    sched = SgeScheduler()
    assert sched.is_transient_submit_error(message) is transient
    assert sched.is_job_count_limit(message) is count_limit


# --------------------------------------------------------------------------- status
def test_parse_status_mixed_states_one_entry_per_task() -> None:
    states = parse_qstat_xml(capture("qstat_xml_mixed.txt"))
    running, held, array = job("running"), job("held"), job("array_throttled")
    eqw, eqw_array = job("eqw"), job("eqw_array")
    assert states[running] == TaskStatus(running, "r")
    assert states[held] == TaskStatus(held, "hqw")
    assert [states[f"{array}.{t}"].state for t in range(1, 7)] == ["r", "r", "qw", "qw", "qw", "qw"]
    assert array not in states  # an array's tasks, never the array itself
    assert states[eqw].state == "Eqw"
    assert [states[f"{eqw_array}.{t}"].state for t in (1, 2, 3)] == ["Eqw"] * 3
    assert job("other_users_job") not in states  # -u: this user's jobs only
    assert all(s.exit_code is None and not s.reason for s in states.values())


def test_parse_status_without_jobs_or_without_answer_is_empty() -> None:
    assert parse_qstat_xml(capture("qstat_xml_no_jobs.txt")) == {}
    assert parse_qstat_xml(capture("qstat_xml_qmaster_down.stderr.txt")) == {}
    assert parse_qstat_xml("") == {}


def test_parse_status_suspended_rescheduled_deleting() -> None:
    running = job("running")
    assert parse_qstat_xml(capture("qstat_xml_suspended_job.txt"))[running].state == "s"
    assert parse_qstat_xml(capture("qstat_xml_queue_suspended.txt"))[running].state == "S"
    rescheduled = parse_qstat_xml(capture("qstat_xml_rescheduled.txt"))[job("rescheduled")]
    assert rescheduled.state == "Rq"
    deleting = parse_qstat_xml(capture("qstat_xml_deleting_execd_down.txt"))[job("deleting")]
    assert deleting.state == "dr"


def test_parse_status_array_after_some_tasks_deleted() -> None:
    array = job("array_throttled")
    states = parse_qstat_xml(capture("qstat_xml_array_after_qdel_tasks.txt"))
    assert sorted(k for k in states if k.startswith(f"{array}.")) == [f"{array}.3", f"{array}.4"]


def test_error_reasons_come_with_the_error_state() -> None:
    eqw, eqw_array = job("eqw"), job("eqw_array")
    text = (
        capture("qstat_xml_mixed.txt")
        + _sge_sh.ERRORS_MARK
        + "\n"
        + capture("qstat_j_list_error_and_other.txt")
    )
    states = parse_qstat_xml(text)
    assert states[eqw].state == "Eqw"
    assert states[eqw].reason.startswith(
        "error: can't chdir to /no/such/dir: No such file or directory (Grid Engine holds"
    )
    assert "clustrix deletes it" in states[eqw].reason
    for task in (1, 2, 3):
        assert "can't chdir" in states[f"{eqw_array}.{task}"].reason
    assert states[job("running")].reason == ""  # in the qstat -j list, not in error


@pytest.mark.parametrize(
    ("text", "tasks"),
    [
        ("1-3:1", [1, 2, 3]),
        ("2,3", [2, 3]),
        ("5", [5]),
        ("3-6:1", [3, 4, 5, 6]),
        ("1-9:4", [1, 5, 9]),
    ],
)
def test_expand_tasks(text: str, tasks: list[int]) -> None:
    assert list(expand_tasks(text)) == tasks


def test_status_argv_is_one_script_with_our_job_numbers_as_ranges() -> None:
    argv = SgeScheduler().status_argv(["12.1", "12.2", "13", "15", "14.7", "40"])
    assert argv[:2] == ["sh", "-c"]
    assert argv[3:] == ["clustrix-sge-status", "12-15,40"]
    assert "qstat -xml -u" in argv[2]


@given(st.lists(st.integers(1, 10**7), min_size=1, max_size=60))
def test_job_ranges_cover_exactly_the_job_numbers(numbers: list[int]) -> None:
    ranges = job_ranges([str(n) for n in numbers] + [f"{numbers[0]}.3"])
    covered: set[int] = set()
    for item in ranges:
        first, _, last = item.partition("-")
        covered |= set(range(int(first), int(last or first) + 1))
    assert covered == set(numbers)


def test_status_argv_stays_bounded() -> None:
    argv = SgeScheduler().status_argv([str(n) for n in range(1, 20_000, 2)])
    assert len(argv[-1].split(",")) == 300


# --------------------------------------------------------------------------- accounting
def test_parse_detail_completed_failed_deleted_timed_out() -> None:
    sched = SgeScheduler()
    done = sched.parse_detail(capture("qacct_j_completed.txt"))
    assert done == {job("completed"): TaskStatus(job("completed"), "exited", exit_code=0)}
    exit7 = sched.parse_detail(capture("qacct_j_exit7.txt"))[job("exit7")]
    assert (exit7.state, exit7.exit_code) == ("exited", 7)
    deleted = sched.parse_detail(capture("qacct_j_qdel_running.txt"))[job("running")]
    assert (deleted.state, deleted.exit_code) == ("failed 100", 137)
    assert deleted.reason.startswith("deleted (qdel) or killed by a signal")
    assert sched.lifecycle(deleted.state) is JobState.CANCELLED
    h_rt = sched.parse_detail(capture("qacct_j_h_rt.txt"))[job("h_rt")]
    assert (h_rt.state, h_rt.exit_code) == ("failed 37", 137)
    assert sched.lifecycle(h_rt.state) is JobState.TIMED_OUT
    assert "h_rt" in h_rt.reason


def test_parse_detail_array_tasks_and_error_state_and_lost_job() -> None:
    sched = SgeScheduler()
    array = job("array_exit_codes")
    tasks = sched.parse_detail(capture("qacct_j_array_exit_codes.txt"))
    assert {k: v.exit_code for k, v in tasks.items()} == {
        f"{array}.{t}": t % 3 for t in (1, 2, 3, 4)
    }
    eqw = sched.parse_detail(capture("qacct_j_eqw.txt"))[job("eqw")]
    assert eqw.state == "failed 28"
    assert "changing into working directory" in eqw.reason
    assert sched.lifecycle(eqw.state) is JobState.FAILED
    lost = sched.parse_detail(capture("qacct_j_killed_while_execd_down.txt"))
    assert sched.lifecycle(lost[job("killed_while_execd_down")].state) is JobState.LOST
    killed = sched.parse_detail(capture("qacct_j_job_shell_child_killed.txt"))
    assert killed[job("worker_killed")] == TaskStatus(job("worker_killed"), "exited", exit_code=137)


def test_parse_detail_last_record_of_a_rescheduled_job_counts() -> None:
    rescheduled, running = job("rescheduled"), job("running")
    first = capture("qacct_j_rescheduled.txt")  # qmod -rj: the run that was rescheduled
    assert parse_qacct(first)[rescheduled].state == "failed 25"
    assert SgeScheduler().lifecycle("failed 25") is JobState.LOST
    # a rescheduled job has one record per run, in the order they ended
    second = capture("qacct_j_qdel_running.txt").replace(
        f"jobnumber    {running} ", f"jobnumber    {rescheduled} "
    )
    assert parse_qacct(first + second)[rescheduled].state == "failed 100"


@pytest.mark.parametrize(
    "name", ["qacct_j_unknown.txt", "qacct_j_unknown.stderr.txt", "qacct_j_qdel_pending.txt", ""]
)
def test_parse_detail_without_records_is_empty(name: str) -> None:
    assert parse_qacct(capture(name) if name else "") == {}


def test_detail_argv_waits_for_accounting_and_asks_each_job_once() -> None:
    sched = discovered()
    argv = sched.detail_argv(["12.1", "12.2", "9"])
    assert argv is not None
    assert argv[3:] == ["clustrix-sge-qacct", "1", "9", "12"]  # accounting_flush_time 0 + 1


# --------------------------------------------------------------------------- cancel
def test_cancel_argv_one_qdel_with_task_ranges() -> None:
    ids = ["7", *[f"12.{t}" for t in (1, 2, 3, 5, 9, 10)], "3"]
    assert SgeScheduler().cancel_argv(ids) == ["qdel", "3", "7", "12.1-3", "12.5", "12.9-10"]


def test_qdel_output_of_ranges_and_errors_captured() -> None:
    array = job("array_throttled")
    assert f"tasks 5,6 of job {array}" in capture("qdel_array_tasks.txt")
    assert f"task {array}.1 for deletion" in capture("qdel_array_tasks.txt")
    assert "does not exist" in capture("qdel_unknown.txt")  # qdel says so on stdout, exit 1


# --------------------------------------------------------------------------- lifecycle
def test_every_captured_native_word_is_mapped() -> None:
    """Every state word in the captured qstat/qacct output has an explicit entry."""
    seen: set[str] = set()
    for path in DATA.glob("qstat_xml_*.txt"):
        seen |= {s.state for s in parse_qstat_xml(path.read_text()).values()}
    for path in DATA.glob("qacct_j_*.txt"):
        seen |= {s.state for s in parse_qacct(path.read_text()).values()}
    assert {"r", "qw", "hqw", "Eqw", "s", "S", "Rq", "dr", "exited", "failed 100"} <= seen
    assert seen <= set(SGE_STATES), seen - set(SGE_STATES)


@pytest.mark.parametrize(
    ("word", "state"),
    [
        ("qw", JobState.QUEUED),
        ("hqw", JobState.QUEUED),
        ("t", JobState.RUNNING),
        ("Rr", JobState.RUNNING),
        ("Rq", JobState.REQUEUED),
        ("s", JobState.QUEUED),
        ("Eqw", JobState.FAILED),
        ("dr", JobState.CANCELLED),
        ("failed 37", JobState.TIMED_OUT),
        ("failed 100", JobState.CANCELLED),
        ("failed 19", JobState.LOST),
        ("failed 28", JobState.FAILED),
        # not listed: judged by the letters, never silently queued when it has ended
        ("hEqw", JobState.FAILED),
        ("dhRqw", JobState.CANCELLED),
        ("failed 99", JobState.FAILED),
        ("hRr", JobState.RUNNING),
        ("RhS", JobState.QUEUED),
        ("Xyz", JobState.QUEUED),
        # the engine's own words are not Grid Engine's letters
        ("PENDING", JobState.QUEUED),
        ("COMPLETED", JobState.QUEUED),
        ("UNKNOWN", JobState.QUEUED),
    ],
)
def test_lifecycle_of_native_words(word: str, state: JobState) -> None:
    assert SgeScheduler().lifecycle(word) is state


def test_qacct_failure_codes_are_all_final() -> None:
    assert all(state.is_final for _, state in QACCT_FAILED.values())


# --------------------------------------------------------------------------- discovery
def test_discovery_reads_limits_pes_slots_and_accounting_delay() -> None:
    sched = discovered()
    assert sched.max_array_size == 75000
    assert sched.parallel_environments == {"smp": "$pe_slots"}
    assert sched.parallel_environment() == "smp"
    assert sched.queue_slots == {"all.q": 16}
    assert sched.slots(Resources()) == 16
    assert sched.slots(Resources(cores=4)) == 4
    assert sched.slots(Resources(partition="other.q")) is None
    assert sched.accounting_wait_s == 1  # accounting_flush_time=00:00:00
    assert sched.env == {} and sched.submit_argv(spec(), "/j.sh")[0] == "qsub"


def test_discovery_of_a_default_flush_time_and_a_small_array_limit() -> None:
    sched = SgeScheduler()
    sched.read_config(
        "max_aj_tasks                 500\n"
        "reporting_params             accounting=true reporting=false \\\n"
        "                             flush_time=00:00:15 joblog=false sharelog=00:00:00\n"
    )
    assert sched.max_array_size == 500
    assert sched.accounting_wait_s == 16


def test_commands_found_through_settings_carry_their_environment() -> None:
    answer = discovery_answer(
        found="settings",
        bin_dir="/opt/sge/bin/lx-amd64",
        env="SGE_ROOT=/opt/sge SGE_CELL=default SGE_QMASTER_PORT=6444",
    )
    sched = discovered(answer)
    assert sched.submit_argv(spec(), "/j.sh") == [
        "env",
        "SGE_CELL=default",
        "SGE_QMASTER_PORT=6444",
        "SGE_ROOT=/opt/sge",
        "/opt/sge/bin/lx-amd64/qsub",
        "-terse",
        "/j.sh",
    ]
    status = sched.status_argv(["5"])[2]
    assert status.startswith("export SGE_CELL=default\n")
    assert "out=$(/opt/sge/bin/lx-amd64/qstat -xml" in status


def test_sge_root_from_environment_variables_is_the_one_tried() -> None:
    config = ClusterConfig(cluster_type="sge", environment_variables={"SGE_ROOT": "/opt/x"})
    sched = SgeScheduler.from_config(config)
    assert isinstance(sched, SgeScheduler)
    assert sched.hint == {"SGE_ROOT": "/opt/x"}


def test_grid_engine_not_found_names_the_fix() -> None:
    m = _sge_sh.DISCOVER_MARK
    answer = (
        f"{m} missing\n{m} qsub=none\n{m} SGE_ROOT=\n{m} tried=/var/lib/gridengine /opt/sge\n"
        f"{m} error=sh: 1: qconf: not found\n"
    )
    with pytest.raises(ConfigError) as info:
        SgeScheduler().read_discovery(answer)
    message = str(info.value)
    assert "Grid Engine not found" in message and "SGE_ROOT=unset" in message
    assert "settings.sh" in message and "environment_variables={'SGE_ROOT'" in message
    with pytest.raises(ConfigError, match=r"SGE_ROOT=/no/such \(environment_variables\)"):
        SgeScheduler(environment={"SGE_ROOT": "/no/such"}).read_discovery(
            answer.replace("SGE_ROOT=\n", "SGE_ROOT=/no/such\n")
        )


# --------------------------------------------------------------------------- find submitted
FIND_OUTPUT = """\
job_number:                 153
account:                    clustrix_0f3c9a
job_number:                 160
account:                    sge
jobnumber    150
account      clustrix_77aa
"""


def test_find_submitted_by_the_account_string_of_the_job_dir() -> None:
    sched = SgeScheduler()
    argv = sched.find_submitted_argv("/home/u/.clustrix/jobs/0f3c9a/job.sh")
    assert argv is not None and argv[-1] == "clustrix_0f3c9a"
    found = sched.parse_find_submitted(spec(3), FIND_OUTPUT, "/x/jobs/0f3c9a/job.sh")
    assert found == ["153.1", "153.2", "153.3"]
    finished = sched.parse_find_submitted(spec(), FIND_OUTPUT, "/x/jobs/77aa/job.sh")
    assert finished == ["150"]  # from qacct: it ran and ended meanwhile
    assert sched.parse_find_submitted(spec(), FIND_OUTPUT, "/x/jobs/nope/job.sh") is None
