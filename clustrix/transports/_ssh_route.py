"""The route to a cluster, and what a failed dial of one host on it means.

The route is the jump hosts (``jump_host``, else ``ProxyJump`` in ~/.ssh/config; the first
hop's own ProxyJump followed, as OpenSSH does), first hop first, then the cluster; every host
on it resolved through its own ~/.ssh/config block (asyncssh reads the file, as it does when
dialling): its user, IdentityFile, agent and ProxyJump. :func:`dial_error` translates what
dialling one of them raised, naming that host. Knows nothing of logins or connections kept:
:mod:`._ssh_session` dials, :mod:`._ssh_auth` logs in.
"""

from __future__ import annotations

import asyncio
import os
import socket
from collections.abc import Sequence
from dataclasses import dataclass

import asyncssh

from .._ssh_spec import parse_jump_hosts
from ..errors import ConnectionLostError, TransportError
from ._ssh_auth import Problem, refusal

__all__ = ["MAX_HOPS", "Hop", "dial_error", "resolve", "route"]

#: Jump hosts on one route at most: more means a ProxyJump loop in ~/.ssh/config.
MAX_HOPS = 8


@dataclass(frozen=True)
class Hop:
    """One host on the route, as ~/.ssh/config resolves it."""

    host: str  # as given (an alias of ~/.ssh/config is fine)
    port: int | None  # None: ~/.ssh/config's, else 22
    user: str  # the user logged in as
    where: str  # host[:port] for messages
    identity_files: tuple[str, ...]  # ~/.ssh/config's IdentityFile for it
    agent_path: str  # the SSH agent's socket, "" without one
    proxy_jump: str | None  # ~/.ssh/config's ProxyJump for it
    jump: bool  # a jump host, not the cluster

    @property
    def label(self) -> str:
        return f"{self.user}@{self.where}"

    @property
    def what(self) -> str:
        return f"jump host {self.where}" if self.jump else self.where


async def resolve(
    host: str, port: int | None, user: str | None, *, username: str | None, jump: bool
) -> Hop:
    """``host`` as ~/.ssh/config describes it. The user: ``user``, else ~/.ssh/config's
    User, else ``username`` (the cluster's, for a jump host), else the local user."""
    try:
        options = await asyncssh.SSHClientConnectionOptions.construct(
            config=(),
            host=host,
            port=port if port is not None else (),
            username=user if user is not None else (),
            client_keys=None,  # keys are chosen per login (_ssh_auth.client_keys)
            known_hosts=None,
        )
    except (asyncssh.Error, OSError, ValueError) as exc:
        raise TransportError(
            f"cannot read the SSH client configuration (~/.ssh/config) for {host}: {exc}: "
            "fix that file"
        ) from exc
    config = options.config
    if user is None and config.get("User") is None:
        user = username
    agent = config.get("IdentityAgent", None) or os.environ.get("SSH_AUTH_SOCK", "")
    tunnel = options.tunnel
    return Hop(
        host=host,
        port=port,
        user=user or options.username,
        where=f"{host}:{port}" if port is not None else host,
        identity_files=tuple(str(path) for path in config.get("IdentityFile", ()) or ()),
        agent_path="" if agent in (None, "none") else os.path.expanduser(str(agent)),
        proxy_jump=tunnel if isinstance(tunnel, str) else None,
        jump=jump,
    )


async def route(
    host: str, port: int | None, username: str | None, jump_host: str | None
) -> list[Hop]:
    """The jump hosts, first hop first, then the cluster ``host``."""
    target = await resolve(host, port, username, username=username, jump=False)
    spec: str | None
    if jump_host is not None:
        spec, where = jump_host, "jump_host"
    else:
        spec, where = target.proxy_jump, f"ProxyJump in ~/.ssh/config for {host}"
    hops = [target]
    while spec:
        try:
            found = parse_jump_hosts(spec)
        except ValueError as exc:
            raise TransportError(f"{where} {spec!r}: {exc}: fix it") from None
        if not found:  # "none"
            break
        resolved = [
            await resolve(hop.host, hop.port, hop.user, username=username, jump=True)
            for hop in found
        ]
        hops[:0] = resolved
        if len(hops) > MAX_HOPS + 1:
            raise TransportError(
                f"more than {MAX_HOPS} jump hosts on the way to {target.where} "
                f"({', '.join(hop.where for hop in hops[:-1])}): a ProxyJump loop in "
                "~/.ssh/config? Exclude the jump host from the Host pattern that names it"
            )
        # the first hop is reached through its own ProxyJump, if it has one
        spec, where = resolved[0].proxy_jump, f"ProxyJump in ~/.ssh/config for {found[0].host}"
    return hops


def dial_error(
    exc: Exception,
    hop: Hop,
    via: Hop | None,
    *,
    known_hosts: str | None,
    key_file: str | None,
    connect_timeout_s: float,
    problems: Sequence[Problem],
) -> Exception:
    """Our exception for ``exc`` from dialling ``hop`` (through the jump host ``via``):
    ``exc`` itself when it is ours already or nothing we know."""
    what = hop.what
    if isinstance(exc, TransportError):
        return exc
    if isinstance(exc, asyncssh.HostKeyNotVerifiable):
        known = known_hosts or "~/.ssh/known_hosts"
        return TransportError(
            f"host key of {what} does not match known_hosts {known} ({exc.reason}): "
            "check the host or update known_hosts"
        )
    if isinstance(exc, asyncssh.PermissionDenied) or (
        isinstance(exc, asyncssh.DisconnectError)
        and "authentication" in exc.reason.lower()  # "Too many authentication failures"
    ):
        message = refusal(
            exc.reason,
            user=hop.user,
            where=hop.where,
            key_file=key_file,
            problems=problems,
        )
        return TransportError(f"jump host: {message}" if hop.jump else message)
    if isinstance(exc, asyncssh.ChannelOpenError) and via is not None:
        if exc.code == asyncssh.OPEN_CONNECT_FAILED:
            return ConnectionLostError(
                f"jump host {via.where} cannot reach {hop.where} ({exc.reason}): check "
                f"{'jump_host' if hop.jump else 'cluster_host and cluster_port'} as the "
                "jump host sees them, and that sshd runs there"
            )
        return TransportError(
            f"jump host {via.where} refused to forward to {hop.where} ({exc.reason}): it "
            "must allow TCP forwarding there (sshd's AllowTcpForwarding and PermitOpen); "
            f"check {'jump_host' if hop.jump else 'cluster_host and cluster_port'}"
        )
    if isinstance(exc, asyncio.TimeoutError):  # before OSError: it is one on Python >= 3.11
        return ConnectionLostError(
            f"connection to {what} timed out after {connect_timeout_s} s: "
            "check the host, port and network (VPN, firewall)"
        )
    if isinstance(exc, socket.gaierror):
        return TransportError(
            f"cannot resolve {'jump host' if hop.jump else 'host'} {hop.host!r} "
            f"({exc.strerror}): check the host name"
        )
    if isinstance(exc, ConnectionRefusedError):
        return ConnectionLostError(
            f"connection to {what} refused: check the port and that sshd runs there"
        )
    if isinstance(exc, OSError):
        return ConnectionLostError(
            f"cannot reach {what} ({exc.strerror or exc}): check the host and network"
        )
    if isinstance(exc, asyncssh.ConnectionLost):  # dropped during the handshake
        return ConnectionLostError(f"cannot connect to {hop.label}: {exc}")
    if isinstance(exc, (asyncssh.Error, ValueError)):  # unreadable keys, bad config, ...
        return TransportError(f"cannot connect to {hop.label}: {exc}")
    return exc
