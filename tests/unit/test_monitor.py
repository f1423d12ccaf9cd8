"""The poll cycle's shell script, run with ``sh -c`` on real job directories, and the backoff."""

from __future__ import annotations

import itertools
import os
import subprocess
import time
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from clustrix import _wire
from clustrix.monitor import (
    EAGER_S,
    MARK,
    MAX_LISTED_DIRS,
    NEWS_MARK,
    WAIT_LOOKS,
    parse_poll_output,
    poll_delay,
    poll_script,
    wait_steps,
)


def run_poll(script: str) -> str:
    proc = subprocess.run(["sh", "-c", script], capture_output=True, text=True, timeout=30)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def make_job_dir(root: Path, name: str) -> Path:
    job_dir = root / name
    for sub in (_wire.EXIT_DIR, _wire.RESULTS_DIR, _wire.LOGS_DIR, _wire.TASKS_DIR):
        (job_dir / sub).mkdir(parents=True)
    return job_dir


@pytest.fixture
def jobs_root(tmp_path: Path) -> Path:
    # spaces, ':' (the grep separator), '$' and ';' in the path: all must survive
    root = tmp_path / "work dir: $HOME;x" / "jobs"
    root.mkdir(parents=True)
    return root


@pytest.fixture
def job_dir(jobs_root: Path) -> Path:
    job_dir = make_job_dir(jobs_root, "a1")
    (job_dir / "exit" / "0").write_text("0\n")
    (job_dir / "exit" / "1").write_text("137\n")
    (job_dir / "exit" / ".2.tmp").write_text("5\n")  # being written: not an exit status yet
    (job_dir / "results" / "3.pkl").write_bytes(b"CLX1...")
    (job_dir / "results" / ".4.pkl.1234.tmp").write_bytes(b"partial")  # write_atomic's temp
    (job_dir / "results" / ".5.pkl").write_bytes(b"hidden")
    (job_dir / "tasks" / "0.pkl").write_bytes(b"task")  # not a result
    (job_dir / "logs" / "0.err").write_text("7\n")  # not an exit status
    return job_dir


def expected_exits(job_dir: Path) -> dict[str, int]:
    # the key the engine looks up: f"{job_dir}/{EXIT_DIR}/{task index}"
    return {f"{job_dir}/{_wire.EXIT_DIR}/0": 0, f"{job_dir}/{_wire.EXIT_DIR}/1": 137}


def test_round_trip_with_status_command(jobs_root: Path, job_dir: Path) -> None:
    script = poll_script(["printf", "1|RUNNING|None\n"], [str(job_dir)], str(jobs_root))
    seen = parse_poll_output(run_poll(script))
    assert seen.status_ok is True
    assert seen.status_text == "1|RUNNING|None\n"
    assert seen.exit_codes == expected_exits(job_dir)
    assert seen.result_paths == {f"{job_dir}/{_wire.RESULTS_DIR}/3.pkl"}


def test_round_trip_without_status_command(jobs_root: Path, job_dir: Path) -> None:
    seen = parse_poll_output(run_poll(poll_script(None, [str(job_dir)], str(jobs_root))))
    assert seen.status_ok is True
    assert seen.status_text == ""
    assert seen.exit_codes == expected_exits(job_dir)
    assert seen.result_paths == {f"{job_dir}/{_wire.RESULTS_DIR}/3.pkl"}


def test_failing_status_command_is_reported_with_its_stderr(jobs_root: Path, job_dir: Path) -> None:
    status = ["sh", "-c", "echo 'slurm_load_jobs error: boom' >&2; exit 1"]
    seen = parse_poll_output(run_poll(poll_script(status, [str(job_dir)], str(jobs_root))))
    assert seen.status_ok is False
    assert "slurm_load_jobs error: boom" in seen.status_text
    assert seen.exit_codes == expected_exits(job_dir)  # the file listing still ran


def test_status_argument_with_shell_syntax_is_not_interpreted(
    jobs_root: Path, job_dir: Path
) -> None:
    status = ["printf", "%s\n", "$(echo no)", "`echo no`", "a;b", "x'y"]
    seen = parse_poll_output(run_poll(poll_script(status, [str(job_dir)], str(jobs_root))))
    assert seen.status_text == "$(echo no)\n`echo no`\na;b\nx'y\n"


def test_several_job_dirs_and_a_missing_one(jobs_root: Path, job_dir: Path) -> None:
    other = make_job_dir(jobs_root, "b2")
    (other / "exit" / "0").write_text("1\n")
    (other / "results" / "0.pkl").write_bytes(b"x")
    gone = jobs_root / "cleaned-up"
    script = poll_script(None, [str(job_dir), str(gone), str(other)], str(jobs_root))
    seen = parse_poll_output(run_poll(script))
    assert seen.exit_codes == {**expected_exits(job_dir), f"{other}/exit/0": 1}
    assert seen.result_paths == {f"{job_dir}/results/3.pkl", f"{other}/results/0.pkl"}


