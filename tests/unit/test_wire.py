"""The job-file protocol (seal/unseal, atomic writes), the worker run in-process, and the
client's decoding of result records."""

from __future__ import annotations

import functools
import hashlib
import hmac
import os
import pickle
import stat
import sys
import threading
import types
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import cloudpickle
import pytest
from hypothesis import given
from hypothesis import strategies as st

from clustrix import _wire, worker
from clustrix._serialize import decode_result, dumps_arguments, dumps_call, dumps_function
from clustrix.errors import RemoteError, RemoteTraceback, SerializationError

SECRET = b"s" * 32
OTHER_SECRET = b"o" * 32


# --------------------------------------------------------------------------- seal / unseal
@given(st.binary(min_size=1, max_size=64), st.binary(max_size=256))
def test_seal_round_trip(secret: bytes, body: bytes) -> None:
    sealed = _wire.seal(secret, body)
    assert sealed.startswith(_wire.MAGIC)
    assert sealed.endswith(body)
    assert _wire.unseal(secret, sealed) == body


@given(st.binary(max_size=64), st.data())
def test_any_tampered_byte_is_rejected(body: bytes, data: st.DataObject) -> None:
    sealed = bytearray(_wire.seal(SECRET, body))
    index = data.draw(st.integers(0, len(sealed) - 1))
    sealed[index] ^= data.draw(st.integers(1, 255))
    with pytest.raises(ValueError):
        _wire.unseal(SECRET, bytes(sealed))


@given(st.binary(max_size=200), st.binary(max_size=300))
def test_mac_is_hmac_sha256(secret: bytes, body: bytes) -> None:
    # the interpreter's own SHA-256 for small bodies (no OpenSSL to load on the node): the
    # same HMAC as the hmac module's, keys longer than a block included
    assert _wire.mac(secret, body) == hmac.digest(secret, body, hashlib.sha256)


@pytest.mark.parametrize("size", [_wire.OPENSSL_FROM_BYTES - 1, _wire.OPENSSL_FROM_BYTES])
def test_mac_either_side_of_the_openssl_threshold(size: int) -> None:
    body = os.urandom(size)
    sealed = _wire.seal(SECRET, body)
    assert sealed[len(_wire.MAGIC) : -size] == hmac.digest(SECRET, body, hashlib.sha256)
    assert _wire.unseal(SECRET, sealed) == body


def test_tampered_body_fails_the_hmac() -> None:
    sealed = bytearray(_wire.seal(SECRET, b"payload"))
    sealed[-1] ^= 1
    with pytest.raises(ValueError, match="HMAC check failed"):
        _wire.unseal(SECRET, bytes(sealed))


def test_wrong_secret_is_rejected() -> None:
    with pytest.raises(ValueError, match="HMAC check failed"):
        _wire.unseal(OTHER_SECRET, _wire.seal(SECRET, b"payload"))


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"CLX1",
        b"CLX1" + b"\0" * 31,  # shorter than magic + MAC
        b"CLX2" + b"\0" * 40,
        pickle.dumps({"ok": True, "value": b""}),  # an unsealed record
    ],
)
def test_bad_magic_or_truncated(data: bytes) -> None:
    with pytest.raises(ValueError, match="bad magic"):
        _wire.unseal(SECRET, data)


def test_record_round_trip_and_malformed_records() -> None:
    record = {"ok": True, "value": cloudpickle.dumps([1, 2])}
    assert _wire.load_record(SECRET, _wire.dump_record(SECRET, record)) == record
    for body in ([1, 2], {"value": 1}, "ok"):
        sealed = _wire.seal(SECRET, pickle.dumps(body))
        with pytest.raises(ValueError, match="malformed result record"):
            _wire.load_record(SECRET, sealed)
    with pytest.raises(ValueError):
        _wire.load_record(OTHER_SECRET, _wire.dump_record(SECRET, record))


