"""The filesystem façade (``ex.ls``/``find``/``du``/``open``/``put``/…), one suite run against
both transports: ``local`` (``os``) and ``ssh`` (the real OpenSSH server of the test cluster,
as the unprivileged user ``clustrix``).

Every test works in a fresh directory under one work directory per backend (relative paths
resolve against it, as ``remote_work_dir`` in production). Test trees are built by ONE
``python3 -c`` command on the target (``make_tree``), never one round trip per file.
"""

from __future__ import annotations

import json
import os
import pathlib
import secrets
import stat
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath, PureWindowsPath
from typing import Any

import pytest
from clustertools import require_cluster
from hypothesis import given, settings
from hypothesis import strategies as st

from clustrix import (
    ClusterConfig,
    ClusterExecutor,
    DiskUsage,
    FileInfo,
    cluster_count_files,
    cluster_du,
    cluster_exists,
    cluster_find,
    cluster_glob,
    cluster_isdir,
    cluster_isfile,
    cluster_ls,
    cluster_stat,
)
from clustrix.errors import TransportError
from clustrix.filesystem import ClusterFileSystem
from clustrix.transports.base import CommandResult, Transport

BACKENDS = [
    pytest.param("local", id="local"),
    pytest.param("ssh", id="ssh", marks=pytest.mark.cluster),
    # the plain-host backend: the same SSH transport, its own executor in the last test
    pytest.param("ssh-host", id="ssh-host", marks=pytest.mark.cluster),
    # Grid Engine over SSH: likewise (its executor in the last test)
    pytest.param("sge-ssh", id="sge-ssh", marks=pytest.mark.cluster),
]

#: Names no shell may ever see unquoted: if one did, a PWNED file would appear.
WEIRD_NAMES = [
    "plain.txt",
    "with space.txt",
    'it\'s "quoted".txt',
    "semi;colon; touch PWNED-semi",
    "$(touch PWNED-subst)",
    "`touch PWNED-tick`",
    "new\nline",
    "tab\there",
    "back\\slash",
    "-leading-dash",
    "glob*?[chars]",
    "ünïcödé 文字 🐍",
    ".hidden",
]

MAKE_TREE = r"""
import json, os, sys
root, spec = sys.argv[1], json.loads(sys.argv[2])
os.makedirs(root, exist_ok=True)
os.chdir(root)
for d in spec.get("dirs", []):
    os.makedirs(d, exist_ok=True)
for path, text in spec.get("files", {}).items():
    with open(path, "wb") as fh:
        fh.write(text.encode("utf-8", "surrogateescape"))
for path, target in spec.get("links", {}).items():
    os.symlink(target, path)
big = spec.get("big")
if big:  # [directories, files per directory]: d_007/f_00712.dat holds (712 % 13) bytes
    for d in range(big[0]):
        os.mkdir("d_%03d" % d)
        for f in range(big[1]):
            i = d * big[1] + f
            with open("d_%03d/f_%05d.dat" % (d, i), "wb") as fh:
                fh.write(b"x" * (i % 13))
for path, mode in spec.get("modes", {}).items():
    os.chmod(path, mode)
"""


@dataclass
class Site:
    """One backend: the façade, its work directory, and a way to run commands there."""

    name: str
    fs: ClusterFileSystem
    base: str  # the work directory (absolute)
    python: str

    @property
    def transport(self) -> Transport:
        return self.fs._afs.transport

    def run(self, argv: list[str]) -> CommandResult:
        return self.fs._loop.run(self.transport.run(argv))

    def make_tree(self, root: str, **spec: Any) -> None:
        """Build a tree under ``root`` (relative to the work dir) with ONE command."""
        result = self.run([self.python, "-c", MAKE_TREE, f"{self.base}/{root}", json.dumps(spec)])
        assert result.ok, result.stderr

    def home(self) -> str:
        return self.fs._loop.run(self.transport.home())


@pytest.fixture(scope="module", params=BACKENDS)
def site(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Site]:
    backend = str(request.param)
    if backend == "local":
        config = ClusterConfig(remote_work_dir=str(tmp_path_factory.mktemp("fs-work")))
    else:  # the scheduler plays no part in files: the SSH connection is what is tested
        config = require_cluster(ssh=True, slurm=False).ssh_config(
            cluster_type={"ssh-host": "ssh", "sge-ssh": "sge"}.get(backend, "slurm"),
            remote_work_dir=f"~/clustrix-fs-test-{secrets.token_hex(4)}",
        )
    fs = ClusterFileSystem(config)
    site = Site(backend, fs, fs._afs.work_dir, sys.executable if backend == "local" else "python3")
    fs.makedirs(".", exist_ok=True)
    yield site
    # Unreadable directories of the tests would stop rm -rf: give them back first.
    site.run(["chmod", "-R", "u+rwX", site.base])
    site.run(["rm", "-rf", "--", site.base])
    fs.close()


