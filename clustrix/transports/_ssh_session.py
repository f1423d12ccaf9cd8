"""One asyncssh connection to a login node: dialling, reconnecting, and error translation.

:class:`SSHSession` owns the connection and its one SFTP client, both opened lazily and
reopened on the next call after the connection drops. asyncssh's exceptions are translated
here, once (:meth:`SSHSession.translated`, and the dial), into builtin ``OSError``
subclasses and :class:`clustrix.errors.TransportError`. Knows nothing of commands, files,
schedulers or jobs: :mod:`clustrix.transports.ssh` and :mod:`clustrix.transports._sftp`
build those on it.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import getpass
import logging
import os
import socket
from collections.abc import Iterator
from typing import Any

import asyncssh

from ..errors import CommandTimeoutError, ConnectionLostError, TransportError

__all__ = ["SSHSession"]

logger = logging.getLogger("clustrix.ssh")


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
    ) -> None:
        self._host, self._port, self._username, self._password = host, port, username, password
        self._key_file = os.path.expanduser(os.fspath(key_file)) if key_file else None
        self._known_hosts = os.path.expanduser(os.fspath(known_hosts)) if known_hosts else None
        self._strict = strict_host_key_checking
        self._connect_timeout_s = connect_timeout_s
        self.command_timeout_s = command_timeout_s
        self._keepalive_interval_s = keepalive_interval_s
        # port None: ~/.ssh/config's Port for this host, else 22
        self._where = f"{host}:{port}" if port is not None else host
        #: ``user@host:port`` for messages; the user is the server's word once connected.
        self.location = f"{username or getpass.getuser()}@{self._where}"
        self._lock = asyncio.Lock()  # one (re)connection at a time, however many callers
        self._conn: asyncssh.SSHClientConnection | None = None
        self._sftp: asyncssh.SFTPClient | None = None
        self._home: str | None = None

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
        """Close SFTP and the connection; idempotent, and the next call reconnects."""
        async with self._lock:
            conn, sftp = self._conn, self._sftp
            self._conn, self._sftp, self._home = None, None, None
        with contextlib.suppress(asyncssh.Error, OSError):
            if sftp is not None:
                sftp.exit()
                await sftp.wait_closed()
            if conn is not None:
                conn.close()
                await conn.wait_closed()

    def drop(self, conn: asyncssh.SSHClientConnection | None) -> None:
        """Forget ``conn`` if it is still the current one, so that the next call reconnects."""
        if conn is not None and conn is self._conn:
            conn.abort()
            self._conn, self._sftp, self._home = None, None, None

    async def _connection(self) -> asyncssh.SSHClientConnection:
        """The live connection, dialled if needed. Caller holds ``self._lock``."""
        if self._conn is None or self._conn.is_closed():
            self.drop(self._conn)
            self._conn = await self._dial()
            self.location = f"{self._conn.get_extra_info('username')}@{self._where}"
        return self._conn

    def _options(self) -> dict[str, Any]:
        """asyncssh.connect's keyword arguments; checks the files they name."""
        # Not passing `config` makes asyncssh read ~/.ssh/config; no client_keys means the
        # agent and the default keys (~/.ssh/id_*); no known_hosts means ~/.ssh/known_hosts.
        options: dict[str, Any] = {
            "connect_timeout": self._connect_timeout_s,
            "keepalive_interval": self._keepalive_interval_s,
        }
        for name, file in (("key_file", self._key_file), ("known_hosts", self._known_hosts)):
            if file is not None and not os.path.isfile(file):
                raise TransportError(
                    f"{name} {file} for {self._where} does not exist: fix the path"
                )
        if self._port is not None:
            options["port"] = self._port
        if self._key_file is not None:
            if os.path.isdir(self._key_file):
                raise TransportError(
                    f"key_file {self._key_file} is a directory: give the private key file"
                )
            try:
                options["client_keys"] = [asyncssh.read_private_key(self._key_file)]
            except (asyncssh.KeyImportError, OSError, ValueError) as exc:
                raise TransportError(
                    f"key_file {self._key_file} is not a usable private key ({exc}): give "
                    "an unencrypted OpenSSH/PEM private key, or load it into an SSH agent"
                ) from exc
        if self._username is not None:  # None (asyncssh's default is ()) would break it
            options["username"] = self._username
        if self._password is not None:
            options["password"] = self._password
        if not self._strict:
            logger.warning(
                "host keys of %s are not verified: strict_host_key_checking=False", self._where
            )
            options["known_hosts"] = None
        elif self._known_hosts is not None:
            options["known_hosts"] = self._known_hosts
        return options

    async def _dial(self) -> asyncssh.SSHClientConnection:
        options = self._options()
        try:
            return await asyncssh.connect(self._host, **options)
        except asyncssh.HostKeyNotVerifiable as exc:
            known = self._known_hosts or "~/.ssh/known_hosts"
            raise TransportError(
                f"host key of {self._where} does not match known_hosts {known} ({exc.reason}): "
                "check the host or update known_hosts"
            ) from exc
        except asyncssh.PermissionDenied as exc:
            raise TransportError(await self._refusal(exc.reason, options)) from exc
        except asyncio.TimeoutError as exc:  # before OSError: it is one on Python >= 3.11
            raise ConnectionLostError(
                f"connection to {self._where} timed out after {self._connect_timeout_s} s: "
                "check the host, port and network (VPN, firewall)"
            ) from exc
        except socket.gaierror as exc:
            raise TransportError(
                f"cannot resolve host {self._host!r} ({exc.strerror}): check the host name"
            ) from exc
        except ConnectionRefusedError as exc:
            raise ConnectionLostError(
                f"connection to {self._where} refused: check the port and that sshd runs there"
            ) from exc
        except OSError as exc:
            raise ConnectionLostError(
                f"cannot reach {self._where} ({exc.strerror or exc}): check the host and network"
            ) from exc
        except asyncssh.ConnectionLost as exc:  # dropped during the handshake
            raise ConnectionLostError(f"cannot connect to {self.location}: {exc}") from exc
        except (asyncssh.Error, ValueError) as exc:  # unreadable keys, bad config, ...
            raise TransportError(f"cannot connect to {self.location}: {exc}") from exc

    async def _refusal(self, reason: str, options: dict[str, Any]) -> str:
        """Why authentication was refused, as far as the client side can tell: the user
        really tried (``~/.ssh/config``'s ``User`` counts) and the keys asyncssh skipped."""
        user, config_keys, agent = self._username or getpass.getuser(), [], ""
        try:  # what asyncssh.connect resolved; config=(): read ~/.ssh/config, as it does
            resolved = await asyncssh.SSHClientConnectionOptions.construct(
                config=(), host=self._host, **options
            )
        except (asyncssh.Error, OSError, ValueError):
            resolved = None
        if resolved is not None:
            user = resolved.username
            config_keys = [str(k) for k in resolved.config.get("IdentityFile", ())]
            agent = resolved.agent_path or ""
        message = f"authentication as {user}@{self._where} refused ({reason})"
        if self._key_file is not None:
            return (
                f"{message}: check username, key_file ({self._key_file}), password or the SSH agent"
            )
        if config_keys:
            where, candidates = "IdentityFile in ~/.ssh/config", config_keys
        else:
            where = "default key"
            candidates = [f"~/.ssh/{name}" for name in ("id_ed25519", "id_ecdsa", "id_rsa")]
        locked = [path for path in candidates if _is_encrypted(os.path.expanduser(path))]
        if locked:
            helper = (
                f"the SSH agent at {agent} does not hold it"
                if agent
                else "no SSH agent runs (SSH_AUTH_SOCK is not set)"
            )
            return (
                f"{message}: the {where} {', '.join(locked)} is passphrase-protected and "
                "was skipped (asyncssh uses an encrypted key only when given its passphrase, "
                f"which clustrix cannot type), and {helper}: load it into an agent "
                f"(ssh-add {locked[0]}) or set key_file to an unencrypted key"
            )
        return f"{message}: check username, key_file, password or the SSH agent"

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


def _is_encrypted(path: str) -> bool:
    """True if ``path`` is a private key that needs a passphrase."""
    if not os.path.isfile(path):
        return False
    try:
        asyncssh.read_private_key(path)
    except asyncssh.KeyImportError as exc:
        return "assphrase" in str(exc)  # "Passphrase must be specified to import ..."
    except (OSError, ValueError):
        return False
    return False
