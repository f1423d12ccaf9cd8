"""The worker runtime zip: named without being built, built once and kept in the user's
private cache, never read from a cache someone else could have written."""

from __future__ import annotations

import os
import stat
import zipfile
from collections.abc import Iterator
from io import BytesIO
from pathlib import Path

import pytest

from clustrix import _bundle, _remote_env
from clustrix._bundle import runtime_filename, worker_bundle


@pytest.fixture
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """An empty user cache; the process's bundle forgotten before and after."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    worker_bundle.cache_clear()
    yield tmp_path / "cache" / "clustrix" / _bundle.CACHE_NAME
    worker_bundle.cache_clear()


def no_build(*args: object) -> bytes:
    raise AssertionError("built again")


def test_the_name_needs_no_build(cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_bundle, "_build", no_build)
    assert runtime_filename().startswith("clustrix-worker-")
    assert not cache.exists()


def test_a_build_is_cached_privately_and_read_by_the_next_process(
    cache: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    built = worker_bundle()
    assert built.filename == runtime_filename()
    cached = cache / built.filename
    assert cached.read_bytes() == built.data
    assert stat.S_IMODE(cached.stat().st_mode) == 0o600
    assert stat.S_IMODE(cache.stat().st_mode) == 0o700
    assert stat.S_IMODE(cache.parent.stat().st_mode) == 0o700
    worker_bundle.cache_clear()  # as a new process
    monkeypatch.setattr(_bundle, "_build", no_build)
    assert worker_bundle() == built
    assert "clustrix/worker.pyc" in zipfile.ZipFile(BytesIO(built.data)).namelist()


@pytest.mark.parametrize(
    "spoil",
    [
        lambda path: path.chmod(0o666),  # others may write it
        lambda path: path.parent.chmod(0o777),  # others may write the directory
        lambda path: path.write_bytes(b"not a zip"),
    ],
    ids=["file-writable", "dir-writable", "not-a-zip"],
)
def test_a_cache_others_could_write_is_not_read(cache: Path, spoil: object) -> None:
    built = worker_bundle()
    cached = cache / built.filename
    cached.write_bytes(b"PK\x05\x06" + b"\0" * 18)  # an empty zip: what a foe would put
    assert callable(spoil)
    spoil(cached)
    planted = cached.read_bytes()
    worker_bundle.cache_clear()
    assert worker_bundle().data != planted  # built again, not the planted one
    assert "clustrix/worker.py" in zipfile.ZipFile(BytesIO(worker_bundle().data)).namelist()


def test_a_link_in_the_cache_is_not_followed(cache: Path, tmp_path: Path) -> None:
    built = worker_bundle()
    cached = cache / built.filename
    planted = tmp_path / "planted.zip"
    planted.write_bytes(b"PK\x05\x06" + b"\0" * 18)
    cached.unlink()
    os.symlink(planted, cached)
    worker_bundle.cache_clear()
    assert worker_bundle().data != planted.read_bytes()


def test_old_builds_are_pruned(cache: Path) -> None:
    built = worker_bundle()
    for i in range(_bundle.CACHE_KEEP + 3):
        old = cache / f"clustrix-worker-old{i:02d}.zip"
        old.write_bytes(b"x")
        os.utime(old, (1000 + i, 1000 + i))
    (cache / built.filename).unlink()
    worker_bundle.cache_clear()
    worker_bundle()
    left = sorted(p.name for p in cache.iterdir())
    assert built.filename in left and len(left) == _bundle.CACHE_KEEP
    assert "clustrix-worker-old00.zip" not in left  # the oldest went first


def test_the_clusters_seen_with_the_runtime_are_remembered_privately(
    cache: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(_remote_env, "_seen_here", set())
    monkeypatch.setattr(_remote_env, "SEEN_KEEP", 3)
    assert not _remote_env.runtime_known("u@h:22", "~/w", "rt.zip")
    _remote_env.remember_runtime("u@h:22", "~/w", "rt.zip")
    assert _remote_env.runtime_known("u@h:22", "~/w", "rt.zip")
    monkeypatch.setattr(_remote_env, "_seen_here", set())  # as a new process
    assert _remote_env.runtime_known("u@h:22", "~/w", "rt.zip")
    assert not _remote_env.runtime_known("u@h:22", "~/w", "other.zip")
    seen = cache.parent / _remote_env.SEEN_CACHE
    assert stat.S_IMODE(seen.stat().st_mode) == 0o700
    for i in range(5):
        _remote_env.remember_runtime("u@h:22", f"~/w{i}", "rt.zip")
    assert len(list(seen.iterdir())) == 3  # the newest only
