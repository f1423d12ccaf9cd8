"""One asyncssh connection to a login node: dialling (through jump hosts), reconnecting, and
error translation.

:class:`SSHSession` owns the connection, the connections to the jump hosts it goes through,
and its one SFTP client, all opened lazily and reopened on the next call after the
connection drops. Every host on the route (:mod:`._ssh_route`: the jump hosts, then the
cluster) is dialled here, with the same keys, known_hosts and auth prompt, so a jump host
that asks for a passphrase or a one-time code is answered too. ``connect_timeout_s`` covers
each hop's dial without the time a person takes to answer.

asyncssh's exceptions are translated once: those of operations here
(:meth:`SSHSession.translated`), those of a dial by :func:`._ssh_route.dial_error`, into
builtin ``OSError`` subclasses and :class:`clustrix.errors.TransportError`. The login itself
(keys, passphrases, answers, why it was refused) is :mod:`._ssh_auth`'s. Knows nothing
of commands, files, schedulers or jobs: :mod:`clustrix.transports.ssh` and
:mod:`clustrix.transports._sftp` build those on it.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import getpass
import logging
import os
from collections.abc import Awaitable, Iterator
from typing import Any, TypeVar

import asyncssh

from .._ssh_spec import parse_jump_hosts
from ..errors import CommandTimeoutError, ConnectionLostError, TransportError
from ._ssh_auth import LoginClient, Secrets, client_keys
from ._ssh_prompt import AuthPrompt, default_prompt
from ._ssh_route import Hop, dial_error, route

__all__ = ["SSHSession"]

logger = logging.getLogger("clustrix.ssh")

T = TypeVar("T")


class SSHSession:
    """The connection (and SFTP client) to ``host``, shared by many coroutines of one loop."""

    def __init__(
        self,
        *,
        host: str,
        port: int | None,
        username: str | None,
        key_file: str | os.PathLike[str] | None,
        password: str | None,
        known_hosts: str | os.PathLike[str] | None,
        strict_host_key_checking: bool,
        connect_timeout_s: float,
        command_timeout_s: float,
        keepalive_interval_s: float,
        key_passphrase: str | None = None,
        jump_host: str | None = None,
        keyring_service: str | None = None,
        auth_prompt: AuthPrompt | None = None,
    ) -> None:
        self._host, self._port, self._username = host, port, username
        # Local paths, in the client's own convention (C:\Users\me\.ssh\id_ed25519 stays so)
        self._key_file = os.path.expanduser(os.fspath(key_file)) if key_file else None
        self._known_hosts = os.path.expanduser(os.fspath(known_hosts)) if known_hosts else None
        self._strict = strict_host_key_checking
        self._connect_timeout_s = connect_timeout_s
        self.command_timeout_s = command_timeout_s
        self._keepalive_interval_s = keepalive_interval_s
        self._jump_host = jump_host
        if jump_host is not None:
            try:
                parse_jump_hosts(jump_host)
            except ValueError as exc:
                raise TransportError(f"jump_host {jump_host!r}: {exc}") from None
        self._secrets = Secrets(
            auth_prompt if auth_prompt is not None else default_prompt,
            password=password,
            passphrase=key_passphrase,
            keyring_service=keyring_service,
        )
        # port None: ~/.ssh/config's Port for this host, else 22
        self._where = f"{host}:{port}" if port is not None else host
        #: ``user@host:port`` for messages; the user is the server's word once connected.
        self.location = f"{username or getpass.getuser()}@{self._where}"
        self._lock = asyncio.Lock()  # one (re)connection at a time, however many callers
        self._conn: asyncssh.SSHClientConnection | None = None
        self._jumps: list[asyncssh.SSHClientConnection] = []  # the route's, first hop first
        self._sftp: asyncssh.SFTPClient | None = None
        self._home: str | None = None

    @property
    def connected(self) -> bool:
        """True while a logged-in connection is open."""
        return self._conn is not None and not self._conn.is_closed()

    async def connection(self) -> asyncssh.SSHClientConnection:
        """The live connection, dialled if needed (reconnects after a drop)."""
        async with self._lock:
            return await self._connection()

    async def sftp_client(self) -> tuple[asyncssh.SSHClientConnection, asyncssh.SFTPClient]:
        """The live connection and its SFTP client, both opened if needed."""
        async with self._lock:
            conn = await self._connection()
            if self._sftp is None:
                with self.translated(conn, "starting SFTP"):
                    # surrogateescape: a name that is not UTF-8 comes back as os.fsdecode
                    # would give it, and goes out as the same bytes, instead of failing.
                    self._sftp = await asyncio.wait_for(
                        conn.start_sftp_client(path_errors="surrogateescape"),
                        self.command_timeout_s,
                    )
            return conn, self._sftp

    async def home(self) -> str:
        """The login directory, as the SFTP server resolves ``.``; cached per connection."""
        if self._home is None:
            conn, sftp = await self.sftp_client()
            with self.translated(conn, "realpath ."):
                self._home = await asyncio.wait_for(sftp.realpath("."), self.command_timeout_s)
        return self._home

    async def close(self) -> None:
        """Close SFTP, the connection and its jump hosts'; idempotent, the next call reconnects."""
        async with self._lock:
            conn, sftp, jumps = self._conn, self._sftp, self._jumps
            self._conn, self._sftp, self._home, self._jumps = None, None, None, []
        with contextlib.suppress(asyncssh.Error, OSError):
            if sftp is not None:
                sftp.exit()
                await sftp.wait_closed()
            for hop in [conn, *reversed(jumps)]:
                if hop is not None:
                    hop.close()
                    await hop.wait_closed()

    def drop(self, conn: asyncssh.SSHClientConnection | None) -> None:
        """Forget ``conn`` if it is still the current one, so that the next call reconnects."""
        if conn is not None and conn is self._conn:
            for hop in [conn, *reversed(self._jumps)]:
                hop.abort()
            self._conn, self._sftp, self._home, self._jumps = None, None, None, []

    async def _connection(self) -> asyncssh.SSHClientConnection:
        """The live connection, dialled if needed. Caller holds ``self._lock``."""
        if self._conn is None or self._conn.is_closed():
            self.drop(self._conn)
            self._conn, self._jumps = await self._dial()
            self.location = f"{self._conn.get_extra_info('username')}@{self._where}"
        return self._conn

    # -- dialling ---------------------------------------------------------------------------

    def _check_files(self) -> None:
        """key_file and known_hosts exist and are what they should be, before any dial."""
        for name, file in (("key_file", self._key_file), ("known_hosts", self._known_hosts)):
            if file is not None and not os.path.isfile(file):
                if name == "key_file" and os.path.isdir(file):
                    raise TransportError(
                        f"key_file {file} is a directory: give the private key file"
                    )
                raise TransportError(
                    f"{name} {file} for {self._where} does not exist: fix the path"
                )
        if self._key_file is not None:
            try:
                asyncssh.read_private_key(self._key_file)
            except asyncssh.KeyImportError as exc:
                if "assphrase" not in str(exc):  # encrypted: its passphrase comes when needed
                    raise TransportError(
                        f"key_file {self._key_file} is not a usable private key ({exc}): "
                        "give an OpenSSH/PEM private key file"
                    ) from exc
            except (OSError, ValueError) as exc:
                raise TransportError(
                    f"key_file {self._key_file} is not a usable private key ({exc}): give an "
                    "OpenSSH/PEM private key file"
                ) from exc

    def _options(self) -> dict[str, Any]:
        """asyncssh.connect's keyword arguments shared by every hop."""
        # Not passing `config` makes asyncssh read ~/.ssh/config; no known_hosts means
        # ~/.ssh/known_hosts. No connect_timeout nor login_timeout: _within() times the dial
        # without the time a person takes to answer (the server's LoginGraceTime still holds).
        options: dict[str, Any] = {
            "keepalive_interval": self._keepalive_interval_s,
            "login_timeout": 0,
        }
        if not self._strict:
            logger.warning(
                "host keys of %s are not verified: strict_host_key_checking=False", self._where
            )
            options["known_hosts"] = None
        elif self._known_hosts is not None:
            options["known_hosts"] = self._known_hosts
        return options

    async def _dial(
        self,
    ) -> tuple[asyncssh.SSHClientConnection, list[asyncssh.SSHClientConnection]]:
        """The connection to the cluster, and those to the jump hosts it goes through."""
        self._check_files()
        hops = await route(self._host, self._port, self._username, self._jump_host)
        conns: list[asyncssh.SSHClientConnection] = []
        try:
            for hop in hops:
                conns.append(await self._login(hop, conns[-1] if conns else None, hops))
        except BaseException:
            for conn in reversed(conns):
                conn.abort()
            raise
        return conns[-1], conns[:-1]

    async def _login(
        self,
        hop: Hop,
        tunnel: asyncssh.SSHClientConnection | None,
        hops: list[Hop],
    ) -> asyncssh.SSHClientConnection:
        secrets = self._secrets
        secrets.begin_login(hop.agent_path)
        keys = await asyncio.to_thread(client_keys, self._key_file, hop.identity_files, secrets)
        options = {**self._options(), **keys, "username": hop.user, "tunnel": tunnel}
        if hop.port is not None:
            options["port"] = hop.port
        options["client_factory"] = lambda: LoginClient(secrets, hop.label)
        try:
            return await self._within(asyncssh.connect(hop.host, **options))
        except Exception as exc:
            via = hops[hops.index(hop) - 1] if tunnel is not None else None
            ours = dial_error(
                exc,
                hop,
                via,
                known_hosts=self._known_hosts,
                key_file=self._key_file,
                connect_timeout_s=self._connect_timeout_s,
                problems=secrets.problems,
            )
            if ours is exc:
                raise
            raise ours from exc

    async def _within(self, dial: Awaitable[T]) -> T:
        """``dial`` within ``connect_timeout_s``, not counting the time spent waiting for a
        person to answer a question (asyncio.TimeoutError after that)."""
        task = asyncio.ensure_future(dial)
        loop = asyncio.get_running_loop()
        started, asked_before = loop.time(), self._secrets.asked_s()
        try:
            while True:
                spent = loop.time() - started - (self._secrets.asked_s() - asked_before)
                left = self._connect_timeout_s - spent
                if left <= 0:
                    raise asyncio.TimeoutError
                done, _ = await asyncio.wait({task}, timeout=left)
                if done:
                    return task.result()
        finally:
            if not task.done():
                task.cancel()
                with contextlib.suppress(BaseException):
                    await task

    @contextlib.contextmanager
    def translated(
        self,
        conn: asyncssh.SSHClientConnection,
        what: str,
        path: str | None = None,
        *,
        timeout_s: float | None = None,
    ) -> Iterator[None]:
        """Turn asyncssh's exceptions from one operation on ``conn`` into ours (see
        :mod:`clustrix.transports.base`); a lost connection is dropped, to be redialled."""
        try:
            yield
        except asyncssh.SFTPNoSuchFile as exc:
            raise FileNotFoundError(errno.ENOENT, f"{exc.reason} on {self.location}", path) from exc
        except asyncssh.SFTPPermissionDenied as exc:
            raise PermissionError(errno.EACCES, f"{exc.reason} on {self.location}", path) from exc
        except (
            asyncssh.DisconnectError,
            asyncssh.SFTPConnectionLost,
            asyncssh.SFTPNoConnection,
            ConnectionError,
        ) as exc:
            self.drop(conn)
            raise ConnectionLostError(f"connection to {self.location} lost: {what}: {exc}") from exc
        except asyncio.TimeoutError:
            timeout_s = self.command_timeout_s if timeout_s is None else timeout_s
            raise CommandTimeoutError(
                f"{what} on {self.location} did not finish within {timeout_s} s"
            ) from None
        except (asyncssh.Error, OSError) as exc:
            if conn.is_closed():  # e.g. ChannelOpenError("SSH connection closed")
                self.drop(conn)
                raise ConnectionLostError(
                    f"connection to {self.location} lost: {what}: {exc}"
                ) from exc
            raise TransportError(f"{what} on {self.location} failed: {exc}") from exc
