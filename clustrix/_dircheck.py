"""Runs on the cluster before clustrix writes anything there: may jobs run code from the
work directory? Creates what is missing (0700), makes the user's own readable directories
private, refuses what another user could change.

:meth:`clustrix._remote_env.RemoteEnvironment.check_python_and_layout` sends this module's
source (compressed, on the command line) to the cluster's Python in the executor's first
command, which runs it only if that Python has this minor version (:data:`BOOTSTRAP`). So it
imports nothing but the standard library (clustrix is not installed there) and answers on
stdout, one ``CLUSTRIX-<WORD> <json>`` line per fact, ``CLUSTRIX-DIRS-OK`` last of the
checks.

The same command reads the scheduler's facts (the backend's discovery command, started at
once and run meanwhile, its answer in a ``CLUSTRIX-DISCOVERY`` line), and resolves a work
directory given as ``~/...`` or relative against the home directory: one round trip for all
of it.

The rules (docs/security.md says why):

- every directory above the work directory (following symlinks as the kernel does) is owned
  by the user or root, and one that group or others may write has the sticky bit (``/tmp``,
  a ``$SCRATCH`` of mode 1777): otherwise its owner or writers could put a directory of
  their own in place of the work directory;
- the work directory and ``jobs``, ``runtime``, ``code``, ``envs`` below it are the user's;
  one that group or others may write is refused (what they wrote there would run as the
  user); one that they may only read or enter is made private (chmod 0700);
- a group counts as "others" unless it is the user's private group (Red Hat's umask 002
  scheme: a group named as the user, the user's primary group, nobody else in it).
"""

from __future__ import annotations

import binascii
import contextlib
import json
import os
import stat
import subprocess
import sys

__all__ = ["BOOTSTRAP", "KEY_FILE", "SUBDIRS", "main"]

#: The directories under the work directory that clustrix uses.
SUBDIRS = ("jobs", "runtime", "code", "envs")
#: The work directory's secret key (hex), 0600: names environments without revealing
#: what went into their hash (see RemoteEnvironment).
KEY_FILE = "envs/.hash-key"
#: ``python -c`` program: prints the version, then, when the minor version is ``argv[1]``,
#: runs the source in ``argv[2]`` (zlib-compressed, base64: on the command line, so that the
#: command needs no stdin, whose window OpenSSH opens only once the command runs: one round
#: trip less; it is clustrix's own code, no secret). What comes on stdin, if anything, is
#: the worker runtime zip. Python 2 must parse it too, to say which version it is.
BOOTSTRAP = (
    "import sys\n"
    'v = "%d.%d" % sys.version_info[:2]\n'
    'print("CLUSTRIX-PY " + v)\n'
    "sys.stdout.flush()\n"
    "if v == sys.argv[1]:\n"
    "    import base64, zlib\n"
    "    source = zlib.decompress(base64.b64decode(sys.argv[2]))\n"
    '    exec(compile(source, "clustrix-dircheck", "exec"))\n'
    "    sys.exit(main(sys.argv[3:]))\n"
)
#: Exit statuses: a directory could not be created or read; a directory is not safe.
EXIT_CANNOT, EXIT_UNSAFE = 3, 4
_MAX_SYMLINKS = 40  # as Linux's


class Refusal(Exception):
    """A directory that must not be used: ``kind`` says why (see :func:`main`)."""

    def __init__(self, kind: str, path: str, st: os.stat_result | None = None) -> None:
        super().__init__(kind, path)
        self.kind, self.path, self.st = kind, path, st


class Unusable(Exception):
    """A directory that could not be created or read (an ``OSError``'s words)."""

    def __init__(self, path: str, error: OSError) -> None:
        super().__init__(path, error)
        self.path, self.error = path, error


def _name_of(uid: int) -> str:
    try:
        import pwd

        return pwd.getpwuid(uid).pw_name
    except (ImportError, KeyError):
        return str(uid)


def _private_group(gid: int, uid: int) -> bool:
    """True if group ``gid`` is the user's private group (nobody else is in it)."""
    try:
        import grp
        import pwd

        user, group = pwd.getpwuid(uid), grp.getgrgid(gid)
    except (ImportError, KeyError):
        return False
    members = set(group.gr_mem) - {user.pw_name}
    return gid == user.pw_gid and group.gr_name == user.pw_name and not members


def _others_may_write(st: os.stat_result, uid: int) -> bool:
    if st.st_mode & stat.S_IWOTH:
        return True
    return bool(st.st_mode & stat.S_IWGRP) and not _private_group(st.st_gid, uid)