# --------------------------------------------------------------------------- write_atomic
def test_write_atomic_mode_and_no_temp_left(tmp_path: Path) -> None:
    path = tmp_path / "0.pkl"
    _wire.write_atomic(str(path), b"data")
    assert path.read_bytes() == b"data"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert os.listdir(tmp_path) == ["0.pkl"]


def test_write_atomic_replaces_an_existing_file(tmp_path: Path) -> None:
    path = tmp_path / "secret"
    path.write_bytes(b"old content that is longer")
    path.chmod(0o644)
    _wire.write_atomic(str(path), b"new")
    assert path.read_bytes() == b"new"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert os.listdir(tmp_path) == ["secret"]


def test_write_atomic_failure_leaves_nothing(tmp_path: Path) -> None:
    path = tmp_path / "0.pkl"
    with pytest.raises(TypeError):
        _wire.write_atomic(str(path), "not bytes")  # type: ignore[arg-type]
    assert os.listdir(tmp_path) == []
    with pytest.raises(FileNotFoundError):
        _wire.write_atomic(str(tmp_path / "missing" / "0.pkl"), b"x")
    assert os.listdir(tmp_path) == []


# --------------------------------------------------------------------------- worker
class NeedsTwoArgs(Exception):
    """Pickles, but cannot be rebuilt by unpickling (its __init__ wants two arguments)."""

    def __init__(self, a: str, b: str) -> None:
        super().__init__(f"{a}/{b}")


class UserError(Exception):
    pass


def boom(x: int) -> None:
    raise UserError(f"bad input {x}")


def make_generator() -> Iterator[int]:
    yield 1


def raise_needy() -> None:
    raise NeedsTwoArgs("left", "right")


def make_job_dir(
    tmp_path: Path, calls: list[tuple[int, tuple[bytes, bytes]]], *, seal_with: bytes = SECRET
):
    job_dir = tmp_path / "job"
    for sub in (_wire.TASKS_DIR, _wire.RESULTS_DIR):
        (job_dir / sub).mkdir(parents=True)
    (job_dir / _wire.SECRET_FILE).write_bytes(SECRET)
    task = _wire.seal(seal_with, pickle.dumps([(i, *payload) for i, payload in calls]))
    (job_dir / _wire.TASKS_DIR / f"0{_wire.SUFFIX}").write_bytes(task)
    return job_dir


def call(fn: Any, *args: Any, **kwargs: Any) -> tuple[bytes, bytes]:
    return cloudpickle.dumps(fn), cloudpickle.dumps((args, kwargs))


def read_result(job_dir: Path, index: int) -> dict[str, Any]:
    path = job_dir / _wire.RESULTS_DIR / f"{index}{_wire.SUFFIX}"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    return _wire.load_record(SECRET, path.read_bytes())


@pytest.fixture
def ran_job(tmp_path: Path) -> Path:
    calls = [
        (5, call(pow, 2, 10)),
        (6, call(boom, 3)),
        (7, call(threading.Lock)),
        (8, call(make_generator)),
        (9, call(sys.exit, 4)),
        (10, call(sorted, [3, 1, 2], reverse=True)),
        (11, call(raise_needy)),
        (12, (b"not a pickle", b"nor this")),
    ]
    job_dir = make_job_dir(tmp_path, calls)
    assert worker.run_task(str(job_dir), 0) == 0
    return job_dir


def test_run_task_writes_one_result_per_call(ran_job: Path) -> None:
    names = sorted(os.listdir(ran_job / _wire.RESULTS_DIR))
    assert names == sorted(f"{i}{_wire.SUFFIX}" for i in range(5, 13))  # no temp files
    assert decode_result(read_result(ran_job, 5)) == (1024, None)
    assert decode_result(read_result(ran_job, 10)) == ([3, 2, 1], None)


