"""ClusterConfig and Resources: defaults, validation messages, files, environment, priority."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from pydantic import SecretStr

from clustrix import ClusterConfig, ConfigError, Resources
from clustrix.config import CLUSTER_TYPES, config_from_env

SECRET = "hunter2-Zq9!s3cr3t"


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """No CLUSTRIX_* variable of the machine running the tests leaks in."""
    for name in list(os.environ):
        if name.startswith("CLUSTRIX_"):
            monkeypatch.delenv(name)


def config_error(**values: object) -> str:
    with pytest.raises(ConfigError) as info:
        ClusterConfig.load(**values)
    return str(info.value)


# --------------------------------------------------------------------------- defaults
def test_defaults() -> None:
    config = ClusterConfig()
    assert config.cluster_type == "local"
    assert config.cluster_host is None
    assert config.is_remote is False
    assert config.cluster_port is None  # ~/.ssh/config or 22
    assert config.password is None
    assert config.strict_host_key_checking is True
    assert config.remote_work_dir == "~/.clustrix"
    assert config.python_executable is None
    assert config.module_loads == []
    assert config.environment_variables == {}
    assert config.max_workers is None
    assert config.cleanup == "on_success"
    assert config.slurm_use_sacct is None
    assert (config.poll_interval_min_s, config.poll_interval_max_s) == (0.05, 5.0)
    assert (config.connect_timeout_s, config.command_timeout_s) == (15.0, 120.0)
    assert config.resources() == Resources()
    assert Resources().cores == 1
    assert Resources().mem_gb is Resources().time_limit_min is Resources().gpus is None
    assert Resources().extra_directives == []


def test_load_without_sources_equals_the_defaults() -> None:
    assert ClusterConfig.load() == ClusterConfig()


def test_default_lists_are_not_shared() -> None:
    a, b = ClusterConfig(), ClusterConfig()
    a.module_loads.append("gcc")
    a.environment_variables["X"] = "1"
    assert b.module_loads == [] and b.environment_variables == {}


def test_cluster_type_is_normalised_and_remote_follows_host() -> None:
    config = ClusterConfig.load(cluster_type=" SLURM ", cluster_host="login.example.org")
    assert config.cluster_type == "slurm"
    assert config.is_remote is True


# --------------------------------------------------------------------------- messages
def test_unknown_field_names_it_and_suggests_the_right_one() -> None:
    message = config_error(cluster_typ="slurm")
    assert "cluster_typ" in message
    assert "unknown field" in message
    assert "did you mean 'cluster_type'?" in message


def test_config_error_is_a_value_error() -> None:
    with pytest.raises(ValueError):
        ClusterConfig.load(cores=0)


@pytest.mark.parametrize(
    ("field", "value", "allowed"),
    [
        ("cluster_port", 70000, "less than or equal to 65535"),
        ("cluster_port", 0, "greater than or equal to 1"),
        ("cores", 0, "greater than or equal to 1"),
        ("mem_gb", -1, "greater than 0"),
        ("time_limit_min", 0, "greater than or equal to 1"),
        ("gpus", -1, "greater than or equal to 0"),
        ("max_workers", 0, "greater than 0"),
        ("max_workers", -2, "at least 1"),
        ("poll_interval_min_s", 0, "greater than 0"),
        ("cleanup", "sometimes", "'on_success', 'always' or 'never'"),
        ("cores", "many", "valid integer"),
    ],
)
def test_bad_value_names_field_value_and_what_is_allowed(
    field: str, value: object, allowed: str
) -> None:
    message = config_error(**{field: value})
    line = next(x for x in message.splitlines() if x.strip().startswith(f"{field}:"))
    assert f"(got {value!r})" in line
    assert allowed in line


def test_several_problems_each_on_a_line() -> None:
    message = config_error(cores=0, mem_gb=-1, corse=3)
    assert message.splitlines()[0] == "invalid ClusterConfig:"
    assert len(message.splitlines()) == 4
    assert "did you mean 'cores'?" in message


def test_unknown_cluster_type_suggests_one() -> None:
    message = config_error(cluster_type="slrum")
    assert "unknown cluster_type 'slrum'" in message
    assert "did you mean 'slurm'?" in message
    for name in CLUSTER_TYPES:
        assert name in message


def test_planned_cluster_type_is_refused_clearly() -> None:
    message = config_error(cluster_type="pbs")
    assert "'pbs' is planned but not available in this release" in message
    assert "local, slurm" in message


@pytest.mark.parametrize(
    ("field", "value", "words"),
    [
        ("partition", "two words", "single word"),
        ("account", "it's", "single word"),
        ("qos", "", "single word"),
        ("extra_directives", ["--a\n--b"], "spans several lines"),
        ("environment_variables", {"1BAD": "x"}, "not a valid environment variable name"),
        ("environment_variables", {"A-B": "x"}, "not a valid environment variable name"),
        ("remote_work_dir", "/scratch/it's", "may not contain"),
        ("remote_work_dir", "/scratch/100%", "may not contain"),
        ("remote_work_dir", "/scratch/a\nb", "may not contain"),
        ("remote_work_dir", "", "may not contain"),
    ],
)
def test_values_the_job_script_cannot_carry_are_refused(
    field: str, value: object, words: str
) -> None:
    message = config_error(**{field: value})
    assert field in message
    assert words in message


def test_direct_construction_raises_config_error_with_suggestion() -> None:
    with pytest.raises(ConfigError, match="did you mean 'cluster_type'"):
        ClusterConfig(cluster_typ="slurm")  # type: ignore[call-arg]


def test_direct_construction_never_echoes_a_bad_password() -> None:
    with pytest.raises(ValueError) as info:
        ClusterConfig(password=[SECRET])  # type: ignore[arg-type]
    assert SECRET not in str(info.value)


# --------------------------------------------------------------------------- password
def test_password_never_shown() -> None:
    config = ClusterConfig.load(password=SECRET, cluster_host="h")
    assert isinstance(config.password, SecretStr)
    assert config.password.get_secret_value() == SECRET
    for text in (repr(config), str(config), config.model_dump_json(), repr(config.model_dump())):
        assert SECRET not in text


def test_bad_password_value_is_masked_in_the_error() -> None:
    message = config_error(password=[SECRET], cores=0)
    assert SECRET not in message
    assert "password" in message
    assert "(got ***)" in message
    assert "(got 0)" in message  # other values are still shown


def test_ssh_settings_without_a_host_are_refused() -> None:
    message = config_error(password=SECRET, key_file="/k")
    assert "cluster_host" in message and "key_file" in message
    assert SECRET not in message  # the whole input is never echoed for such errors


def test_password_survives_with_overrides() -> None:
    config = ClusterConfig.load(password=SECRET, cluster_host="h").with_overrides(cores=2)
    assert config.password is not None
    assert config.password.get_secret_value() == SECRET


# --------------------------------------------------------------------------- files
def write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


YAML_TEXT = """\
cluster_type: slurm
cluster_host: login.example.org
cores: 4
module_loads: [gcc/12, python/3.11]
environment_variables:
  OMP_NUM_THREADS: "4"