def _check_parent(path: str, st: os.stat_result, uid: int) -> None:
    """A directory above the work directory: nobody but the user or root may swap what
    is below it."""
    if st.st_uid not in (uid, 0):
        raise Refusal("parent-owner", path, st)
    if _others_may_write(st, uid) and not st.st_mode & stat.S_ISVTX:
        raise Refusal("parent-writable", path, st)


def _lstat(path: str) -> os.stat_result | None:
    """``os.lstat``, None if ``path`` does not exist."""
    try:
        return os.lstat(path)
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise Unusable(path, exc) from None


def resolve(path: str, uid: int) -> tuple[str, os.stat_result | None, list[str]]:
    """Walk absolute ``path`` from ``/`` as the kernel would, checking every directory on
    the way as a parent (and every symlink's owner). Returns the physical path reached, its
    ``lstat`` (None if nothing is there) and the names still missing below it."""
    parts = [p for p in path.split("/") if p]
    current = "/"
    st = os.lstat("/")
    links = 0
    while parts:
        _check_parent(current, st, uid)
        name = parts.pop(0)
        if name in (".", ".."):
            current = current if name == "." else os.path.dirname(current)
            st = os.lstat(current)
            continue
        target = os.path.join(current, name)
        found = _lstat(target)
        if found is None:
            return target, None, parts
        if stat.S_ISLNK(found.st_mode):
            links += 1
            if found.st_uid not in (uid, 0):
                raise Refusal("link-owner", target, found)
            if links > _MAX_SYMLINKS:
                raise Unusable(target, OSError(40, "Too many levels of symbolic links"))
            link = os.readlink(target)
            parts = [p for p in link.split("/") if p] + parts
            if link.startswith("/"):
                current, st = "/", os.lstat("/")
            continue
        if not stat.S_ISDIR(found.st_mode):
            raise Refusal("not-dir", target, found)
        current, st = target, found
    return current, st, []


def _plan(path: str, uid: int, to_create: list[str], to_chmod: list[tuple[str, int]]) -> str:
    """Check ``path`` (a directory clustrix uses); note what to create or make private.
    Returns its physical path."""
    physical, st, missing = resolve(path, uid)
    if st is None:
        to_create.append(physical)
        to_create.extend(os.path.join(physical, *missing[: i + 1]) for i in range(len(missing)))
        return os.path.join(physical, *missing)
    if st.st_uid != uid:
        raise Refusal("owner", physical, st)
    if _others_may_write(st, uid):
        raise Refusal("writable", physical, st)
    if stat.S_IMODE(st.st_mode) & 0o077:
        to_chmod.append((physical, stat.S_IMODE(st.st_mode)))
    return physical


def _read_key(path: str, uid: int) -> tuple[os.stat_result | None, str | None]:
    """What is at ``path``, and the key in it if it is a private file of the user's."""
    st = _lstat(path)
    if st is None or not stat.S_ISREG(st.st_mode) or st.st_uid != uid:
        return st, None
    if stat.S_IMODE(st.st_mode) & 0o077:
        return st, None  # others could read it: no secret any more
    with open(path) as fh:
        key = fh.read().strip()
    return st, key if len(key) == 64 else None


def _work_key(path: str, uid: int) -> str:
    """The hex key in ``path``, made once (0600) by whoever comes first."""
    for _ in range(3):
        st, key = _read_key(path, uid)
        if key is not None:
            return key
        tmp = f"{path}.{binascii.hexlify(os.urandom(6)).decode()}.tmp"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as fh:
            fh.write(binascii.hexlify(os.urandom(32)).decode() + "\n")
        try:
            if st is None:
                os.link(tmp, path)  # never over a key another executor has just made
            else:
                os.replace(tmp, path)
        except FileExistsError:
            pass  # that other executor's key it is
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
    raise OSError(f"cannot make a key file at {path}")


def _mine_and_unwritable(st: os.stat_result | None, uid: int) -> bool:
    """A regular file of the user's that nobody else may write."""
    if st is None or not stat.S_ISREG(st.st_mode):
        return False
    return st.st_uid == uid and not st.st_mode & 0o022


def _say(word: str, **fields: object) -> None:
    print(f"CLUSTRIX-{word} {json.dumps(fields)}")


