"""The worker runtime shipped to the cluster: a small, content-addressed zip.

It holds ``clustrix/worker.py``, ``clustrix/_wire.py``, a stub ``clustrix/__init__.py`` (so the
node never imports the executor, pydantic or asyncssh) and the client's own cloudpickle (so
both ends pickle with the same version). Put on ``PYTHONPATH``, it makes
``python -m clustrix.worker`` work on a node with nothing but a plain Python.

Knows nothing of transports or schedulers: it only produces bytes and their hash.
"""

from __future__ import annotations

import functools
import hashlib
import io
import zipfile
from dataclasses import dataclass
from pathlib import Path

import cloudpickle

_PACKAGE_DIR = Path(__file__).resolve().parent
_WORKER_MODULES = ("_wire.py", "worker.py")
_STUB_INIT = b'"""clustrix worker runtime (stub package: the node needs only the worker)."""\n'
# Fixed timestamp: the same files always give the same bytes, hence the same hash.
_EPOCH = (2020, 1, 1, 0, 0, 0)


@dataclass(frozen=True)
class Bundle:
    """The zip's bytes and the short content hash that names it."""

    data: bytes
    digest: str

    @property
    def filename(self) -> str:
        """File name under which the bundle is stored on the cluster."""
        return f"clustrix-worker-{self.digest}.zip"


@functools.cache
def worker_bundle() -> Bundle:
    """Build (once per process) the worker runtime zip."""
    files: dict[str, bytes] = {"clustrix/__init__.py": _STUB_INIT}
    for name in _WORKER_MODULES:
        files[f"clustrix/{name}"] = (_PACKAGE_DIR / name).read_bytes()
    cp_dir = Path(cloudpickle.__file__).resolve().parent
    for path in sorted(cp_dir.rglob("*.py")):
        files[f"cloudpickle/{path.relative_to(cp_dir).as_posix()}"] = path.read_bytes()
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as zf:
        for name in sorted(files):
            info = zipfile.ZipInfo(name, date_time=_EPOCH)
            info.compress_type = zipfile.ZIP_DEFLATED
            info.external_attr = 0o644 << 16
            zf.writestr(info, files[name])
    data = buffer.getvalue()
    return Bundle(data=data, digest=hashlib.sha256(data).hexdigest()[:16])
