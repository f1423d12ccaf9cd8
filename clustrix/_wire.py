"""The on-disk job protocol shared by the client and the worker.

A job directory holds::

    secret            32 random bytes, mode 0600: the HMAC key of this submission
    job.sh            the rendered job script
    tasks/<t>.pkl     sealed list of (call_index, cloudpickled fn, cloudpickled (args, kwargs));
                      a worker that checkpoints rewrites it with the calls left to do
    tasks/pool.pkl    a self-scheduled submission: the same list for ALL its calls, which every
                      task takes from, one at a time, by claiming them
    claims/<c>        call <c> is taken: created with O_EXCL by the task that runs it (content:
                      the task index) or by the client that cancelled it (``cancelled``)
    claims/.task-<t>  the calls task <t> claimed, one per line (a requeued task reruns them)
    results/<c>.pkl   sealed result record of call <c> (written to a temp name, then renamed)
    results/done/<c>.pkl  the same, once the client has read it (moved by the next poll)
    logs/<t>.out|err  stdout / stderr of task <t>
    exit/<t>          exit status of task <t>'s worker, written by the job script

"Sealed" means ``MAGIC + HMAC-SHA256(secret, body) + body``, so a file planted or altered by
someone without the secret is rejected before anything is unpickled.

This module is imported by the worker on the compute node: standard library only.
"""

from __future__ import annotations

import os
import sys

# _pickle is the pickler itself: the pickle module adds its pure-Python twin, which
# imports re, enum and struct (about 6 ms of every job's start on the node);
# pickle.loads/dumps and pickle.UnpicklingError are these very objects.
try:
    import _pickle as pickle
    from _operator import _compare_digest as compare_digest  # hmac.py's own fallback
except ImportError:  # not CPython
    import pickle  # type: ignore[no-redef]
    from hmac import compare_digest  # type: ignore[no-redef]

TYPE_CHECKING = False  # not typing.TYPE_CHECKING: the worker should not import typing
if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import Any, Protocol, TypeAlias

    Record: TypeAlias = dict[str, Any]

    class _Hash(Protocol):
        def update(self, data: bytes, /) -> None: ...
        def digest(self) -> bytes: ...


def _builtin_sha256() -> Callable[[bytes], _Hash] | None:
    """CPython's own SHA-256 (built into the interpreter: no library to load), if it has
    one."""
    # the right name first: a module that is not there is looked for along all of sys.path
    names = ("_sha2", "_sha256") if sys.version_info >= (3, 12) else ("_sha256", "_sha2")
    for name in names:
        try:
            sha256: Callable[[bytes], _Hash] = __import__(name).sha256
        except (ImportError, AttributeError):
            continue
        return sha256
    return None


#: The pickle protocol of everything the job directory holds (``_pickle`` has no
#: HIGHEST_PROTOCOL; 5 is the highest of every Python clustrix runs on).
PROTOCOL = 5
MAGIC = b"CLX1"
_MAC_LEN = 32  # HMAC-SHA256
_BLOCK = 64  # SHA-256's block size
_SHA256 = _builtin_sha256()
#: Bodies from this size are sealed with hashlib's SHA-256 (OpenSSL's, several times faster
#: here: ~1.8 GB/s against ~0.3 GB/s), below it with the interpreter's own: loading OpenSSL
#: costs ~3 ms of every job's start, more than the builtin needs for 1 MiB.
OPENSSL_FROM_BYTES = 1 << 20
_IPAD = bytes(x ^ 0x36 for x in range(256))
_OPAD = bytes(x ^ 0x5C for x in range(256))

SECRET_FILE = "secret"
SCRIPT_FILE = "job.sh"
TASKS_DIR = "tasks"
RESULTS_DIR = "results"
LOGS_DIR = "logs"
EXIT_DIR = "exit"
CLAIMS_DIR = "claims"
#: Under RESULTS_DIR: result files the client has read (kept for recover(), no longer listed).
DONE_DIR = "done"
#: The task file of a self-scheduled submission (in TASKS_DIR).
POOL_FILE = "pool"
#: What a claim file holds when the client cancelled the call before anyone took it.
CANCELLED_CLAIM = "cancelled"

#: The worker's exit status when it checkpointed and asks the job script to requeue the job
#: (EX_TEMPFAIL of sysexits.h: "try again later").
EXIT_REQUEUE = 75
#: Set (to the signal's name) by a job script that forwards a checkpoint signal to the worker.
CHECKPOINT_SIGNAL_ENV = "CLUSTRIX_CHECKPOINT_SIGNAL"
SUFFIX = ".pkl"

# A result record is a dict of plain values (safe to unpickle once its MAC is checked):
#   {"ok": True,  "value": <cloudpickle bytes>}
#   {"ok": False, "type": "pkg.mod.Error", "message": str, "traceback": str,
#    "exception": <cloudpickle bytes> | None}


def mac(secret: bytes, body: bytes) -> bytes:
    """HMAC-SHA256 of ``body`` under ``secret`` (RFC 2104, as :func:`hmac.digest` computes
    it), without loading OpenSSL for a small body."""
    if _SHA256 is None or len(body) >= OPENSSL_FROM_BYTES:
        import hashlib
        import hmac

        return hmac.digest(secret, body, hashlib.sha256)
    key = _SHA256(secret).digest() if len(secret) > _BLOCK else secret
    key = key.ljust(_BLOCK, b"\0")
    inner = _SHA256(key.translate(_IPAD))
    inner.update(body)
    return _SHA256(key.translate(_OPAD) + inner.digest()).digest()


def seal(secret: bytes, body: bytes) -> bytes:
    """Prefix ``body`` with the magic and its HMAC under ``secret``."""
    return MAGIC + mac(secret, body) + body


def unseal(secret: bytes, data: bytes) -> bytes:
    """The body of a sealed blob; ``ValueError`` if it was not sealed with ``secret``."""
    head = len(MAGIC) + _MAC_LEN
    if len(data) < head or not data.startswith(MAGIC):
        raise ValueError("not a clustrix file (bad magic)")
    sealed_mac, body = data[len(MAGIC) : head], data[head:]
    if not compare_digest(sealed_mac, mac(secret, body)):  # constant time
        raise ValueError("HMAC check failed: the file was not written by this executor")
    return body


def dump_record(secret: bytes, record: Record) -> bytes:
    """Seal a result record."""
    return seal(secret, pickle.dumps(record, protocol=PROTOCOL))


def load_record(secret: bytes, data: bytes) -> Record:
    """Check and load a sealed result record."""
    record = pickle.loads(unseal(secret, data))
    if not isinstance(record, dict) or "ok" not in record:
        raise ValueError("malformed result record")
    return record


def claim(path: str, owner: str) -> bool:
    """Create the claim file ``path`` holding ``owner``; False if someone else has it.

    ``O_CREAT | O_EXCL`` is atomic on local filesystems, on NFSv3/v4 (exclusive create with
    a verifier, so a retransmitted request that already succeeded is recognised as ours) and
    on Lustre/GPFS; a rename or mkdir could answer a retransmission with a false failure.
    """
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return False
    with os.fdopen(fd, "w") as fh:
        fh.write(f"{owner}\n")
    return True


def write_atomic(path: str, data: bytes, mode: int = 0o600) -> None:
    """Write ``data`` to a temp name beside ``path``, then rename: readers never see a part."""
    directory, name = os.path.split(path)
    tmp = os.path.join(directory, f".{name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        os.replace(tmp, path)
    except BaseException:
        try:  # noqa: SIM105 (contextlib costs the worker an import)
            os.unlink(tmp)
        except OSError:
            pass
        raise