"""

TOML_TEXT = """\
cluster_type = "slurm"
cluster_host = "login.example.org"
cores = 4
module_loads = ["gcc/12", "python/3.11"]

[environment_variables]
OMP_NUM_THREADS = "4"
"""


def assert_file_values(config: ClusterConfig) -> None:
    assert config.cluster_type == "slurm"
    assert config.cluster_host == "login.example.org"
    assert config.cores == 4
    assert config.module_loads == ["gcc/12", "python/3.11"]
    assert config.environment_variables == {"OMP_NUM_THREADS": "4"}
    assert config.cluster_port is None  # untouched fields keep their defaults


@pytest.mark.parametrize("suffix", [".yaml", ".yml", ".YAML"])
def test_from_file_yaml(tmp_path: Path, suffix: str) -> None:
    assert_file_values(ClusterConfig.from_file(write(tmp_path / f"c{suffix}", YAML_TEXT)))


def test_from_file_toml(tmp_path: Path) -> None:
    assert_file_values(ClusterConfig.from_file(write(tmp_path / "c.toml", TOML_TEXT)))


def test_from_file_under_a_clustrix_key(tmp_path: Path) -> None:
    nested_yaml = "clustrix:\n" + "".join(f"  {line}\n" for line in YAML_TEXT.splitlines())
    assert_file_values(ClusterConfig.from_file(write(tmp_path / "c.yaml", nested_yaml)))
    nested_toml = "[clustrix]\n" + TOML_TEXT.replace(
        "[environment_variables]", "[clustrix.environment_variables]"
    )
    assert_file_values(ClusterConfig.from_file(write(tmp_path / "c.toml", nested_toml)))


def test_from_file_path_as_string_and_overrides(tmp_path: Path) -> None:
    path = write(tmp_path / "c.yaml", YAML_TEXT)
    config = ClusterConfig.from_file(str(path), cores=8)
    assert config.cores == 8
    assert config.cluster_host == "login.example.org"


def test_empty_yaml_file_gives_defaults(tmp_path: Path) -> None:
    assert ClusterConfig.from_file(write(tmp_path / "c.yaml", "")) == ClusterConfig()


def test_unknown_extension(tmp_path: Path) -> None:
    path = write(tmp_path / "c.json", json.dumps({"cores": 2}))
    with pytest.raises(ConfigError, match=r"unknown format '\.json'; use \.yaml, \.yml or \.toml"):
        ClusterConfig.from_file(path)


@pytest.mark.parametrize(
    ("name", "text", "kind"),
    [
        ("c.yaml", "cores: [1, 2\n", "yaml"),
        ("c.yaml", "cores: 1\n  bad indent: 2\n", "yaml"),
        ("c.toml", "cores = \n", "toml"),
        ("c.toml", 'cluster_type = "slurm\n', "toml"),
    ],
)
def test_syntax_error_in_file(tmp_path: Path, name: str, text: str, kind: str) -> None:
    path = write(tmp_path / name, text)
    with pytest.raises(ConfigError) as info:
        ClusterConfig.from_file(path)
    assert f"is not valid {kind}" in str(info.value)
    assert str(path) in str(info.value)


def test_file_must_hold_a_mapping(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="must hold a mapping"):
        ClusterConfig.from_file(write(tmp_path / "c.yaml", "- cores\n- 2\n"))


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read config file"):
        ClusterConfig.from_file(tmp_path / "nope.yaml")


def test_unknown_field_in_file_is_named(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        ClusterConfig.from_file(write(tmp_path / "c.yaml", "cluster_hots: h\n"))
    assert "cluster_hots" in str(info.value)
    assert "did you mean 'cluster_host'?" in str(info.value)


# --------------------------------------------------------------------------- environment
def test_priority_defaults_file_env_explicit(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = write(tmp_path / "c.yaml", "cores: 2\npartition: filepart\nmem_gb: 4\nqos: fileqos\n")
    monkeypatch.setenv("CLUSTRIX_CORES", "3")
    monkeypatch.setenv("CLUSTRIX_PARTITION", "envpart")
    monkeypatch.setenv("CLUSTRIX_CLUSTER_PORT", "2222")
    monkeypatch.setenv("CLUSTRIX_CLUSTER_HOST", "login.example.org")
    config = ClusterConfig.load(path, partition="argpart")
    assert config.partition == "argpart"  # explicit > env
    assert config.cores == 3  # env > file
    assert config.mem_gb == 4.0  # file > default
    assert config.qos == "fileqos"
    assert config.cluster_port == 2222  # env > default, converted
    assert config.time_limit_min is None  # default


def test_clustrix_config_variable_names_the_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = write(tmp_path / "c.toml", TOML_TEXT)
    monkeypatch.setenv("CLUSTRIX_CONFIG", str(path))
    assert_file_values(ClusterConfig.load())


def test_bare_construction_reads_the_environment_as_load_does(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("CLUSTRIX_CORES", "7")
    monkeypatch.setenv("CLUSTRIX_MODULE_LOADS", "gcc/12,python/3.11")
    monkeypatch.setenv("CLUSTRIX_ENVIRONMENT_VARIABLES__OMP_NUM_THREADS", "4")
    config = ClusterConfig()
    assert config.cores == 7
    assert config.module_loads == ["gcc/12", "python/3.11"]
    assert config.environment_variables == {"OMP_NUM_THREADS": "4"}
    assert config == ClusterConfig.load()
    assert ClusterConfig(cores=2).cores == 2  # explicit > environment


def test_bare_construction_priority_defaults_file_env_explicit(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = write(tmp_path / "c.yaml", "cores: 2\npartition: filepart\nmem_gb: 4\nqos: fileqos\n")
    monkeypatch.setenv("CLUSTRIX_CONFIG", str(path))
    monkeypatch.setenv("CLUSTRIX_CORES", "3")
    monkeypatch.setenv("CLUSTRIX_PARTITION", "envpart")
    config = ClusterConfig(partition="argpart")
    assert config.partition == "argpart"  # explicit > env
    assert config.cores == 3  # env > file
    assert (config.mem_gb, config.qos) == (4.0, "fileqos")  # file > default
    assert config.time_limit_min is None  # default


def test_bare_construction_reports_an_unknown_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CLUSTRIX_CORSE", "3")
    with pytest.raises(ConfigError, match="CLUSTRIX_CORSE names no config field"):
        ClusterConfig()


def test_bad_env_value_is_a_config_error_naming_the_field(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CLUSTRIX_MAX_WORKERS", "0")
    with pytest.raises(ConfigError) as info:
        ClusterConfig()
    assert "max_workers must be greater than 0" in str(info.value)
    assert "(got '0')" in str(info.value)


def test_variables_the_job_script_sets_are_not_config_fields(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """User code on the node may build a ClusterConfig() where the job exported these."""
    monkeypatch.setenv("CLUSTRIX_MAX_RESULT_BYTES", "1000")
    monkeypatch.setenv("CLUSTRIX_CHECKPOINT_SIGNAL", "USR2")
    assert ClusterConfig() == ClusterConfig.model_construct()


def test_explicit_mapping_keys_win_and_the_others_merge(monkeypatch: pytest.MonkeyPatch) -> None:
    """As pydantic-settings merges nested values: key by key, the higher source winning."""
    monkeypatch.setenv("CLUSTRIX_ENVIRONMENT_VARIABLES__FOO", "env")
    monkeypatch.setenv("CLUSTRIX_ENVIRONMENT_VARIABLES__BAR", "env")
    config = ClusterConfig(environment_variables={"FOO": "arg"})
    assert config.environment_variables == {"FOO": "arg", "BAR": "env"}


def test_a_copy_reads_no_source_again(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CLUSTRIX_CORES", "3")
    config = ClusterConfig()
    monkeypatch.setenv("CLUSTRIX_PARTITION", "later")
    monkeypatch.setenv("CLUSTRIX_CONFIG", str(tmp_path / "gone.yaml"))  # would not even read
    copy = config.with_overrides(mem_gb=2)
    assert (copy.cores, copy.partition, copy.mem_gb) == (3, None, 2.0)


def test_load_path_wins_over_the_config_variable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CLUSTRIX_CONFIG", str(write(tmp_path / "env.yaml", "cores: 5\n")))
    assert ClusterConfig.load(write(tmp_path / "arg.yaml", "cores: 6\n")).cores == 6
    assert ClusterConfig().cores == 5  # the path was for that call only


@pytest.mark.parametrize("bad", [0, -1])
def test_max_workers_below_one_is_a_value_error_as_in_cpython(bad: int) -> None:
    with pytest.raises(ValueError, match="max_workers must be greater than 0"):
        ClusterConfig(max_workers=bad)
    with pytest.raises(ValueError, match="max_workers must be greater than 0"):
        ClusterConfig().with_overrides(max_workers=bad)


@pytest.mark.parametrize(
    "raw", ['["gcc/12", "python/3.11"]', "gcc/12,python/3.11", " gcc/12 , python/3.11 ,"]
)
def test_env_list_as_json_or_comma_separated(monkeypatch: pytest.MonkeyPatch, raw: str) -> None:
    monkeypatch.setenv("CLUSTRIX_MODULE_LOADS", raw)
    assert ClusterConfig.load().module_loads == ["gcc/12", "python/3.11"]


def test_env_mapping_key_with_double_underscore(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CLUSTRIX_ENVIRONMENT_VARIABLES__FOO", "bar")
    monkeypatch.setenv("CLUSTRIX_ENVIRONMENT_VARIABLES__OMP_NUM_THREADS", "4")
    config = ClusterConfig.load()
    assert config.environment_variables == {"FOO": "bar", "OMP_NUM_THREADS": "4"}


def test_env_mapping_as_json(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CLUSTRIX_ENVIRONMENT_VARIABLES", '{"A": "1", "B": "x y"}')
    assert ClusterConfig.load().environment_variables == {"A": "1", "B": "x y"}
    monkeypatch.setenv("CLUSTRIX_ENVIRONMENT_VARIABLES", "A=1")
    with pytest.raises(ConfigError, match="must be a JSON object"):
        ClusterConfig.load()


def test_env_mapping_key_adds_to_the_file_mapping(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = write(tmp_path / "c.yaml", "environment_variables:\n  A: '1'\n")
    monkeypatch.setenv("CLUSTRIX_ENVIRONMENT_VARIABLES__FOO", "bar")
    assert ClusterConfig.load(path).environment_variables == {"A": "1", "FOO": "bar"}


def test_unknown_env_variable_is_an_error_with_suggestion(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("CLUSTRIX_CLUSTR_HOST", "login")
    with pytest.raises(ConfigError) as info:
        ClusterConfig.load()
    assert "CLUSTRIX_CLUSTR_HOST" in str(info.value)
    assert "did you mean 'cluster_host'?" in str(info.value)


def test_bad_env_value_names_field_and_value(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CLUSTRIX_CLUSTER_PORT", "twenty-two")
    message = config_error()
    assert "cluster_port" in message
    assert "'twenty-two'" in message


def test_env_booleans_and_password(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CLUSTRIX_STRICT_HOST_KEY_CHECKING", "false")
    monkeypatch.setenv("CLUSTRIX_PASSWORD", SECRET)
    monkeypatch.setenv("CLUSTRIX_CLUSTER_HOST", "h")
    config = ClusterConfig.load()
    assert config.strict_host_key_checking is False
    assert config.password is not None
    assert config.password.get_secret_value() == SECRET
    assert SECRET not in repr(config)


def test_config_from_env_ignores_other_variables() -> None:
    environ = {"HOME": "/h", "CLUSTRIX_CONFIG": "/c.yaml", "XCLUSTRIX_CORES": "2"}
    assert config_from_env(environ) == {}


# --------------------------------------------------------------------------- resources
def test_resources_from_defaults_with_overrides() -> None:
    config = ClusterConfig.load(cores=2, partition="p", extra_directives=["--exclusive"])
    resources = config.resources(mem_gb=8, time_limit_min=30)
    assert isinstance(resources, Resources)
    assert (resources.cores, resources.mem_gb, resources.time_limit_min) == (2, 8.0, 30)
    assert resources.partition == "p"
    assert resources.extra_directives == ["--exclusive"]
    assert config.mem_gb is None  # the config itself is unchanged


@pytest.mark.parametrize(
    ("overrides", "words"),
    [
        ({"cores": 0}, "cores"),
        ({"mem_gb": 0}, "greater than 0"),
        ({"corse": 4}, "did you mean 'cores'?"),
        ({"cluster_host": "h"}, "unknown field"),  # connection settings are not per call
        ({"partition": "a b"}, "single word"),
    ],
)
def test_resources_overrides_are_validated(overrides: dict[str, object], words: str) -> None:
    with pytest.raises(ConfigError) as info:
        ClusterConfig().resources(**overrides)
    assert words in str(info.value)
    assert "invalid Resources" in str(info.value)


def test_with_overrides_is_a_validated_copy() -> None:
    config = ClusterConfig.load(cores=2)
    assert config.with_overrides() is config
    changed = config.with_overrides(cores=4, cluster_type="slurm")
    assert (changed.cores, changed.cluster_type) == (4, "slurm")
    assert config.cores == 2 and config.cluster_type == "local"
    with pytest.raises(ConfigError, match="max_workers"):
        config.with_overrides(max_workers=0)
    with pytest.raises(ConfigError, match="did you mean 'cluster_host'"):
        config.with_overrides(cluster_hots="h")


def test_configs_differing_only_in_a_secret_do_not_share_a_decorator_executor() -> None:
    from clustrix.decorator import _config_key

    base = {"cluster_type": "slurm", "cluster_host": "h"}
    one = ClusterConfig(**base, password=SecretStr("first-password"))
    other = ClusterConfig(**base, password=SecretStr("second-password"))
    assert one.model_dump_json() == other.model_dump_json()  # the dump stars secrets out
    assert _config_key(one) != _config_key(other)
    assert _config_key(one) == _config_key(ClusterConfig(**base, password="first-password"))
    assert "first-password" not in _config_key(one)