def test_raising_call_records_type_message_traceback(ran_job: Path) -> None:
    record = read_result(ran_job, 6)
    assert record["ok"] is False
    assert record["type"] == f"{__name__}.UserError"
    assert record["message"] == "bad input 3"
    assert "in boom" in record["traceback"]
    assert 'raise UserError(f"bad input {x}")' in record["traceback"]
    assert "run_call" not in record["traceback"]  # the worker's own frame is skipped

    value, exception = decode_result(record)
    assert value is None
    assert type(exception) is UserError
    assert str(exception) == "bad input 3"
    assert isinstance(exception.__cause__, RemoteTraceback)
    assert "in boom" in str(exception.__cause__)


def test_system_exit_in_user_code_is_a_result_too(ran_job: Path) -> None:
    record = read_result(ran_job, 9)
    assert (record["ok"], record["type"], record["message"]) == (False, "SystemExit", "4")
    _, exception = decode_result(record)
    assert isinstance(exception, SystemExit)
    assert exception.code == 4


@pytest.mark.parametrize(("index", "name"), [(7, "_thread.lock"), (8, "generator")])
def test_unpicklable_result_records_an_error_naming_it(
    ran_job: Path, index: int, name: str
) -> None:
    record = read_result(ran_job, index)
    assert record["ok"] is False
    assert f"the result of the call (a {name}) cannot be sent back" in record["message"]
    assert record["serialization"] is True
    assert record["type"] == "TypeError"
    _, exception = decode_result(record)
    assert isinstance(exception, SerializationError)  # a TypeError too
    assert f"(a {name})" in str(exception)


def test_exception_that_cannot_be_rebuilt_becomes_remote_error(ran_job: Path) -> None:
    record = read_result(ran_job, 11)
    assert record["exception"] is not None  # it pickled on the node ...
    _, exception = decode_result(record)  # ... but does not unpickle here
    assert isinstance(exception, RemoteError)
    assert exception.type_name == f"{__name__}.NeedsTwoArgs"
    assert exception.message == "left/right"
    assert str(exception) == f"{__name__}.NeedsTwoArgs: left/right"
    assert "in raise_needy" in exception.traceback_text
    assert isinstance(exception.__cause__, RemoteTraceback)


def test_call_that_cannot_be_unpickled_on_the_node(ran_job: Path) -> None:
    record = read_result(ran_job, 12)
    assert record["ok"] is False
    assert "the call could not be unpickled on the node" in record["traceback"]


def test_task_sealed_with_another_secret_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    job_dir = make_job_dir(tmp_path, [(0, call(pow, 2, 3))], seal_with=OTHER_SECRET)
    assert worker.run_task(str(job_dir), 0) == worker.EXIT_BAD_TASK == 3
    assert os.listdir(job_dir / _wire.RESULTS_DIR) == []
    assert "HMAC check failed" in capsys.readouterr().err


def test_missing_task_file_is_refused(tmp_path: Path) -> None:
    job_dir = make_job_dir(tmp_path, [(0, call(pow, 2, 3))])
    assert worker.run_task(str(job_dir), 1) == worker.EXIT_BAD_TASK
    assert os.listdir(job_dir / _wire.RESULTS_DIR) == []