@pytest.fixture
def d(site: Site) -> str:
    """A fresh, empty directory (relative to the work dir) for one test."""
    name = f"t-{secrets.token_hex(4)}"
    site.fs.makedirs(name)
    return name


@pytest.fixture
def calls(site: Site, monkeypatch: pytest.MonkeyPatch) -> dict[str, int]:
    """Counts of the transport calls made during the test (round trips, over SSH)."""
    counts: dict[str, int] = {}
    transport = site.transport
    for method in ("run", "scandir", "stat", "lstat", "scan_tree", "open", "put", "get"):
        original = getattr(transport, method)

        def counting(*args: Any, _original: Any = original, _m: str = method, **kw: Any) -> Any:
            counts[_m] = counts.get(_m, 0) + 1
            return _original(*args, **kw)

        monkeypatch.setattr(transport, method, counting)
    return counts


def local_tree(root: Path) -> dict[str, Any]:
    """A local tree as {relative path: (bytes, mode) | ("link", target) | ("dir",)}."""
    out: dict[str, Any] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            path = Path(dirpath, name)
            rel = path.relative_to(root).as_posix()
            if path.is_symlink():
                out[rel] = ("link", os.readlink(path))
            elif path.is_dir():
                out[rel] = ("dir",)
            else:
                out[rel] = (path.read_bytes(), stat.S_IMODE(path.stat().st_mode))
    return out


# -- names that a shell would misread ------------------------------------------------------


def test_weird_names_round_trip_and_no_shell_sees_them(site: Site, d: str) -> None:
    fs = site.fs
    for i, name in enumerate(WEIRD_NAMES):
        fs.write_bytes(f"{d}/{name}", name.encode() * (i + 1))
    fs.makedirs(f"{d}/sub dir; $(touch PWNED-dir)/inner")
    fs.write_bytes(f"{d}/sub dir; $(touch PWNED-dir)/inner/x", b"x")
    expected = sorted([*WEIRD_NAMES, "sub dir; $(touch PWNED-dir)"])
    assert fs.ls(d) == expected
    assert fs.glob("*", d) == expected
    assert [info.name for info in fs.ls(d, detail=True)] == expected
    files = sorted([*WEIRD_NAMES, "sub dir; $(touch PWNED-dir)/inner/x"])
    assert fs.find("*", d) == files
    assert fs.count_files(d) == len(files)
    total = sum(len(n.encode()) * (i + 1) for i, n in enumerate(WEIRD_NAMES)) + 1
    assert fs.du(d) == DiskUsage(total, len(files), 2)
    for i, name in enumerate(WEIRD_NAMES):
        path = f"{d}/{name}"
        assert fs.read_bytes(path) == name.encode() * (i + 1)
        info = fs.stat(path)
        assert (info.name, info.size, info.is_file) == (name, len(name.encode()) * (i + 1), True)
        assert fs.exists(path) and fs.isfile(path) and not fs.isdir(path)
        with fs.open(path, "rb") as fh:
            assert fh.read() == name.encode() * (i + 1)
    assert fs.find("glob[*][?][[]chars]", d) == ["glob*?[chars]"]  # [x] escapes x (fnmatch)
    fs.rm(f"{d}/$(touch PWNED-subst)")
    fs.rm(f"{d}/sub dir; $(touch PWNED-dir)", recursive=True)  # rm -rf over SSH: argv
    assert "$(touch PWNED-subst)" not in fs.ls(d)
    for where in (site.base, site.home()):  # where commands run, and where names point
        assert [n for n in fs.ls(where) if "PWNED" in n] == [], f"a shell ran a name in {where}"


def test_name_that_is_not_utf8_round_trips(site: Site, d: str) -> None:
    name = os.fsdecode(b"caf\xe9-latin1")  # 'caf\udce9-latin1', as os.listdir gives it
    site.make_tree(d, files={name: "bytes"})
    assert site.fs.ls(d) == [name]
    assert site.fs.find("*", d) == [name]  # over SSH: find's raw output, surrogate-escaped
    assert site.fs.read_bytes(f"{d}/{name}") == b"bytes"
    site.fs.write_bytes(f"{d}/{name}", b"rewritten")
    assert site.fs.stat(f"{d}/{name}").size == len(b"rewritten")


