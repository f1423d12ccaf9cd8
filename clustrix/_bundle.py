"""The worker runtime shipped to the cluster: a small, content-addressed zip.

It holds the clustrix package itself (its ``__init__`` imports lazily, so the worker loads
only ``worker.py`` and ``_wire.py``, never the executor, pydantic or asyncssh) and the
client's own cloudpickle (so both ends pickle with the same version). Put on ``PYTHONPATH``,
it makes ``python -m clustrix.worker`` work on a node with nothing but a plain Python, and
lets the user's own modules ``import clustrix`` there.

Knows nothing of transports or schedulers: it only produces bytes and their hash.
"""

from __future__ import annotations

import functools
import hashlib
import io
import os
import py_compile
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

import cloudpickle

_PACKAGE_DIR = Path(__file__).resolve().parent
# Fixed timestamp: no build-time data in the zip.
_EPOCH = (2020, 1, 1, 0, 0, 0)


@dataclass(frozen=True)
class Bundle:
    """The zip's bytes and the short hash of its sources (and Python version) naming it."""

    data: bytes
    digest: str

    @property
    def filename(self) -> str:
        """File name under which the bundle is stored on the cluster."""
        return f"clustrix-worker-{self.digest}.zip"


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


@functools.cache
def worker_bundle() -> Bundle:
    """Build (once per process) the worker runtime zip."""
    files: dict[str, bytes] = {}
    # Named by the hash of the sources and the Python minor version, not of the zip: the
    # bytecode (marshal) is not byte-for-byte reproducible across processes, and the same
    # sources must keep the same name so the cluster keeps the upload it has.
    digest = hashlib.sha256(f"python {sys.version_info[0]}.{sys.version_info[1]}".encode())
    cp_dir = Path(cloudpickle.__file__).resolve().parent
    for package, directory in (("clustrix", _PACKAGE_DIR), ("cloudpickle", cp_dir)):
        for path in sorted(directory.rglob("*.py")):
            name = f"{package}/{path.relative_to(directory).as_posix()}"
            files[name] = path.read_bytes()
            digest.update(name.encode() + b"\0" + hashlib.sha256(files[name]).digest())
            files[name + "c"] = _compiled(path, name)
        if (directory / "py.typed").exists():
            files[f"{package}/py.typed"] = b""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as zf:
        for name in sorted(files):
            info = zipfile.ZipInfo(name, date_time=_EPOCH)
            info.compress_type = zipfile.ZIP_DEFLATED
            info.external_attr = 0o644 << 16
            zf.writestr(info, files[name])
    return Bundle(data=buffer.getvalue(), digest=digest.hexdigest()[:16])
