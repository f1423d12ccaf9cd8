"""The worker runtime shipped to the cluster: a small, content-addressed zip.

It holds the clustrix package itself (its ``__init__`` imports lazily, so the worker loads
only ``worker.py`` and ``_wire.py``, never the executor, pydantic or asyncssh) and the
client's own cloudpickle (so both ends pickle with the same version). Put on ``PYTHONPATH``,
it makes ``python -m clustrix.worker`` work on a node with nothing but a plain Python, and
lets the user's own modules ``import clustrix`` there.

Its name comes from the hash of its sources alone (:func:`runtime_filename`, a few
milliseconds), so that a process whose cluster has the runtime already never builds it; a
build is kept in the user's private cache (:mod:`clustrix._usercache`), so that the next
process reads it instead. Only what a job loads is compiled (:data:`NODE_MODULES`: ~20 ms
of CPU, where all 90 modules took ~160 ms, on the first start after every upgrade); the
rest is there as source, for user code that imports more of clustrix on the node.

Knows nothing of transports or schedulers: it only produces bytes and their hash.
"""

from __future__ import annotations

import functools
import hashlib
import io
import logging
import os
import py_compile
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

import cloudpickle

from . import _usercache

log = logging.getLogger("clustrix")

_PACKAGE_DIR = Path(__file__).resolve().parent
# Fixed timestamp: no build-time data in the zip.
_EPOCH = (2020, 1, 1, 0, 0, 0)
#: The user cache's subdirectory of built zips, and how many of them it keeps (one per
#: clustrix version and Python minor version in use).
CACHE_NAME = "runtime"
CACHE_KEEP = 8


@dataclass(frozen=True)
class Bundle:
    """The zip's bytes and the short hash of its sources (and Python version) naming it."""

    data: bytes
    digest: str

    @property
    def filename(self) -> str:
        """File name under which the bundle is stored on the cluster."""
        return f"clustrix-worker-{self.digest}.zip"


#: The modules a job loads on the node, compiled into the zip: the worker and what it
#: imports, and cloudpickle, which a class or enum pickled by value needs
#: (``tests/test_worker_runtime.py`` checks that each module a job loads comes compiled).
NODE_MODULES = (
    "clustrix/__init__.py",
    "clustrix/worker.py",
    "clustrix/_wire.py",
    "clustrix/_unpickle.py",
    "cloudpickle/",
)


def _compiled(path: Path, name: str) -> bytes:
    """Bytecode for ``path`` that zipimport loads without checking it against the source.

    Python cannot write a bytecode cache inside a zip, so without these every job of every
    array would compile cloudpickle and the worker from source again (about 20 ms of CPU
    each). The node's Python has the client's minor version (checked at connect), so it
    reads this bytecode; hash-based and unchecked, it does not depend on timestamps.
    """
    with tempfile.TemporaryDirectory() as tmp:
        target = os.path.join(tmp, "module.pyc")
        py_compile.compile(
            str(path),
            cfile=target,
            dfile=name,
            doraise=True,
            invalidation_mode=py_compile.PycInvalidationMode.UNCHECKED_HASH,
        )
        with open(target, "rb") as fh:
            return fh.read()


def _filename(digest: str) -> str:
    return f"clustrix-worker-{digest}.zip"


@functools.cache
def _sources() -> tuple[str, tuple[tuple[str, Path], ...]]:
    """The hash naming the runtime, and its modules (name in the zip, path here)."""
    # Named by the hash of the sources and the Python minor version, not of the zip: the
    # bytecode (marshal) is not byte-for-byte reproducible across processes, and the same
    # sources must keep the same name so the cluster keeps the upload it has.
    digest = hashlib.sha256(f"python {sys.version_info[0]}.{sys.version_info[1]}".encode())
    cp_dir = Path(cloudpickle.__file__).resolve().parent
    modules = []
    for package, directory in (("clustrix", _PACKAGE_DIR), ("cloudpickle", cp_dir)):
        for path in sorted(directory.rglob("*.py")):
            name = f"{package}/{path.relative_to(directory).as_posix()}"
            digest.update(name.encode() + b"\0" + hashlib.sha256(path.read_bytes()).digest())
            modules.append((name, path))
    return digest.hexdigest()[:16], tuple(modules)


def runtime_filename() -> str:
    """The runtime zip's file name (``runtime/<name>`` on the cluster), without building
    it: from the hash of its sources."""
    return _filename(_sources()[0])


def _build(modules: tuple[tuple[str, Path], ...]) -> bytes:
    files: dict[str, bytes] = {}
    for name, path in modules:
        files[name] = path.read_bytes()
        if name.startswith(NODE_MODULES):
            files[name + "c"] = _compiled(path, name)
    for package, directory in (
        ("clustrix", _PACKAGE_DIR),
        ("cloudpickle", Path(cloudpickle.__file__).resolve().parent),
    ):
        if (directory / "py.typed").exists():
            files[f"{package}/py.typed"] = b""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as zf:
        for name in sorted(files):
            info = zipfile.ZipInfo(name, date_time=_EPOCH)
            info.compress_type = zipfile.ZIP_DEFLATED
            info.external_attr = 0o644 << 16
            zf.writestr(info, files[name])
    return buffer.getvalue()


def cached_bundle() -> Bundle | None:
    """The worker runtime zip if the user's cache has it (a file read, no build)."""
    digest, _ = _sources()
    directory = _usercache.cache_dir(CACHE_NAME)
    if directory is None:
        return None
    data = _usercache.read_private(directory, _filename(digest))
    if data is None or not zipfile.is_zipfile(io.BytesIO(data)):
        return None
    return Bundle(data=data, digest=digest)


@functools.cache
def worker_bundle() -> Bundle:
    """The worker runtime zip (once per process): from the user's cache, else built and
    put there."""
    cached = cached_bundle()
    if cached is not None:
        return cached
    digest, modules = _sources()
    data = _build(modules)
    directory = _usercache.cache_dir(CACHE_NAME)
    if directory is not None:
        name = _filename(digest)
        try:
            _usercache.write_private(directory, name, data)
            _usercache.prune(directory, _filename("*"), keep=CACHE_KEEP)
        except OSError as exc:  # a full disk: the next process builds it again
            log.debug("clustrix: cannot cache the worker runtime in %s: %s", directory, exc)
    return Bundle(data=data, digest=digest)