# -- symlinks, empty and missing things ----------------------------------------------------


def make_links(site: Site, d: str) -> None:
    site.make_tree(
        d,
        dirs=["real/empty", "real/sub"],
        files={"real/file.txt": "12345", "real/sub/deep.txt": "abc"},
        links={
            "to_file": "real/file.txt",
            "to_dir": "real",
            "dangling": "nowhere",
            "self_loop": "self_loop",
            "loop_a": "loop_b",
            "loop_b": "loop_a",
            "real/sub/up": "..",  # a directory cycle: real/sub/up/sub/up/…
        },
    )


def test_symlinks_to_files_dirs_dangling_and_loops(site: Site, d: str) -> None:
    fs = site.fs
    make_links(site, d)
    infos = {i.name: i for i in fs.ls(d, detail=True)}
    assert sorted(infos) == [
        "dangling",
        "loop_a",
        "loop_b",
        "real",
        "self_loop",
        "to_dir",
        "to_file",
    ]
    assert infos["to_file"].is_symlink and infos["to_file"].is_file and infos["to_file"].size == 5
    assert infos["to_dir"].is_symlink and infos["to_dir"].is_dir and not infos["to_dir"].is_file
    for broken in ("dangling", "self_loop", "loop_a"):
        info = infos[broken]
        assert info.is_symlink and not info.is_dir and not info.is_file, info
        assert info.filemode.startswith("l")
        assert fs.stat(f"{d}/{broken}") == info
        assert not fs.exists(f"{d}/{broken}")  # like os.path.exists: not followed to anything
        assert not fs.isdir(f"{d}/{broken}") and not fs.isfile(f"{d}/{broken}")
    assert fs.isdir(f"{d}/to_dir") and fs.isfile(f"{d}/to_file")
    assert fs.read_bytes(f"{d}/to_file") == b"12345"
    assert fs.ls(f"{d}/to_dir") == ["empty", "file.txt", "sub"]  # the root link is followed
    # Below the root, links are listed and never followed: the up-cycle ends.
    everything = [
        "dangling", "loop_a", "loop_b", "real/file.txt", "real/sub/deep.txt", "real/sub/up",
        "self_loop", "to_dir", "to_file",
    ]  # fmt: skip
    assert fs.find("*", d) == everything
    assert fs.find("*", d, withdirs=True) == sorted([*everything, "real", "real/empty", "real/sub"])
    assert fs.find("*", f"{d}/to_dir") == ["file.txt", "sub/deep.txt", "sub/up"]
    assert fs.count_files(d, "loop_*") == 2
    link_sizes = sum(
        len(t) for t in ("real/file.txt", "real", "nowhere", "self_loop", "loop_b", "loop_a", "..")
    )
    assert fs.du(d) == DiskUsage(5 + 3 + link_sizes, len(everything), 3)
    assert "real/sub/up" in fs.glob("**", d) and "real/sub/up/sub" not in fs.glob("**", d)
    assert fs.glob("real/sub/up/sub/*", d) == ["real/sub/up/sub/deep.txt", "real/sub/up/sub/up"]
    assert fs.glob("to_dir/*.txt", d) == ["to_dir/file.txt"]  # explicit components follow
    fs.rm(f"{d}/to_dir")  # the link, not what it points to
    assert fs.isdir(f"{d}/real") and not fs.exists(f"{d}/to_dir")
    fs.rm(f"{d}/dangling")
    assert "dangling" not in fs.ls(d)


def test_empty_directories(site: Site, d: str) -> None:
    fs = site.fs
    site.make_tree(d, dirs=["a/b/c", "e"])
    assert fs.ls(f"{d}/e") == [] and fs.glob("*", f"{d}/e") == []
    assert fs.find("*", d) == [] and fs.count_files(d) == 0
    assert fs.find("*", d, withdirs=True) == ["a", "a/b", "a/b/c", "e"]
    assert fs.du(d) == DiskUsage(0, 0, 4)
    assert fs.du(f"{d}/e") == DiskUsage(0, 0, 0)
    assert fs.glob("**", d) == ["a", "a/b", "a/b/c", "e"]