def absolute(path: str) -> str:
    """``path`` with ``~`` and a relative path resolved against the home directory (the
    login directory, physical, as the SFTP server's ``realpath .`` gives it)."""
    home = os.path.realpath(os.path.expanduser("~"))
    if path == "~" or path.startswith("~/"):
        path = home + path[1:]
    return os.path.normpath(os.path.join(home, path))


def _start(argv: list[str]) -> subprocess.Popen[bytes] | None:
    if not argv:
        return None
    return subprocess.Popen(
        argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )


def _report(probe: subprocess.Popen[bytes] | None) -> None:
    """The discovery command's answer, as ``CLUSTRIX-DISCOVERY {"rc", "out", "err"}``."""
    if probe is None:
        return
    out, err = probe.communicate()
    _say(
        "DISCOVERY",
        rc=probe.returncode,
        out=out.decode("utf-8", "replace"),
        err=err.decode("utf-8", "replace"),
    )


def main(argv: list[str]) -> int:
    """``argv``: the work directory, the worker runtime's path below it ("": none),
    ``along`` if the worker runtime zip comes on stdin (written there if it is missing)
    or ``-``, then the scheduler's discovery command (none: no discovery)."""
    work_dir = absolute(argv[0])
    along = argv[2] == "along"
    try:
        probe = _start(argv[3:])
    except OSError as exc:  # e.g. no sh: the facts say so
        probe = None
        _say("DISCOVERY", rc=127, out="", err=str(exc))
    try:
        return _check(work_dir, os.path.join(work_dir, argv[1]) if argv[1] else "", along)
    finally:
        # what was sent and not needed: the client's write completes. Nothing sent: no
        # wait for the EOF, which leaves the client only once the command has started.
        if along:
            sys.stdin.buffer.read()
        sys.stdout.flush()
        _report(probe)
        sys.stdout.flush()


def _put(path: str, data: bytes) -> bool:
    """Write ``data`` at ``path`` atomically, private; False (said why) if it failed."""
    tmp = f"{path}.{binascii.hexlify(os.urandom(6)).decode()}.tmp"
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        os.rename(tmp, path)
    except OSError as exc:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        _say("RUNTIME-FAILED", path=path, error=exc.strerror or str(exc))
        return False
    print("CLUSTRIX-RUNTIME-WRITTEN")
    return True


def _check(work_dir: str, worker_path: str, along: bool) -> int:
    _say("WORKDIR", path=work_dir)
    uid = os.geteuid()
    os.umask(0o077)
    to_create: list[str] = []
    to_chmod: list[tuple[str, int]] = []
    try:
        physical = _plan(work_dir, uid, to_create, to_chmod)
        if not to_create:  # nothing below a directory that is still to be made
            for sub in SUBDIRS:
                _plan(os.path.join(physical, sub), uid, to_create, to_chmod)
        else:
            to_create.extend(os.path.join(physical, sub) for sub in SUBDIRS)
        for path in to_create:
            try:
                os.mkdir(path, 0o700)
            except FileExistsError:  # made meanwhile, by a concurrent executor: check it
                _plan(path, uid, [], to_chmod)
            except OSError as exc:
                raise Unusable(path, exc) from None
        for path, mode in to_chmod:
            try:
                os.chmod(path, 0o700)
            except OSError as exc:
                raise Unusable(path, exc) from None
            _say("PRIVATE", path=path, mode=mode)
        key_path = os.path.join(physical, KEY_FILE)
        try:
            key = _work_key(key_path, uid)
        except OSError as exc:
            raise Unusable(key_path, exc) from None
    except Refusal as refused:
        st = refused.st
        _say(
            "UNSAFE",
            kind=refused.kind,
            path=refused.path,
            user=_name_of(uid),
            owner=_name_of(st.st_uid) if st else "",
            group=str(st.st_gid) if st else "",
            mode=st.st_mode if st else 0,
        )
        return EXIT_UNSAFE
    except Unusable as failed:
        _say("CANNOT", path=failed.path, error=failed.error.strerror or str(failed.error))
        return EXIT_CANNOT
    print(f"CLUSTRIX-KEY {key}")
    try:
        runtime = os.lstat(worker_path) if worker_path else None
    except OSError:
        runtime = None
    runtime_ok = _mine_and_unwritable(runtime, uid)  # else it is uploaded again
    if not runtime_ok and worker_path and along:
        data = sys.stdin.buffer.read()
        runtime_ok = bool(data) and _put(worker_path, data)
    if runtime_ok:
        print("CLUSTRIX-RUNTIME-OK")
    print("CLUSTRIX-DIRS-OK")
    sys.stdout.flush()
    return 0
