"""What a config builds: its scheduler backend (through the registry) and its transport.

The executor and the filesystem façade both build from here, so neither imports the other.
"""

from __future__ import annotations

import logging
from typing import Any

from pydantic import SecretStr

from .backends import check_cluster_type, registered_backends
from .config import ClusterConfig
from .errors import ConfigError
from .schedulers.base import Scheduler
from .transports._ssh_prompt import AuthPrompt
from .transports.base import Transport

__all__ = ["make_scheduler", "make_transport", "ssh_options"]

logger = logging.getLogger("clustrix")


def make_scheduler(config: ClusterConfig) -> Scheduler:
    """The scheduler backend named by ``config.cluster_type``."""
    backend = registered_backends()[check_cluster_type(config.cluster_type)]
    try:
        cls = backend.load()
    except (ImportError, AttributeError) as exc:
        raise ConfigError(
            f"cluster_type {backend.name!r}: cannot load {backend.target} ({exc}); "
            f"reinstall {backend.origin} or choose another cluster_type"
        ) from exc
    if not (isinstance(cls, type) and issubclass(cls, Scheduler)):
        raise ConfigError(
            f"cluster_type {backend.name!r}: {backend.target} is not a "
            "clustrix.schedulers.base.Scheduler subclass; fix the entry point of "
            f"{backend.origin}"
        )
    return cls.from_config(config)


def make_transport(config: ClusterConfig, *, auth_prompt: AuthPrompt | None = None) -> Transport:
    """SSH when ``cluster_host`` is set, local subprocesses otherwise (any backend).

    ``auth_prompt`` asks a person for what an SSH login needs and the config does not give
    (a key's passphrase, a one-time code); None: the terminal, or the notebook in Jupyter."""
    if config.cluster_host is None:
        from .transports.local import LocalTransport

        return LocalTransport()
    options = ssh_options(config)
    if config.connection_persist_s > 0:
        from .transports.shared import shared_transport

        shared = shared_transport(
            options, persist_s=config.connection_persist_s, auth_prompt=auth_prompt
        )
        if shared is not None:
            return shared
        logger.warning(
            "connection_persist_s: no private directory for a shared connection on this "
            "machine; connecting without one"
        )
    from .transports.ssh import SSHTransport  # asyncssh: imported only where it is used

    return SSHTransport(**options, auth_prompt=auth_prompt)


def ssh_options(config: ClusterConfig) -> dict[str, Any]:
    """SSHTransport's keyword arguments for ``config`` (which names a ``cluster_host``)."""
    return {
        "host": config.cluster_host,
        "port": config.cluster_port,
        "username": config.username,
        "key_file": config.key_file,
        "password": _secret(config.password),
        "known_hosts": config.known_hosts,
        "strict_host_key_checking": config.strict_host_key_checking,
        "connect_timeout_s": config.connect_timeout_s,
        "command_timeout_s": config.command_timeout_s,
        "key_passphrase": _secret(config.key_passphrase),
        "jump_host": config.jump_host,
        "keyring_service": config.keyring_service,
    }


def _secret(value: SecretStr | None) -> str | None:
    return value.get_secret_value() if value is not None else None