def test_missing_paths_and_wrong_kinds(site: Site, d: str) -> None:
    fs = site.fs
    fs.write_bytes(f"{d}/file", b"data")
    missing = f"{d}/missing"
    calls: list[Callable[[], object]] = [
        lambda: fs.ls(missing),
        lambda: fs.ls(missing, detail=True),
        lambda: fs.stat(missing),
        lambda: fs.stat(f"{d}/file/below"),  # through a file: missing, on both transports
        lambda: fs.find("*", missing),
        lambda: fs.du(missing),
        lambda: fs.count_files(missing),
        lambda: fs.read_bytes(missing),
        lambda: fs.open(missing),
        lambda: fs.rm(missing),
        lambda: fs.write_bytes(f"{missing}/x", b""),
        lambda: fs.get(missing, "/tmp/never-written"),
    ]
    for call in calls:
        with pytest.raises(FileNotFoundError):
            call()
    for check in (fs.exists, fs.isdir, fs.isfile):
        assert check(missing) is False and check(f"{d}/file/below") is False
    assert fs.glob("missing/*", d) == [] and fs.glob("missing", d) == []
    with pytest.raises(NotADirectoryError):
        fs.ls(f"{d}/file")
    with pytest.raises(NotADirectoryError):
        fs.find("*", f"{d}/file")
    assert fs.du(f"{d}/file") == DiskUsage(4, 1, 0)
    for call in (
        lambda: fs.read_bytes(d),
        lambda: fs.open(d),
        lambda: fs.open(d, "wb"),
        lambda: fs.write_bytes(d, b""),
        lambda: fs.rm(d),
    ):
        with pytest.raises(IsADirectoryError):
            call()
    with pytest.raises(FileExistsError):
        fs.open(f"{d}/file", "x")
    with pytest.raises(FileExistsError):
        fs.makedirs(d)
    with pytest.raises(FileExistsError):
        fs.makedirs(f"{d}/file", exist_ok=True)
    fs.makedirs(d, exist_ok=True)
    for protected in (".", "/", "~", ".."):
        with pytest.raises(ValueError, match="refusing"):
            fs.rm(protected, recursive=True)
    assert fs.isdir(".")


