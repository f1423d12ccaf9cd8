"""SSH destinations written as OpenSSH writes them: ``[user@]host[:port]``, and jump hosts
as a comma-separated list of them (``ssh -J``, ``ProxyJump``).

Pure text in, tuples out: imported by :mod:`clustrix.config` to check ``jump_host`` and by the
SSH transport to dial it, so both read it the same way. Knows nothing of connections or of
the configuration model.
"""

from __future__ import annotations

from typing import NamedTuple

__all__ = ["Destination", "parse_jump_hosts"]


class Destination(NamedTuple):
    """One SSH destination; None where it leaves the choice to ~/.ssh/config or the default."""

    user: str | None
    host: str
    port: int | None

    def __str__(self) -> str:
        host = f"[{self.host}]" if ":" in self.host and self.port is not None else self.host
        user = f"{self.user}@" if self.user else ""
        return f"{user}{host}:{self.port}" if self.port is not None else f"{user}{host}"


def parse_jump_hosts(value: str) -> list[Destination]:
    """The hops of ``value`` (``"gw.example.org"``, ``"me@gw:2222,me@inner"``), first hop
    first; ``"none"`` (as OpenSSH) means no jump host. A bad one raises a ValueError saying
    what is wrong and the form to use."""
    text = value.strip()
    if text.lower() == "none":
        return []
    return [_destination(item.strip(), text) for item in text.split(",")]


_FORM = "write [user@]host[:port], several comma-separated (as ssh -J)"


def _destination(item: str, whole: str) -> Destination:
    if not item:
        raise ValueError(f"empty jump host in {whole!r}: {_FORM}")
    if item.startswith("ssh://"):  # OpenSSH also takes ssh://[user@]host[:port]
        item = item[len("ssh://") :].rstrip("/")
    raw = item
    if any(c.isspace() or c in "'\"/\\" for c in item):
        raise ValueError(f"jump host {item!r} has spaces, quotes or slashes: {_FORM}")
    user: str | None = None
    if "@" in item:
        user, _, item = item.rpartition("@")
        if not user:
            raise ValueError(f"jump host '@{item}' has an empty user name: {_FORM}")
    port_text: str | None = None
    if item.startswith("["):  # [v6 address] or [v6 address]:port
        host, bracket, rest = item[1:].partition("]")
        if not bracket or (rest and not rest.startswith(":")):
            raise ValueError(f"jump host {item!r}: unclosed '[' of an IPv6 address: {_FORM}")
        port_text = rest[1:] if rest else None
    elif item.count(":") == 1:
        host, _, port_text = item.partition(":")
    else:  # a host name, or a bare IPv6 address (no port possible without brackets)
        host = item
    if not host:
        raise ValueError(f"jump host {raw!r} has no host name: {_FORM}")
    port: int | None = None
    if port_text is not None:
        if not port_text.isdigit() or not 1 <= int(port_text) <= 65535:
            raise ValueError(
                f"jump host {item!r}: port {port_text!r} is not a number from 1 to 65535"
            )
        port = int(port_text)
    return Destination(user, host, port)