@pytest.mark.parametrize(
    "argv", [[], ["run"], ["run", "/d"], ["run", "/d", "x"], ["go", "/d", "0"], ["run", "/d", "-1"]]
)
def test_worker_main_usage(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    assert worker.main(argv) == worker.EXIT_BAD_USAGE
    assert worker.USAGE in capsys.readouterr().err


def test_worker_main_runs_the_task(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # main() tidies this process's environment for the user's code: keep that to this test
    monkeypatch.setattr(sys, "path", list(sys.path))
    monkeypatch.setenv("PYTHONPATH", os.environ.get("PYTHONPATH", ""))
    monkeypatch.setenv("PYTHONSAFEPATH", "1")
    job_dir = make_job_dir(tmp_path, [(0, call(pow, 3, 3))])
    assert worker.main(["run", str(job_dir), "0"]) == 0
    assert decode_result(read_result(job_dir, 0)) == (27, None)


# --------------------------------------------------------------------------- decode_result
def test_decode_result_value() -> None:
    assert decode_result({"ok": True, "value": cloudpickle.dumps({"a": (1, 2)})}) == (
        {"a": (1, 2)},
        None,
    )


def test_decode_result_value_that_cannot_be_unpickled() -> None:
    value, error = decode_result({"ok": True, "value": b"garbage"})
    assert value is None
    assert isinstance(error, SerializationError)
    assert "could not be unpickled on the client" in str(error)
    assert error.__cause__ is not None


def error_record(exception: bytes | None, type_name: str = "pkg.Error") -> dict[str, Any]:
    return {
        "ok": False,
        "type": type_name,
        "message": "it broke",
        "traceback": 'Traceback (most recent call last):\n  File "x.py"\npkg.Error: it broke\n',
        "exception": exception,
    }


def test_decode_result_user_exception_type_with_remote_traceback() -> None:
    _, exception = decode_result(error_record(cloudpickle.dumps(KeyError("k"))))
    assert type(exception) is KeyError
    assert exception.args == ("k",)
    cause = exception.__cause__
    assert isinstance(cause, RemoteTraceback)
    assert cause.traceback_text.startswith("Traceback (most recent call last):")


def unimportable_exception_pickle() -> bytes:
    """A pickled exception whose module existed on the node but does not exist here."""
    module = types.ModuleType("clustrix_test_vanished_module")

    class Vanished(Exception):
        pass

    Vanished.__module__, Vanished.__qualname__ = module.__name__, "Vanished"
    module.Vanished = Vanished  # type: ignore[attr-defined]
    sys.modules[module.__name__] = module
    try:
        return pickle.dumps(Vanished("x"))
    finally:
        del sys.modules[module.__name__]


@pytest.mark.parametrize(
    "exception",
    [
        None,  # the exception could not be pickled on the node
        b"garbage",
        cloudpickle.dumps("not an exception"),
        pytest.param(unimportable_exception_pickle(), id="unimportable"),
    ],
)
def test_decode_result_unloadable_exception_is_remote_error(exception: bytes | None) -> None:
    _, error = decode_result(error_record(exception))
    assert isinstance(error, RemoteError)
    assert (error.type_name, error.message) == ("pkg.Error", "it broke")
    assert str(error) == "pkg.Error: it broke"
    assert isinstance(error.__cause__, RemoteTraceback)
    assert "it broke" in str(error.__cause__)


# --------------------------------------------------------------------------- dumps_call
def test_dumps_call_round_trip() -> None:
    function, arguments = dumps_call(divmod, (7, 2), {})
    fn = cloudpickle.loads(function)
    args, kwargs = cloudpickle.loads(arguments)
    assert fn(*args, **kwargs) == (3, 1)


def test_the_function_of_a_task_is_stored_once() -> None:
    function = dumps_function(functools.partial(pow, 2))  # shared by every call of a map
    calls = [(i, function, dumps_arguments((i,), {})) for i in range(100)]
    assert len(pickle.dumps(calls)) < len(function) + 100 * (len(calls[0][2]) + 20)


def test_dumps_call_names_the_keyword_argument() -> None:
    with pytest.raises(SerializationError) as info:
        dumps_call(print, (1, 2), {"lock": threading.Lock()})
    message = str(info.value)
    assert "keyword argument 'lock'" in message
    assert "_thread.lock" in message
    assert isinstance(info.value, TypeError)


def test_dumps_call_names_the_positional_argument() -> None:
    with pytest.raises(SerializationError, match=r"^positional argument 1 \(_thread\.lock"):
        dumps_call(print, ("fine", threading.Lock(), "fine"), {})


def test_dumps_call_names_the_function() -> None:
    fn = functools.partial(print, threading.Lock())
    with pytest.raises(SerializationError, match=r"^the function \(functools\.partial"):
        dumps_call(fn, (), {})


def test_dumps_call_refuses_a_non_callable() -> None:
    with pytest.raises(TypeError, match="is not callable"):
        dumps_call(42, (), {})