def test_exists_lets_connection_errors_through(
    site: Site, d: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def unreachable(path: str) -> Any:
        raise TransportError(f"connection to {site.transport.location} lost: stat {path}")

    monkeypatch.setattr(site.transport, "stat", unreachable)
    for check in (site.fs.exists, site.fs.isdir, site.fs.isfile):
        with pytest.raises(TransportError, match="lost"):
            check(d)


def test_unreadable_directory_raises_permission_error(
    site: Site, d: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    if site.name == "local" and os.geteuid() == 0:
        pytest.skip("running as root, for whom permissions do not bite (the ssh case tests this)")
    fs = site.fs
    site.make_tree(
        d,
        dirs=["open", "locked/inner"],
        files={"open/a": "1", "locked/secret": "22", "locked/inner/deeper": "333"},
        modes={"locked": 0},
    )
    for tree_command in (True, False):  # find -printf, then the SFTP fallback
        if not tree_command:
            monkeypatch.setattr(site.transport, "find_program", None)
        with pytest.raises(PermissionError):
            fs.ls(f"{d}/locked")
        with pytest.raises(PermissionError):
            fs.find("*", d)
        with pytest.raises(PermissionError):
            fs.du(d)
        with pytest.raises(PermissionError):
            fs.find("*", f"{d}/locked", on_error="omit")  # the root itself: always raised
        with pytest.raises(PermissionError):
            fs.exists(f"{d}/locked/secret")  # permission is not "not found"
        with pytest.raises(PermissionError):
            fs.isfile(f"{d}/locked/secret")
        with pytest.raises(PermissionError):
            fs.read_bytes(f"{d}/locked/secret")
        with pytest.raises(PermissionError):
            fs.glob("*/*", d)
        assert fs.exists(f"{d}/locked") and fs.isdir(f"{d}/locked")
        assert fs.find("*", d, on_error="omit") == ["open/a"]
        assert fs.find("*", d, withdirs=True, on_error="omit") == ["locked", "open", "open/a"]
        assert fs.count_files(d, on_error="omit") == 1
        assert fs.du(d, on_error="omit") == DiskUsage(1, 1, 2)
        assert fs.glob("*/*", d, on_error="omit") == ["open/a"]


# -- 10,000 files: exact counts, and round trips that do not grow with the tree -------------

N_DIRS, N_PER_DIR = 100, 100
N_FILES = N_DIRS * N_PER_DIR


@pytest.fixture(scope="module")
def big(site: Site) -> str:
    """10,000 files in 100 directories, made by one command; shared by the tests below."""
    name = f"big-{secrets.token_hex(4)}"
    site.make_tree(name, big=[N_DIRS, N_PER_DIR])
    return name


def check_big_tree(site: Site, big: str) -> None:
    fs = site.fs
    assert fs.du(big) == DiskUsage(sum(i % 13 for i in range(N_FILES)), N_FILES, N_DIRS)
    assert fs.count_files(big) == N_FILES
    assert fs.count_files(big, "f_*7.dat") == N_FILES // 10
    assert fs.count_files(big, "d_042/*") == N_PER_DIR  # a pattern with / matches the path
    found = fs.find("*", big)
    assert len(found) == N_FILES and found[0] == "d_000/f_00000.dat"
    assert found[-1] == f"d_{N_DIRS - 1:03d}/f_{N_FILES - 1:05d}.dat"
    assert fs.find("f_0424?.dat", big) == [f"d_042/f_0424{i}.dat" for i in range(10)]
    assert len(fs.find("*", big, withdirs=True)) == N_FILES + N_DIRS
    assert len(fs.glob("*/*.dat", big)) == N_FILES
    assert len(fs.glob("**/f_*1.dat", big)) == N_FILES // 10


def test_big_tree_with_one_command(site: Site, big: str, calls: dict[str, int]) -> None:
    check_big_tree(site, big)
    if site.name != "local":  # over SSH
        # du, 3 counts, 3 finds and the glob's ** are one find command each; the rest is
        # "*/*.dat" listing the root and its 100 directories (one level, concurrently).
        assert calls.get("run") == 8, calls
        assert calls.get("scandir") == 1 + N_DIRS, calls
        assert calls.get("stat", 0) + calls.get("lstat", 0) == 0, calls


def test_big_tree_over_sftp_fallback(
    site: Site, big: str, calls: dict[str, int], monkeypatch: pytest.MonkeyPatch
) -> None:
    if site.name == "local":
        pytest.skip("the fallback is the SSH transport's (no GNU find on the server)")
    monkeypatch.setattr(site.transport, "find_program", None)
    assert site.fs.du(big) == DiskUsage(sum(i % 13 for i in range(N_FILES)), N_FILES, N_DIRS)
    assert site.fs.count_files(big, "f_*7.dat") == N_FILES // 10
    # One readdir per DIRECTORY (each ~100 entries per round trip), never a stat per file.
    assert calls.get("scandir") == 2 * (1 + N_DIRS), calls
    assert calls.get("stat", 0) + calls.get("lstat", 0) == 0, calls
    assert calls.get("run", 0) == 0, calls


def test_unusable_find_falls_back_and_is_not_tried_again(
    site: Site, d: str, calls: dict[str, int], monkeypatch: pytest.MonkeyPatch
) -> None:
    if site.name == "local":
        pytest.skip("the fallback is the SSH transport's")
    make_links(site, d)
    site.make_tree(d, files={name: name for name in WEIRD_NAMES})
    expected = (site.fs.find("*", d, withdirs=True), site.fs.du(d), site.fs.glob("**", d))
    monkeypatch.setattr(site.transport, "find_program", "clustrix-no-such-find")
    calls.clear()
    assert (site.fs.find("*", d, withdirs=True), site.fs.du(d), site.fs.glob("**", d)) == expected
    assert site.transport.find_program is None  # type: ignore[attr-defined]
    assert calls.get("run") == 1, calls  # the first scan tried the command; the rest did not


# -- reading and writing -------------------------------------------------------------------


def test_open_text_binary_append_exclusive_seek(site: Site, d: str) -> None:
    fs = site.fs
    path = f"{d}/notes.txt"
    with fs.open(path, "w") as fh:
        fh.write("first line\nzweite Zeile ü\n")
    with fs.open(path, "a") as fh:
        assert fh.tell() == len("first line\nzweite Zeile ü\n".encode())
        fh.write("third\n")
    with fs.open(path) as fh:
        assert list(fh) == ["first line\n", "zweite Zeile ü\n", "third\n"]
    with fs.open(path, "r", encoding="latin-1") as fh:
        assert "Ã¼" in fh.read()
    with fs.open(path, "rb") as fh:
        assert fh.read(5) == b"first"
        fh.seek(-6, os.SEEK_END)
        assert fh.read() == b"third\n"
        fh.seek(0)
        assert fh.readline() == b"first line\n"
    with fs.open(f"{d}/new", "x") as fh:
        fh.write("exclusive")
    assert fs.read_bytes(f"{d}/new") == b"exclusive"
    blob = os.urandom(3 * 2**20 + 17)  # several buffers and SFTP requests
    with fs.open(f"{d}/blob", "wb", block_size=2**20) as fh:
        fh.write(blob[:100])
        fh.write(blob[100:])
    assert fs.read_bytes(f"{d}/blob") == blob
    with fs.open(f"{d}/blob", "rb") as fh:
        fh.seek(2**20 + 5)
        assert fh.read(10) == blob[2**20 + 5 : 2**20 + 15]
        assert fh.read() == blob[2**20 + 15 :]
    for bad in ("r+", "rw", "rbt", "q", "", "rr"):
        with pytest.raises(ValueError):
            fs.open(path, bad)
    fh = fs.open(path, "rb")
    fh.close()
    with pytest.raises(ValueError):
        fh.read()
    with fs.open(path, "rb") as fh, pytest.raises(OSError):
        fh.write(b"no")  # type: ignore[call-overload]


def test_write_bytes_is_atomic_and_leaves_no_temp_files(site: Site, d: str) -> None:
    site.fs.write_bytes(f"{d}/f", b"one")
    site.fs.write_bytes(f"{d}/f", b"two")
    assert site.fs.ls(d) == ["f"] and site.fs.read_bytes(f"{d}/f") == b"two"
    assert site.fs.stat(f"{d}/f").permissions & 0o600 == 0o600


def test_pandas_read_csv(site: Site, d: str) -> None:
    pandas = pytest.importorskip("pandas")
    site.fs.write_bytes(f"{d}/data.csv", "x,y,name\n1,2.5,ä\n3,4.5,b c\n".encode())
    for opened in (site.fs.open(f"{d}/data.csv"), site.fs.open(f"{d}/data.csv", "rb")):
        with opened as fh:
            frame = pandas.read_csv(fh)
        assert frame["y"].sum() == 7.0 and list(frame["name"]) == ["ä", "b c"]
    with site.fs.fs.open(f"{d}/data.csv") as fh:
        assert list(pandas.read_csv(fh)["x"]) == [1, 3]
    with site.fs.open(f"{d}/out.csv", "w") as fh:
        frame.to_csv(fh, index=False)
    assert site.fs.read_bytes(f"{d}/out.csv").decode().splitlines()[0] == "x,y,name"


# -- paths ---------------------------------------------------------------------------------


def test_relative_paths_resolve_against_the_work_dir(site: Site, d: str) -> None:
    fs = site.fs
    fs.write_bytes(f"{d}/rel.txt", b"r")
    assert fs.stat(f"{d}/rel.txt").path == f"{site.base}/{d}/rel.txt"
    assert fs.read_bytes(f"{site.base}/{d}/rel.txt") == b"r"
    assert fs.read_bytes(PurePosixPath(d, "rel.txt")) == b"r"
    assert fs.read_bytes(PureWindowsPath(d, "rel.txt")) == b"r"  # sent as d/rel.txt
    assert fs.read_bytes(f"./{d}/../{d}/rel.txt") == b"r"
    assert fs.stat("~").path == site.home()
    assert fs.stat("").path == fs.stat(".").path == site.base
    assert fs.glob(f"{site.base}/{d}/*.txt") == [f"{site.base}/{d}/rel.txt"]
    with pytest.raises(TypeError):
        fs.stat(b"bytes")  # type: ignore[arg-type]


def test_glob_patterns(site: Site, d: str) -> None:
    site.make_tree(
        d,
        dirs=["a/x", "b/y", ".h"],
        files={
            "a/1.txt": "",
            "a/x/2.txt": "",
            "b/3.csv": "",
            "b/y/4.txt": "",
            ".h/5.txt": "",
            "c": "",
        },
    )
    g = site.fs.glob
    assert g("*", d) == [".h", "a", "b", "c"]
    assert g("*/*.txt", d) == [".h/5.txt", "a/1.txt"]
    assert g("**/*.txt", d) == [".h/5.txt", "a/1.txt", "a/x/2.txt", "b/y/4.txt"]
    assert g("[ab]/?", d) == ["a/x", "b/y"]
    assert g("b/*", d) == ["b/3.csv", "b/y"]
    assert g("a/**", d) == ["a/1.txt", "a/x", "a/x/2.txt"]
    assert g("**/", d) == g("**", d) == sorted(site.fs.find("*", d, withdirs=True))
    assert g("c", d) == ["c"] and g("c/*", d) == [] and g("nothing*", d) == []
    assert g(f"{d}/a/*.txt") == [f"{d}/a/1.txt"]  # path defaults to the work dir


# -- moving data ---------------------------------------------------------------------------


def test_put_and_get_files_and_trees(site: Site, d: str, tmp_path: Path) -> None:
    fs = site.fs
    src = tmp_path / "src"
    (src / "nested" / "deeper").mkdir(parents=True)
    (src / "empty").mkdir()
    (src / "run.sh").write_text("#!/bin/sh\necho hi\n")
    (src / "run.sh").chmod(0o750)
    (src / "nested" / "data; $(x).bin").write_bytes(os.urandom(5 * 2**20 + 3))
    (src / "nested" / "deeper" / "ü.txt").write_text("deep")
    (src / "link").symlink_to("nested/deeper")
    (src / "dangling").symlink_to("no/where")
    # a file to a new name (missing parents created), into a directory, into a new one/
    fs.put(src / "run.sh", f"{d}/bin/run")
    fs.put(str(src / "run.sh"), f"{d}/bin")
    fs.put(src / "run.sh", f"{d}/fresh/")
    assert fs.ls(f"{d}/bin") == ["run", "run.sh"] and fs.ls(f"{d}/fresh") == ["run.sh"]
    assert fs.stat(f"{d}/bin/run").permissions == 0o750
    with pytest.raises(IsADirectoryError):
        fs.put(src, f"{d}/tree")
    with pytest.raises(FileNotFoundError):
        fs.put(src / "nope", f"{d}/x")
    fs.put(src, f"{d}/tree", recursive=True)
    assert fs.find("*", f"{d}/tree", withdirs=True) == [
        "dangling", "empty", "link", "nested", "nested/data; $(x).bin", "nested/deeper",
        "nested/deeper/ü.txt", "run.sh",
    ]  # fmt: skip
    assert fs.stat(f"{d}/tree/link").is_dir and fs.stat(f"{d}/tree/link").is_symlink
    fs.put(src, f"{d}/tree", recursive=True)  # into the existing directory, as cp -r does
    assert "src" in fs.ls(f"{d}/tree")
    out = tmp_path / "out"
    fs.get(f"{d}/tree", out, recursive=True)
    tree_copy = local_tree(out)
    tree_copy = {k: v for k, v in tree_copy.items() if not k.startswith("src")}
    assert tree_copy == local_tree(src)
    fs.get(f"{d}/bin/run", tmp_path / "got" / "run")
    assert (tmp_path / "got" / "run").read_bytes() == (src / "run.sh").read_bytes()
    assert stat.S_IMODE((tmp_path / "got" / "run").stat().st_mode) == 0o750
    fs.get(f"{d}/bin/run", tmp_path / "got")  # into the directory
    assert sorted(os.listdir(tmp_path / "got")) == ["run"]
    with pytest.raises(IsADirectoryError):
        fs.get(f"{d}/tree", tmp_path / "nope")


# -- property: what goes in comes out ------------------------------------------------------

NAMES = st.text(
    st.characters(blacklist_categories=("Cs",), blacklist_characters="/\x00"),
    min_size=1,
    max_size=10,
).filter(lambda n: n not in (".", ".."))
TREES = st.recursive(
    st.binary(max_size=100),
    lambda children: st.dictionaries(NAMES, children, max_size=4),
    max_leaves=10,
)


@settings(max_examples=20, deadline=None)
@given(tree=st.dictionaries(NAMES, TREES, max_size=5))
def test_property_tree_reads_back_identically(
    site: Site, tmp_path_factory: pytest.TempPathFactory, tree: dict[str, Any]
) -> None:
    fs = site.fs
    root = f"p-{secrets.token_hex(4)}"
    fs.makedirs(root)
    staging = tmp_path_factory.mktemp("staging")
    files: dict[str, bytes] = {}
    dirs: list[str] = []

    def build(node: dict[str, Any], rel: str) -> None:
        for name, child in node.items():
            path = f"{rel}/{name}" if rel else name
            if isinstance(child, dict):
                dirs.append(path)
                fs.makedirs(f"{root}/{path}")
                build(child, path)
            elif len(files) % 2:
                fs.write_bytes(f"{root}/{path}", child)
                files[path] = child
            else:
                local = staging / f"{len(files)}.bin"
                local.write_bytes(child)
                fs.put(local, f"{root}/{path}")
                files[path] = child

    build(tree, "")
    assert fs.find("*", root) == sorted(files)
    assert fs.find("*", root, withdirs=True) == sorted([*files, *dirs])
    assert fs.du(root) == DiskUsage(sum(map(len, files.values())), len(files), len(dirs))
    assert fs.ls(root) == sorted(tree)
    for directory in dirs:
        assert fs.ls(f"{root}/{directory}") == sorted(
            p.rpartition("/")[2] for p in [*files, *dirs] if p.rpartition("/")[0] == directory
        )
        assert fs.stat(f"{root}/{directory}").is_dir
    for path, data in files.items():
        info = fs.stat(f"{root}/{path}")
        assert (info.size, info.is_file, info.is_dir) == (len(data), True, False)
        assert fs.read_bytes(f"{root}/{path}") == data
    out = tmp_path_factory.mktemp("out") / "copy"
    fs.get(root, out, recursive=True)
    got = local_tree(out)
    assert {k: v[0] for k, v in got.items() if v[0] != "dir"} == files
    assert sorted(k for k, v in got.items() if v[0] == "dir") == sorted(dirs)
    fs.rm(root, recursive=True)


# -- fsspec, the executor and the module-level names ---------------------------------------


def test_fsspec_filesystem(site: Site, d: str, tmp_path: Path) -> None:
    pytest.importorskip("fsspec")
    make_links(site, d)
    fs = site.fs.fs
    root = f"{site.base}/{d}"
    assert fs.ls(d, detail=False) == [f"{root}/{n}" for n in site.fs.ls(d)]
    entries = {e["name"].rpartition("/")[2]: e for e in fs.ls(d)}
    assert entries["real"]["type"] == "directory" and entries["to_dir"]["islink"]
    assert entries["to_dir"]["type"] == "other"  # ls does not follow: fsspec's walk cannot loop
    assert fs.info(f"{d}/to_dir")["type"] == "directory"  # info follows
    assert fs.info(f"{d}/real/file.txt")["size"] == 5
    assert fs.isdir(f"{d}/real") and fs.isfile(f"{d}/to_file") and not fs.exists(f"{d}/dangling")
    assert fs.ls(f"{d}/real/file.txt", detail=False) == [f"{root}/real/file.txt"]
    assert f"{root}/real/sub/up" in fs.find(d)  # fsspec's own walk: ends despite the cycle
    assert fs.cat_file(f"{d}/real/file.txt") == b"12345"
    assert fs.cat_file(f"{d}/real/file.txt", start=1, end=3) == b"23"
    fs.pipe_file(f"{d}/piped", b"piped")
    with fs.open(f"{d}/piped", "r") as fh:
        assert fh.read() == "piped"
    fs.mkdir(f"{d}/made/deep")
    fs.put_file(__file__, f"{d}/made/deep/copy.py")
    fs.get_file(f"{d}/made/deep/copy.py", str(tmp_path / "copy.py"))
    assert (tmp_path / "copy.py").read_bytes() == pathlib.Path(__file__).read_bytes()
    fs.cp_file(f"{d}/piped", f"{d}/piped2")
    assert fs.cat_file(f"clustrix://{root}/piped2") == b"piped"
    fs.rm(f"{d}/made", recursive=True)
    assert not fs.exists(f"{d}/made")
    assert fs.modified(f"{d}/piped").year >= 2024


def test_module_level_functions(site: Site, d: str) -> None:
    make_links(site, d)
    config = site.fs.config
    assert cluster_ls(d, config) == site.fs.ls(d)
    assert cluster_find("*.txt", d, config) == ["real/file.txt", "real/sub/deep.txt"]
    assert isinstance(cluster_stat(f"{d}/to_file", config), FileInfo)
    assert cluster_exists(d, config) and cluster_isdir(d, config)
    assert cluster_isfile(f"{d}/to_file", config) and not cluster_isfile(d, config)
    assert cluster_glob("real/*.txt", d, config) == ["real/file.txt"]
    assert cluster_du(d, config) == site.fs.du(d)
    assert cluster_count_files(d, "*", config) == site.fs.count_files(d)


def test_executor_methods_share_its_connection(site: Site, d: str) -> None:
    if site.name == "local":
        ex = ClusterExecutor(site.fs.config)
    else:
        require_cluster(ssh=True, slurm=False)
        ex = ClusterExecutor(site.fs.config, poll_interval_min_s=0.05)
    with ex:
        ex.write_bytes(f"{d}/from-executor", b"hi")
        assert ex.ls(d) == ["from-executor"] and ex.read_bytes(f"{d}/from-executor") == b"hi"
        assert ex.stat(f"{d}/from-executor").path == f"{site.base}/{d}/from-executor"
        with ex.open(f"{d}/from-executor") as fh:
            assert fh.read() == "hi"
        assert ex.du(d) == DiskUsage(2, 1, 0) and ex.glob("*", d) == ["from-executor"]
        assert ex.fs.cat_file(f"{d}/from-executor") == b"hi"
        assert ex._async_fs.transport is ex._engine.transport  # type: ignore[attr-defined]
    with pytest.raises(RuntimeError, match="shut down"):
        ex.ls(d)
