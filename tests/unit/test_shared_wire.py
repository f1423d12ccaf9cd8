"""Where a shared SSH connection listens, its frames, and what the factory builds."""

from __future__ import annotations

import asyncio
import io
import os
import shutil
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from clustrix import ClusterConfig
from clustrix._factory import make_transport
from clustrix.errors import TransportError
from clustrix.transports import _shared_server
from clustrix.transports._shared_wire import (
    encode_frame,
    read_frame,
    receive,
    send,
    shared_place,
)
from clustrix.transports.shared import SharedSSHTransport, shared_transport
from clustrix.transports.ssh import SSHTransport

IDENTITY = {"host": "login.example.org", "port": 22, "username": "me", "key_file": None}


@pytest.fixture(autouse=True)
def places(monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """Short private places of the test's own: HOME, XDG_RUNTIME_DIR and TMPDIR (pytest's
    tmp_path is too long a start for a Unix socket's path)."""
    tmp_path = Path(tempfile.mkdtemp(prefix="cx-"))
    monkeypatch.setenv("HOME", str(tmp_path / "h"))
    monkeypatch.delenv("XDG_CACHE_HOME", raising=False)
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(tmp_path / "run"))
    (tmp_path / "run").mkdir(mode=0o700)
    (tmp_path / "tmp").mkdir()
    monkeypatch.setenv("TMPDIR", str(tmp_path / "tmp"))
    monkeypatch.setattr(tempfile, "tempdir", None)  # gettempdir() reads TMPDIR again
    yield tmp_path
    shutil.rmtree(tmp_path, ignore_errors=True)


def test_the_place_is_the_login_sessions_private_runtime_directory(places: Path) -> None:
    place = shared_place(IDENTITY)
    assert place is not None
    assert place.socket.parent == places / "run" / "clustrix"
    assert oct(place.socket.parent.stat().st_mode & 0o777) == oct(0o700)
    assert {place.lock.parent, place.log.parent} == {place.socket.parent}


def test_every_setting_of_the_login_names_another_place_and_a_secret_does_not() -> None:
    base = shared_place(IDENTITY)
    assert base is not None and shared_place(dict(IDENTITY)).socket == base.socket  # type: ignore[union-attr]
    for name, other in [("host", "b.example.org"), ("port", 2222), ("username", "you"),
                        ("key_file", "/k")]:  # fmt: skip
        changed = shared_place({**IDENTITY, name: other})
        assert changed is not None and changed.socket != base.socket, name
    options = {**IDENTITY, "known_hosts": None}
    with_secret = shared_transport({**options, "password": "hunter2"}, persist_s=1)
    without = shared_transport(options, persist_s=1)
    assert with_secret is not None and without is not None
    assert with_secret._place.socket == without._place.socket
    assert "hunter2" not in os.fspath(with_secret._place.socket)


def test_a_relative_key_file_names_the_same_place_as_its_absolute_path(
    places: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(places)
    relative = shared_transport({**IDENTITY, "key_file": "id_ed25519"}, persist_s=1)
    absolute = shared_transport({**IDENTITY, "key_file": str(places / "id_ed25519")}, persist_s=1)
    assert relative is not None and absolute is not None
    assert relative._place.socket == absolute._place.socket


def test_a_place_someone_else_could_write_or_too_long_is_passed_over(
    places: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (places / "run" / "clustrix").mkdir(mode=0o777)
    os.chmod(places / "run" / "clustrix", 0o777)  # the umask would have masked it
    found = shared_place(IDENTITY)
    assert found is not None and found.socket.parent == places / "h/.cache/clustrix/connections"
    long_home = places / ("x" * 90)
    monkeypatch.setenv("HOME", str(long_home))
    found = shared_place(IDENTITY)
    assert found is not None and found.socket.parent == places / "tmp" / f"clustrix-{os.geteuid()}"
    os.chmod(found.socket.parent, 0o733)
    assert shared_place(IDENTITY) is None  # nowhere private: no sharing, said by the factory


def test_without_a_private_place_the_factory_connects_without_sharing(
    places: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    config = ClusterConfig(cluster_host="login.example.org", connection_persist_s=60)
    assert isinstance(make_transport(config), SharedSSHTransport)
    assert isinstance(make_transport(config.with_overrides(connection_persist_s=0)), SSHTransport)
    monkeypatch.setattr("clustrix.transports.shared.shared_place", lambda identity: None)
    assert isinstance(make_transport(config), SSHTransport)
    assert "no private directory for a shared connection" in caplog.text


def test_connection_persist_s_is_validated() -> None:
    with pytest.raises(ValueError, match="connection_persist_s"):
        ClusterConfig(connection_persist_s=-1)


def test_frames_round_trip_over_a_stream_and_a_pipe() -> None:
    message = ("call", 7, "run", (["echo", "ü"],), {"stdin": b"\x00" * 70000})
    assert read_frame(io.BytesIO(encode_frame(message))) == message
    with pytest.raises(EOFError):
        read_frame(io.BytesIO(encode_frame(message)[:-1]))

    async def over_a_socket() -> Any:
        got: asyncio.Future[Any] = asyncio.get_running_loop().create_future()

        async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            got.set_result(await receive(reader))
            writer.close()

        server = await asyncio.start_server(serve, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        _reader, writer = await asyncio.open_connection("127.0.0.1", port)
        await send(writer, message)
        result = await got
        writer.close()
        server.close()
        return result

    assert asyncio.run(over_a_socket()) == message


class _Unpicklable(Exception):
    def __init__(self) -> None:
        super().__init__("no")
        self.lock = threading.Lock()


def test_an_error_that_cannot_travel_comes_as_a_transport_error_naming_it() -> None:
    assert isinstance(_shared_server._portable(FileNotFoundError(2, "gone", "/x")), OSError)
    portable = _shared_server._portable(_Unpicklable())
    assert isinstance(portable, TransportError) and "_Unpicklable: no" in str(portable)


def test_a_shared_process_that_cannot_start_says_why_and_where_its_log_is() -> None:
    # An option SSHTransport refuses: the shared process fails before it listens.
    transport = shared_transport({**IDENTITY, "jump_host": "a b"}, persist_s=1)
    assert transport is not None

    async def connect() -> None:
        await transport.connect()

    with pytest.raises(TransportError) as caught:
        asyncio.run(connect())
    message = str(caught.value)
    assert "could not start the shared SSH connection process" in message
    assert "jump_host 'a b'" in message and str(transport._place.log) in message
    assert "connection_persist_s=0" in message
    assert not transport._place.socket.exists()