def test_no_job_dirs(jobs_root: Path) -> None:
    seen = parse_poll_output(run_poll(poll_script(["printf", "x"], [], str(jobs_root))))
    assert seen.status_ok is True
    assert seen.status_text == "x"
    assert seen.exit_codes == {}
    assert seen.result_paths == set()


def test_many_job_dirs_scan_the_jobs_root(jobs_root: Path) -> None:
    dirs = [make_job_dir(jobs_root, f"j{i:03d}") for i in range(MAX_LISTED_DIRS + 1)]
    (dirs[0] / "exit" / "0").write_text("0\n")
    (dirs[-1] / "exit" / "4").write_text("143\n")
    (dirs[-1] / "results" / "9.pkl").write_bytes(b"x")
    listed = poll_script(None, [str(d) for d in dirs[:MAX_LISTED_DIRS]], str(jobs_root))
    scanned = poll_script(None, [str(d) for d in dirs], str(jobs_root))
    assert "j000" in listed and "j200" not in listed  # only the dirs asked for
    assert "j000" not in scanned  # the command line does not grow with the job count
    assert len(scanned) < 1000

    seen = parse_poll_output(run_poll(scanned))
    assert seen.exit_codes == {f"{dirs[0]}/exit/0": 0, f"{dirs[-1]}/exit/4": 143}
    assert seen.result_paths == {f"{dirs[-1]}/results/9.pkl"}
    seen_listed = parse_poll_output(run_poll(listed))
    assert seen_listed.exit_codes == {f"{dirs[0]}/exit/0": 0}
    assert seen_listed.result_paths == set()


def test_parse_poll_output_sections() -> None:
    text = (
        "12|RUNNING|None\n13|PENDING|Priority\n"
        f"{MARK} 0\n"
        "/w/a/exit/0:0\n/w/a/exit/1:-1\n/w/a:b/exit/2:3\n/w/a/exit/3:\n/w/a/exit/4:x\n"
        f"{MARK}\n"
        "/w/a/results/0.pkl\n\n/w/a/results/1.pkl\n"
    )
    seen = parse_poll_output(text)
    assert seen.status_ok
    assert seen.status_text == "12|RUNNING|None\n13|PENDING|Priority\n"
    assert seen.exit_codes == {"/w/a/exit/0": 0, "/w/a/exit/1": -1, "/w/a:b/exit/2": 3}
    assert seen.result_paths == {"/w/a/results/0.pkl", "/w/a/results/1.pkl"}


@pytest.mark.parametrize("text", ["", "garbage\n", f"{MARK} 1\n{MARK}\n", f"{MARK} \n"])
def test_parse_poll_output_status_not_ok(text: str) -> None:
    assert parse_poll_output(text).status_ok is False


# --------------------------------------------------------------------------- poll_delay
def test_poll_delay_is_a_tenth_of_the_age_within_bounds() -> None:
    assert poll_delay(0.0, 0.05, 5.0) == 0.05  # just submitted: poll at the floor
    assert poll_delay(0.3, 0.05, 5.0) == 0.05
    assert poll_delay(2.0, 0.05, 5.0) == pytest.approx(0.2)
    assert poll_delay(30.0, 0.05, 5.0) == pytest.approx(3.0)
    assert poll_delay(3600.0, 0.05, 5.0) == 5.0  # an hour-long job: the cap


def test_polls_follow_each_other_back_to_back_right_after_a_submission() -> None:
    # a poll every min_s at most: over a slow link (a poll longer than that) at once
    assert poll_delay(0.5, 0.05, 5.0, last_poll_s=0.06) == 0.0
    assert poll_delay(0.5, 0.05, 5.0, last_poll_s=0.01) == pytest.approx(0.04)
    assert poll_delay(EAGER_S - 0.01, 0.05, 5.0, last_poll_s=0.06) == 0.0
    # then the backoff, however long the poll took
    assert poll_delay(EAGER_S, 0.05, 5.0, last_poll_s=0.06) == pytest.approx(0.1 * EAGER_S)


@given(
    ages=st.lists(st.floats(0, 1e6), min_size=2, max_size=20),
    min_s=st.floats(0.001, 1),
    spread=st.floats(1, 1000),
)
def test_poll_delay_grows_with_age_and_stays_bounded(
    ages: list[float], min_s: float, spread: float
) -> None:
    max_s = min_s * spread
    delays = [poll_delay(age, min_s, max_s) for age in sorted(ages)]
    assert all(a <= b for a, b in itertools.pairwise(delays))
    assert all(min_s <= d <= max_s for d in delays)
    # the extra wait for a result is at most 10 % of the job's age (or the floor)
    assert all(d <= max(min_s, 0.1 * age) for d, age in zip(delays, sorted(ages), strict=True))


