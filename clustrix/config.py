"""Configuration: :class:`ClusterConfig` and the per-call :class:`Resources`.

``ClusterConfig`` is a pydantic-settings model. Sources, lowest to highest priority: defaults
< a YAML/TOML file (``ClusterConfig.from_file(path)`` / ``load(path)``, else
``$CLUSTRIX_CONFIG``) < ``CLUSTRIX_<FIELD>`` environment variables < explicit arguments. A bare
``ClusterConfig()`` reads them all, as ``ClusterConfig.load()`` does; mapping fields
(``environment_variables``) merge key by key across sources, the higher source winning a key.
A copy (``with_overrides``) reads no source again: it is the config it copies, changed.

This module knows nothing of transports, schedulers or the executor; the node imports it only
when the user's code does (it needs pydantic and pydantic-settings).
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Mapping
from contextvars import ContextVar
from pathlib import Path
from typing import Any, Literal, TypeVar

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic.fields import FieldInfo
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

from ._config_errors import format_validation_error, suggest
from ._config_file import read_config_file
from ._ssh_spec import parse_jump_hosts
from ._wire import CHECKPOINT_SIGNAL_ENV
from .backends import available_backends, check_cluster_type
from .errors import ConfigError

__all__ = ["CLUSTER_TYPES", "ClusterConfig", "Resources"]

#: Backends available in this release. Others named in the design are refused with a clear error.
#: The ``cluster_type`` names this installation accepts (built in and from entry points).
CLUSTER_TYPES = available_backends()

ENV_PREFIX = "CLUSTRIX_"
#: CLUSTRIX_* variables that are not config fields: the config file's name, what the job
#: script sets for the worker (user code on the node may build a ClusterConfig() there), and
#: the engine of the local backend (clustrix._engines.LOCAL_ENGINE_ENV).
_RESERVED_ENV = {
    "CLUSTRIX_CONFIG",
    CHECKPOINT_SIGNAL_ENV,
    "CLUSTRIX_MAX_RESULT_BYTES",
    "CLUSTRIX_LOCAL_ENGINE",
}
#: The file ``ClusterConfig.load(path)`` reads instead of ``$CLUSTRIX_CONFIG``, for the
#: duration of that call (a settings source cannot be given arguments per instance).
_CONFIG_FILE: ContextVar[Path | None] = ContextVar("clustrix_config_file", default=None)
#: False while ``with_overrides`` validates a copy: only its explicit values count.
_READ_SOURCES: ContextVar[bool] = ContextVar("clustrix_read_sources", default=True)

#: Settings only an SSH connection uses: given without cluster_host, a forgotten host.
_SSH_ONLY_FIELDS = (
    "username", "key_file", "password", "cluster_port", "known_hosts", "key_passphrase",
    "jump_host", "keyring_service",
)  # fmt: skip
_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
# Characters sbatch's #SBATCH parser or its %-patterns would mangle in a path.
_UNSAFE_PATH_CHARS = set("\"'\n\r%")

_M = TypeVar("_M", bound=BaseModel)


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True, frozen=False)

    def __init__(self, **data: Any) -> None:
        # Built directly in code, a bad value is a ConfigError with the same message (field,
        # value, what is allowed, a suggestion for a typo) as from a file or the environment.
        try:
            super().__init__(**data)
        except ValidationError as exc:
            raise ConfigError(format_validation_error(type(self), exc)) from None


class Resources(_Model):
    """What one job asks the scheduler for. Every field has a unit in its name."""

    cores: int = Field(1, ge=1, description="CPU cores per job (--cpus-per-task).")
    mem_gb: float | None = Field(None, gt=0, description="Memory per job in GB (--mem).")
    time_limit_min: int | None = Field(None, ge=1, description="Wall-time limit in minutes.")
    gpus: int | None = Field(None, ge=0, description="GPUs per job (--gpus).")
    partition: str | None = Field(None, description="Partition / queue name.")
    account: str | None = Field(None, description="Account to charge.")
    qos: str | None = Field(None, description="Quality of service.")
    extra_directives: list[str] = Field(
        default_factory=list,
        description="Raw scheduler directives, e.g. ['--constraint=skylake'].",
    )
    job_name: str | None = Field(
        None, description="Job name shown by the scheduler (default: 'clustrix-<function>')."
    )
    max_retries: int = Field(
        0,
        ge=0,
        description="Resubmit calls whose job died for infrastructure reasons (NODE_FAIL, "
        "PREEMPTED, BOOT_FAIL) up to this many times; a call that raised is never retried.",
    )
    checkpoint_before_s: int | None = Field(
        None,
        ge=1,
        le=65535,
        description="Signal the job this many seconds before its time limit (SLURM "
        "--signal, give time_limit_min too; slurmctld checks about every 30 s, so the signal "
        "comes up to ~30 s off): a call "
        "whose function has a checkpoint() method (clustrix.Checkpointable) checkpoints, and "
        "the job is requeued to resume it; calls not yet started are requeued as they are.",
    )

    @field_validator("partition", "account", "qos")
    @classmethod
    def _single_token(cls, value: str | None) -> str | None:
        if value is not None and (not value or any(c.isspace() or c in "\"'" for c in value)):
            raise ValueError("must be a single word without spaces or quotes")
        return value

    @field_validator("extra_directives")
    @classmethod
    def _one_line_each(cls, value: list[str]) -> list[str]:
        for item in value:
            if "\n" in item or "\r" in item:
                raise ValueError(f"directive {item!r} spans several lines; give one per item")
        return value


RESOURCE_FIELDS = tuple(Resources.model_fields)


class ClusterConfig(Resources, BaseSettings):
    """Everything an executor needs to know: where the cluster is and what jobs ask for.

    The resource fields (``cores``, ``mem_gb``, ``time_limit_min``, ``gpus``, ``partition``,
    ``account``, ``qos``, ``extra_directives``, ``job_name``) are the defaults of every job;
    ``ClusterExecutor.options(...)`` overrides them per call.

    Explicit arguments > ``CLUSTRIX_<FIELD>`` variables > the config file (``load(path)``,
    else ``$CLUSTRIX_CONFIG``) > defaults; see :meth:`settings_customise_sources`.
    """

    model_config = SettingsConfigDict(
        extra="forbid", validate_assignment=True, env_prefix=ENV_PREFIX, env_nested_delimiter="__"
    )

    cluster_type: str = Field("local", description=f"One of {', '.join(CLUSTER_TYPES)}.")
    cluster_host: str | None = Field(
        None, description="Host to reach over SSH; None runs the scheduler's commands locally."
    )
    cluster_port: int | None = Field(
        None, ge=1, le=65535, description="SSH port (default: ~/.ssh/config's, else 22)."
    )
    username: str | None = Field(None, description="SSH user (default: ~/.ssh/config or $USER).")
    key_file: Path | None = Field(None, description="SSH private key (default: agent, ~/.ssh).")
    password: SecretStr | None = Field(None, description="SSH password (prefer keys).")
    known_hosts: Path | None = Field(
        None, description="known_hosts file for host key checks (default: ~/.ssh/known_hosts)."
    )
    strict_host_key_checking: bool = Field(
        True, description="Verify the host key. Turning this off logs a warning."
    )
    key_passphrase: SecretStr | None = Field(
        None,
        description="Passphrase of key_file (or of ~/.ssh/config's IdentityFile); prefer "
        "CLUSTRIX_KEY_PASSPHRASE or keyring_service to a file. Default: asked once if needed.",
    )
    jump_host: str | None = Field(
        None,
        description="Reach cluster_host through this jump host: '[user@]host[:port]', "
        "several comma-separated, as ssh -J ('none': ignore ProxyJump). Default: "
        "~/.ssh/config's ProxyJump.",
    )
    keyring_service: str | None = Field(
        None,
        description="Read a password or key passphrase not given from the system keyring "
        "(the keyring package), under this service, user 'password' or 'key_passphrase'.",
    )
    connect_timeout_s: float = Field(15.0, gt=0, description="Timeout of one SSH connect.")
    command_timeout_s: float = Field(120.0, gt=0, description="Timeout of one remote command.")
    connection_persist_s: float = Field(
        0.0,
        ge=0,
        description="Keep the SSH connection this many seconds after its last executor "
        "closes, shared by every process of yours reaching the cluster the same way (as "
        "OpenSSH's ControlPersist): a new process then needs no login. 0: no sharing.",
    )

    remote_work_dir: str = Field(
        "~/.clustrix", description="Directory on the cluster for job files ('~' = home)."
    )
    python_executable: str | None = Field(
        None,
        description="Python on the cluster (default: this interpreter for local, 'python3').",
    )
    module_loads: list[str] = Field(
        default_factory=list, description="Environment modules loaded before each job."
    )
    environment_variables: dict[str, str] = Field(
        default_factory=dict, description="Variables exported in each job."
    )

    packaging: bool = Field(
        True,
        description="Ship the caller's local code and recreate its requirements on the "
        "cluster. Off: the node must already import everything the calls need.",
    )
    build_environment: bool | None = Field(
        None,
        description="Build a virtual environment with the pinned requirements (default: "
        "when the cluster is remote). False: use python_executable as it is (a conda env, "
        "a container wrapper).",
    )
    extra_requirements: list[str] = Field(
        default_factory=list, description="Requirements to install beyond those detected."
    )
    exclude_modules: list[str] = Field(
        default_factory=list,
        description="Top-level modules never shipped nor pinned (the cluster provides them).",
    )
    env_build_timeout_s: float = Field(
        1800.0, gt=0, description="Timeout of building a remote environment (pip install)."
    )
    max_workers: int | None = Field(
        None,
        description="At most this many jobs in flight (queued or running). Default: CPU "
        "count for local, no limit beyond the cluster's own otherwise.",
    )
    connection_grace_s: float = Field(
        600.0,
        gt=0,
        description="How long futures wait for a lost connection to come back before "
        "they fail (the jobs keep running on the cluster).",
    )
    submit_retry_s: float = Field(
        600.0,
        ge=0,
        description="How long a submission refused for now (rate limit, MaxSubmitJobs) "
        "is retried, with backoff, before its futures fail.",
    )
    max_result_mb: float | None = Field(
        None,
        gt=0,
        description="Largest result a call may send back (pickled); a bigger one fails "
        "with a SerializationError instead of filling the disk and the connection.",
    )
    state_dir: Path | None = Field(
        None,
        description="Where the local job registry lives, for recover() after a crash "
        "(default: $XDG_STATE_HOME/clustrix or ~/.local/state/clustrix).",
    )
    poll_interval_min_s: float = Field(0.05, gt=0, description="First status poll delay.")
    poll_interval_max_s: float = Field(5.0, gt=0, description="Longest status poll delay.")
    poll_rate_max_per_s: float = Field(
        1.0,
        gt=0,
        description="Scheduler status queries a second after 30 back to back, however often "
        "calls come (the scheduler is shared); the cycles between still bring results.",
    )
    cleanup: Literal["on_success", "always", "never"] = Field(
        "on_success",
        description="Delete a submission's job directory once all its results are in: "
        "only when every call succeeded (default), always, or never.",
    )
    slurm_use_sacct: bool | None = Field(
        None, description="Use sacct for final job states (default: when accounting is on)."
    )

    @field_validator("cluster_type")
    @classmethod
    def _known_cluster_type(cls, value: str) -> str:
        return check_cluster_type(value)  # the registry's message lists the choices

    @field_validator("cluster_host")
    @classmethod
    def _host_not_blank(cls, value: str | None) -> str | None:
        if value is not None and not value.strip():
            raise ValueError(
                "cluster_host is empty: give a host name, or leave it unset to run "
                "the scheduler's commands on this machine"
            )
        return value.strip() if value is not None else None

    @model_validator(mode="after")
    def _ssh_settings_need_a_host(self) -> ClusterConfig:
        if self.cluster_host is None:
            given = [name for name in _SSH_ONLY_FIELDS if getattr(self, name) is not None]
            if given:
                raise ValueError(
                    f"{', '.join(given)} set but no cluster_host: SSH settings need the host "
                    "to connect to; set cluster_host (or remove them to run locally)"
                )
        return self

    @field_validator("jump_host")
    @classmethod
    def _valid_jump_host(cls, value: str | None) -> str | None:
        if value is not None:
            parse_jump_hosts(value)  # a ValueError says what is wrong and the form to use
        return value

    @model_validator(mode="after")
    def _poll_bounds(self) -> ClusterConfig:
        if self.poll_interval_max_s < self.poll_interval_min_s:
            raise ValueError(
                f"poll_interval_max_s ({self.poll_interval_max_s}) must be at least "
                f"poll_interval_min_s ({self.poll_interval_min_s})"
            )
        return self

    @field_validator("max_workers")
    @classmethod
    def _positive_workers(cls, value: int | None) -> int | None:
        if value is not None and value < 1:  # CPython's executors say the same
            raise ValueError("max_workers must be greater than 0 (at least 1, or None)")
        return value

    @field_validator("remote_work_dir")
    @classmethod
    def _safe_work_dir(cls, value: str) -> str:
        bad = sorted(_UNSAFE_PATH_CHARS.intersection(value))
        if not value or bad:
            raise ValueError(
                f"remote_work_dir may not contain {bad!r}: scheduler directives cannot carry "
                "them; choose a directory without quotes, '%' or newlines"
            )
        return value

    @field_validator("environment_variables")
    @classmethod
    def _valid_env_names(cls, value: dict[str, str]) -> dict[str, str]:
        for name in value:
            if name.startswith("_clx_"):
                raise ValueError(f"{name!r}: names starting with '_clx_' are the job script's own")
            if not _ENV_NAME.match(name):
                raise ValueError(
                    f"{name!r} is not a valid environment variable name "
                    "(letters, digits and '_', not starting with a digit)"
                )
        return value

    # ----------------------------------------------------------------------------------
    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        """Highest priority first: explicit arguments, ``CLUSTRIX_*`` variables, the file;
        clustrix's own sources keep the documented forms (comma-separated lists, ``__`` keys,
        a ``[clustrix]`` table) and name an unknown variable or a bad file in a ConfigError."""
        return init_settings, _EnvironmentSource(settings_cls), _ConfigFileSource(settings_cls)

    def resources(self, **overrides: Any) -> Resources:
        """The default job resources, with ``overrides`` applied and validated."""
        data = {name: getattr(self, name) for name in RESOURCE_FIELDS}
        data.update(overrides)
        return build(Resources, data)

    @property
    def is_remote(self) -> bool:
        """True when the cluster is reached over SSH."""
        return self.cluster_host is not None

    def with_overrides(self, **overrides: Any) -> ClusterConfig:
        """A validated copy with ``overrides`` applied."""
        if not overrides:
            return self
        data = self.model_dump()
        data.update(overrides)
        token = _READ_SOURCES.set(False)  # the fields as they are: no source read again
        try:
            return build(ClusterConfig, data)
        finally:
            _READ_SOURCES.reset(token)

    @classmethod
    def from_file(cls, path: str | os.PathLike[str], **overrides: Any) -> ClusterConfig:
        """Read a YAML (``.yml``/``.yaml``) or TOML (``.toml``) file.

        ``CLUSTRIX_*`` environment variables override the file, ``overrides`` override both.
        """
        return cls.load(path, **overrides)

    @classmethod
    def load(cls, path: str | os.PathLike[str] | None = None, **overrides: Any) -> ClusterConfig:
        """Merge defaults < file (``path`` or ``$CLUSTRIX_CONFIG``) < environment < overrides.

        ``ClusterConfig.load(**overrides)`` is ``ClusterConfig(**overrides)``."""
        token = _CONFIG_FILE.set(Path(path) if path is not None else None)
        try:
            return cls(**overrides)
        finally:
            _CONFIG_FILE.reset(token)


class _WholeSource(PydanticBaseSettingsSource):
    def get_field_value(self, field: FieldInfo, field_name: str) -> tuple[Any, str, bool]:
        return None, field_name, False  # unused: __call__ reads the source whole


class _EnvironmentSource(_WholeSource):
    """The ``CLUSTRIX_<FIELD>`` variables (:func:`config_from_env`)."""

    def __call__(self) -> dict[str, Any]:
        return config_from_env(os.environ) if _READ_SOURCES.get() else {}


class _ConfigFileSource(_WholeSource):
    """The file ``ClusterConfig.load(path)`` names, else ``$CLUSTRIX_CONFIG``, if any."""

    def __call__(self) -> dict[str, Any]:
        path = _CONFIG_FILE.get() or os.environ.get("CLUSTRIX_CONFIG")
        return read_config_file(Path(path)) if path and _READ_SOURCES.get() else {}


def config_from_env(environ: Mapping[str, str]) -> dict[str, Any]:
    """Fields set by ``CLUSTRIX_<FIELD>`` variables; ``__`` sets a key of a mapping field.

    List and mapping fields take JSON (``CLUSTRIX_MODULE_LOADS='["gcc", "openmpi"]'``) or, for
    lists, comma-separated words.
    """
    fields = ClusterConfig.model_fields
    data: dict[str, Any] = {}
    for var, raw in sorted(environ.items()):
        if not var.startswith(ENV_PREFIX) or var in _RESERVED_ENV:
            continue
        if var.startswith("CLUSTRIX_TEST_"):
            continue  # the test suite's own settings (where the test cluster is)
        name, _, key = var[len(ENV_PREFIX) :].lower().partition("__")
        if name not in fields:
            hint = suggest(name, fields)
            raise ConfigError(
                f"environment variable {var} names no config field{hint}; "
                f"unset it or use CLUSTRIX_<FIELD> with a field of ClusterConfig"
            )
        if key:
            data.setdefault(name, {})[key.upper()] = raw
            continue
        annotation = str(fields[name].annotation)
        if annotation.startswith(("list", "dict")):
            try:
                data[name] = json.loads(raw)
            except json.JSONDecodeError:
                if annotation.startswith("dict"):
                    raise ConfigError(
                        f"environment variable {var} must be a JSON object, got {raw!r}"
                    ) from None
                data[name] = [item.strip() for item in raw.split(",") if item.strip()]
        else:
            data[name] = raw
    return data


def build(model: type[_M], data: Mapping[str, Any]) -> _M:
    """Validate ``data`` into ``model``, turning pydantic's error into a :class:`ConfigError`.

    The message names each bad field, the value given and what is allowed, and suggests the
    closest field name for a typo. Secret values are never echoed.
    """
    if issubclass(model, _Model):
        return model(**data)  # its __init__ turns a ValidationError into a ConfigError
    try:
        return model.model_validate(dict(data))
    except ValidationError as exc:
        raise ConfigError(format_validation_error(model, exc)) from None
