"""Start-up against the fakes: how many commands a cold start costs (issue 16), the worker
runtime built and uploaded only when the cluster lacks it, the scheduler's discovery inside
the first command, ``~`` resolved by the cluster (see ``tests/fakes.py``)."""

from __future__ import annotations

import os
import stat
import zipfile
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from fakes import FakeScheduler, FakeTransport, fake_config, shut_down

from clustrix import ClusterExecutor, _remote_env
from clustrix._bundle import Bundle, runtime_filename, worker_bundle
from clustrix._engine import engine as engine_module
from clustrix.schedulers.base import RunCommand

Make = Callable[..., ClusterExecutor]


@pytest.fixture(autouse=True)
def user_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """An empty user cache (no runtime built, no cluster seen); the process's bundle and
    what it saw forgotten."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.setattr(_remote_env, "_seen_here", set())
    worker_bundle.cache_clear()
    yield tmp_path / "cache"
    worker_bundle.cache_clear()


def runtime_zip(tmp_path: Path) -> Path:
    return tmp_path / "work" / "runtime" / runtime_filename()


def test_a_cold_start_is_one_command_when_the_runtime_is_there(
    make_fake_executor: Make,
    fake_transport: FakeTransport,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    make_fake_executor().shutdown()  # the first one uploads the runtime
    assert runtime_zip(tmp_path).is_file()

    def no_build() -> Bundle:
        raise AssertionError("the runtime was built although the cluster has it")

    monkeypatch.setattr(engine_module, "worker_bundle", no_build)
    since = len(fake_transport.history)
    ex = make_fake_executor()
    ops = [op for op in fake_transport.history[since:] if op.op not in ("connect", "close")]
    assert [op.op for op in ops] == ["run"]  # the check, nothing else, no file operation
    assert ex.stats()["commands.setup"] == 1
    assert sum(v for k, v in ex.stats().items() if k.startswith("commands.")) == 1


def test_a_runtime_never_built_here_goes_along_with_the_check(
    make_fake_executor: Make, fake_transport: FakeTransport, tmp_path: Path
) -> None:
    # built while the connection is made (the fakes connect at once: not measurable here;
    # bench_wan's first cold start after a change shows it)
    ex = make_fake_executor()  # nothing built yet here, nothing seen there
    ops = [op for op in fake_transport.history if op.op not in ("connect", "close")]
    assert [op.op for op in ops] == ["run"]  # the check, the zip on its stdin: no upload
    assert ops[0].stdin == worker_bundle().data
    path = runtime_zip(tmp_path)
    assert path.read_bytes() == worker_bundle().data and zipfile.is_zipfile(path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600  # private
    assert ex.stats()["packaging.runtime_uploads"] == 1
    assert not [p for p in path.parent.iterdir() if p.name.endswith(".tmp")]


def test_a_build_that_fails_is_the_start_s_error_when_the_cluster_lacks_the_runtime(
    make_fake_executor: Make, fake_transport: FakeTransport, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken() -> Bundle:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(engine_module, "worker_bundle", broken)
    with pytest.raises(OSError, match="No space left"):
        make_fake_executor()
    (check,) = fake_transport.commands()  # the check ran, without a zip; no upload
    assert check.stdin is None


def test_a_runtime_ready_here_goes_along_with_the_check_to_a_new_work_dir(
    tmp_path: Path, fake_scheduler: FakeScheduler, fake_transport: FakeTransport
) -> None:
    data = worker_bundle().data  # built once (the user cache has it now)
    ex = build(tmp_path, fake_scheduler, fake_transport)
    try:
        assert [op.op for op in fake_transport.history if op.op != "connect"] == ["run"]
        (check,) = fake_transport.commands()
        assert check.stdin == data
        path = runtime_zip(tmp_path)
        assert path.read_bytes() == data and stat.S_IMODE(path.stat().st_mode) == 0o600
        assert ex.stats()["packaging.runtime_uploads"] == 1
    finally:
        shut_down(ex, fake_scheduler, fake_transport)


def test_a_runtime_gone_since_it_was_seen_is_uploaded_again(
    make_fake_executor: Make, fake_transport: FakeTransport, tmp_path: Path
) -> None:
    make_fake_executor().shutdown()
    runtime_zip(tmp_path).unlink()  # someone cleaned the work dir
    since = len(fake_transport.history)
    ex = make_fake_executor()
    ops = [op for op in fake_transport.history[since:] if op.op not in ("connect", "close")]
    assert [op.op for op in ops] == ["run", "run"]
    assert ops[0].stdin is None  # not sent: it was seen
    assert runtime_zip(tmp_path).read_bytes() == worker_bundle().data
    assert ex.stats()["packaging.runtime_uploads"] == 1


class Discovering(FakeScheduler):
    """A fake whose discovery is one command, run within the start-up check."""

    answers: list[tuple[int, str, str]]

    def discovery_argv(self) -> list[str]:
        return ["sh", "-c", 'echo "cpus $((2 + 2))"; echo warn >&2; exit 3']

    def read_discovery_answer(self, returncode: int, stdout: str, stderr: str) -> None:
        self.answers = [*getattr(self, "answers", []), (returncode, stdout, stderr)]


class DiscoveringInSteps(FakeScheduler):
    """A backend with its own discover() of commands: still run, after the check."""

    async def discover(self, run: RunCommand) -> None:
        self.found = [await run(["sh", "-c", "echo step-1"]), await run(["true"])]


def build(tmp_path: Path, scheduler: FakeScheduler, transport: FakeTransport) -> ClusterExecutor:
    return ClusterExecutor(fake_config(tmp_path), scheduler=scheduler, transport=transport)


def test_the_scheduler_discovery_runs_inside_the_check_command(tmp_path: Path) -> None:
    scheduler, transport = Discovering(tmp_path / "scheduler"), FakeTransport()
    ex = build(tmp_path, scheduler, transport)
    try:
        assert scheduler.answers == [(3, "cpus 4\n", "warn\n")]
        commands = transport.commands()
        assert len(commands) == 1  # the check, with the discovery and the runtime zip
        assert "cpus" in commands[0].target
    finally:
        shut_down(ex, scheduler, transport)


def test_a_discover_of_its_own_still_runs(tmp_path: Path) -> None:
    scheduler, transport = DiscoveringInSteps(tmp_path / "scheduler"), FakeTransport()
    ex = build(tmp_path, scheduler, transport)
    try:
        assert [answer[1] for answer in scheduler.found] == ["step-1\n", ""]
        assert len(transport.commands()) == 3  # the check (the zip along), its two commands
    finally:
        shut_down(ex, scheduler, transport)


def test_a_home_relative_work_dir_is_resolved_by_the_cluster(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))  # the "cluster" is a subprocess of this one
    scheduler, transport = FakeScheduler(tmp_path / "scheduler"), FakeTransport()
    ex = ClusterExecutor(
        fake_config(tmp_path, remote_work_dir="~/deep/work"),
        scheduler=scheduler,
        transport=transport,
    )
    try:
        work = os.path.realpath(home) + "/deep/work"
        assert ex._engine.work_dir == work
        assert stat.S_IMODE(os.stat(work).st_mode) == 0o700
        assert os.path.isfile(f"{work}/runtime/{runtime_filename()}")
        assert ex.submit(pow, 2, 3) is not None
        (submission,) = scheduler.wait_submissions(1)
        assert submission.job_dir.startswith(f"{work}/jobs/")
    finally:
        shut_down(ex, scheduler, transport)