def test_fetched_results_move_to_done_and_small_ones_come_bundled(
    jobs_root: Path, job_dir: Path
) -> None:
    results = job_dir / _wire.RESULTS_DIR
    (results / "6.pkl").write_bytes(b"CLX1 six")
    (results / "7.pkl").write_bytes(b"x" * 300_000)  # over the bundle limit: listed only
    script = poll_script(
        None, [str(job_dir)], str(jobs_root), fetched=[str(results / "3.pkl")], bundle_kib=256
    )
    seen = parse_poll_output(run_poll(script))
    assert (results / _wire.DONE_DIR / "3.pkl").read_bytes() == b"CLX1..."
    assert not (results / "3.pkl").exists()
    assert seen.result_paths == {str(results / "6.pkl"), str(results / "7.pkl")}
    assert seen.result_data == {str(results / "6.pkl"): b"CLX1 six"}
    assert oct((results / _wire.DONE_DIR).stat().st_mode & 0o777) == "0o700"


def test_nothing_new_means_no_bundle(jobs_root: Path, job_dir: Path) -> None:
    (job_dir / _wire.RESULTS_DIR / "3.pkl").unlink()
    script = poll_script(None, [str(job_dir)], str(jobs_root), bundle_kib=256)
    output = run_poll(script)
    assert parse_poll_output(output).result_data == {}
    assert output.rstrip().endswith(MARK)  # xargs -r ran no tar: not even an empty archive


# -- a cycle that waits on the cluster ------------------------------------------------------


def test_wait_steps_spread_a_wait_over_a_few_looks() -> None:
    assert wait_steps(0) == []
    assert wait_steps(5.0) == [1.0] * WAIT_LOOKS
    assert wait_steps(0.2) == [0.05] * 4  # never closer together than 50 ms
    assert wait_steps(0.03) == [0.03]


@pytest.mark.parametrize("looked_before", [True, False])
def test_a_waiting_poll_answers_as_soon_as_a_result_is_written(
    jobs_root: Path, job_dir: Path, looked_before: bool
) -> None:
    marker = jobs_root / ".poll-test"
    if looked_before:
        marker.touch()  # the last cycle looked: what is there is known
    # else: the first waiting cycle makes the marker as it starts
    script = poll_script(
        ["echo", "R"], [str(job_dir)], str(jobs_root),
        wait_steps_s=[1.0] * 600, news_marker=str(marker),
    )  # fmt: skip
    proc = subprocess.Popen(
        ["sh", "-c", script], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    deadline = time.monotonic() + 60  # only stops a hang
    while not marker.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)  # the first cycle makes it as it starts
    result = job_dir / _wire.RESULTS_DIR / "9.pkl"
    result.write_bytes(b"CLX1 nine")
    # newer than the marker whatever the file system's timestamp granularity
    newer_ns = marker.stat().st_mtime_ns + 10_000_000
    os.utime(result, ns=(newer_ns, newer_ns))
    # ten minutes of pauses asked for: it goes on at the news (the deadline stops a hang)
    out, err = proc.communicate(timeout=300)
    assert NEWS_MARK in err
    seen = parse_poll_output(out)
    assert str(job_dir / _wire.RESULTS_DIR / "9.pkl") in seen.result_paths
    assert seen.status_text.strip() == "R" and seen.exit_codes == expected_exits(job_dir)
    # touched after the wait, before the listing: the next cycle's news are newer than it
    assert marker.stat().st_mtime_ns >= (job_dir / _wire.RESULTS_DIR / "9.pkl").stat().st_mtime_ns


def test_a_waiting_poll_with_nothing_new_waits_its_pauses_and_says_the_same(
    jobs_root: Path, job_dir: Path
) -> None:
    marker = jobs_root / ".poll-test"
    marker.touch()
    future = time.time() + 60  # every file there is older than the last look
    os.utime(marker, (future, future))
    plain = run_poll(poll_script(["echo", "R"], [str(job_dir)], str(jobs_root)))
    script = poll_script(
        ["echo", "R"], [str(job_dir)], str(jobs_root),
        wait_steps_s=[0.02] * 3, news_marker=str(marker),
    )  # fmt: skip
    waited = subprocess.run(["sh", "-c", script], capture_output=True, text=True, timeout=60)
    assert waited.stdout == plain
    assert NEWS_MARK not in waited.stderr  # all its pauses slept
    assert marker.stat().st_mtime < future  # touched: this cycle looked
