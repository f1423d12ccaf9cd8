"""SSH login without a server: jump host strings, the new config fields, where secrets come
from and what is asked again, the prompts, the refusal messages, and local paths in the
client's own convention (Windows ``C:\\Users\\...``) next to remote paths that stay POSIX."""

from __future__ import annotations

import asyncio
import io
import ntpath
import os
import sys
import time
import types
from pathlib import Path

import asyncssh
import pytest

from clustrix import ClusterConfig, ConfigError, TransportError
from clustrix._factory import make_transport
from clustrix._ssh_spec import Destination, parse_jump_hosts
from clustrix.transports import _ssh_auth, _ssh_prompt
from clustrix.transports._ssh_auth import Problem, Secrets, client_keys, refusal
from clustrix.transports._ssh_prompt import PromptUnavailable
from clustrix.transports.ssh import SSHTransport, no_prompt, notebook_prompt, terminal_prompt

SECRET = "s3cret-passphrase"


# ----------------------------------------------------------------------------- jump host strings
@pytest.mark.parametrize(
    ("text", "hops"),
    [
        ("gw.example.org", [Destination(None, "gw.example.org", None)]),
        ("me@gw:2222", [Destination("me", "gw", 2222)]),
        ("me@gw, you@inner:22", [Destination("me", "gw", None), Destination("you", "inner", 22)]),
        ("ssh://me@gw:2222", [Destination("me", "gw", 2222)]),
        ("[::1]:2224", [Destination(None, "::1", 2224)]),
        ("first.last@uni.example@gw", [Destination("first.last@uni.example", "gw", None)]),
        ("none", []),
    ],
)
def test_jump_hosts_are_read_as_openssh_writes_them(text: str, hops: list[Destination]) -> None:
    assert parse_jump_hosts(text) == hops
    if hops:
        assert parse_jump_hosts(",".join(map(str, hops))) == hops  # str() round-trips


@pytest.mark.parametrize(
    ("text", "says"),
    [
        ("gw,,inner", "empty jump host"),
        ("gw:22x", "port '22x' is not a number from 1 to 65535"),
        ("gw:0", "port '0' is not a number"),
        ("@gw", "empty user name"),
        ("me@", "no host name"),
        ("gw inner", "spaces, quotes or slashes"),
        ("[::1:22", "unclosed '['"),
    ],
)
def test_a_bad_jump_host_is_a_config_error_naming_the_form(text: str, says: str) -> None:
    with pytest.raises(ConfigError) as info:
        ClusterConfig(cluster_host="login.example", jump_host=text)
    message = str(info.value)
    assert "jump_host" in message and says in message
    assert "[user@]host[:port]" in message or "port" in says


# ------------------------------------------------------------------------------ config fields
def test_key_passphrase_is_secret_and_comes_from_the_environment(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("CLUSTRIX_CLUSTER_HOST", "login.example")
    monkeypatch.setenv("CLUSTRIX_KEY_PASSPHRASE", SECRET)
    monkeypatch.setenv("CLUSTRIX_JUMP_HOST", "me@gw.example")
    config = ClusterConfig()
    assert config.key_passphrase is not None
    assert config.key_passphrase.get_secret_value() == SECRET
    assert config.jump_host == "me@gw.example"
    for text in (repr(config), str(config), config.model_dump_json()):
        assert SECRET not in text
    with pytest.raises(ConfigError) as info:
        ClusterConfig(cores=0)  # an error about another field, the passphrase set
    assert SECRET not in str(info.value)


@pytest.mark.parametrize(
    "field", [{"key_passphrase": SECRET}, {"jump_host": "gw"}, {"keyring_service": "hpc"}]
)
def test_login_settings_without_cluster_host_are_a_config_error(field: dict[str, str]) -> None:
    with pytest.raises(ConfigError) as info:
        ClusterConfig(**field)
    message = str(info.value)
    assert "cluster_host" in message and next(iter(field)) in message
    assert SECRET not in message


# ------------------------------------------------------------------- local and remote paths
WINDOWS_KEY = r"C:\Users\me\.ssh\id_ed25519"
WINDOWS_KNOWN_HOSTS = r"C:\Users\me\.ssh\known_hosts"


def test_windows_key_and_known_hosts_paths_are_kept_as_given() -> None:
    config = ClusterConfig(
        cluster_host="login.example",
        key_file=WINDOWS_KEY,
        known_hosts=WINDOWS_KNOWN_HOSTS,
        remote_work_dir="~/scratch/clustrix",
    )
    transport = make_transport(config)
    assert isinstance(transport, SSHTransport)
    session = transport._session
    assert (session._key_file, session._known_hosts) == (WINDOWS_KEY, WINDOWS_KNOWN_HOSTS)
    assert config.remote_work_dir == "~/scratch/clustrix"
    # The missing local file is named as the user wrote it, not turned into a remote path.
    with pytest.raises(TransportError) as info:
        asyncio.run(transport.connect())
    assert f"key_file {WINDOWS_KEY} for login.example does not exist" in str(info.value)


def test_on_windows_local_paths_follow_windows_and_remote_paths_stay_posix(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    transport = SSHTransport(host="login.example", key_file="~\\.ssh\\id_ed25519")

    async def home() -> str:
        return "/home/me"

    monkeypatch.setattr(transport._session, "home", home)
    monkeypatch.setenv("USERPROFILE", r"C:\Users\me")
    with monkeypatch.context() as windows:
        windows.setattr(os, "path", ntpath)  # the client's os.path on Windows
        windows.setattr(os, "sep", "\\")
        local = SSHTransport(host="login.example", key_file="~\\.ssh\\id_ed25519")
        remote = [
            asyncio.run(transport.expand(path))
            for path in ("~/.clustrix/jobs", "work/dir", "/scratch/me/../me/x")
        ]
    assert local._session._key_file == WINDOWS_KEY
    assert remote == ["/home/me/.clustrix/jobs", "/home/me/work/dir", "/scratch/me/x"]


# ------------------------------------------------------------------------------------ prompts
def test_the_terminal_prompt_asks_only_on_a_terminal(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(PromptUnavailable, match="stdin is not a terminal"):
        terminal_prompt("Verification code: ")  # pytest's stdin is no terminal

    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    asked: list[str] = []
    monkeypatch.setattr(sys, "stdin", Terminal())
    monkeypatch.setattr(_ssh_prompt.getpass, "getpass", lambda p: asked.append(p) or "123456")
    assert terminal_prompt("Verification code: ") == "123456"
    assert asked == ["Verification code: "]


def test_the_notebook_prompt_outside_a_kernel_and_no_prompt_say_why() -> None:
    with pytest.raises(PromptUnavailable, match="not a Jupyter kernel"):
        notebook_prompt("Verification code: ")
    with pytest.raises(PromptUnavailable, match="auth_prompt=no_prompt"):
        no_prompt("Verification code: ")


def test_keyring_lookups(monkeypatch: pytest.MonkeyPatch) -> None:
    assert _ssh_prompt.keyring_secret(None, "password") is None  # not asked for: not read
    monkeypatch.setitem(sys.modules, "keyring", None)  # not installed
    with pytest.raises(PromptUnavailable, match="pip install keyring"):
        _ssh_prompt.keyring_secret("hpc", "password")

    def broken(service: str, name: str) -> str:
        raise RuntimeError("no backend")

    monkeypatch.setitem(sys.modules, "keyring", types.SimpleNamespace(get_password=broken))
    with pytest.raises(PromptUnavailable, match="cannot be read for service 'hpc'"):
        _ssh_prompt.keyring_secret("hpc", "password")


# --------------------------------------------------------------------- secrets and questions
def secrets(prompt: _ssh_prompt.AuthPrompt = no_prompt, **given: str | None) -> Secrets:
    options: dict[str, str | None] = dict(password=None, passphrase=None, keyring_service=None)
    options.update(given)
    made = Secrets(prompt, **options)  # type: ignore[arg-type]
    made.begin_login("")
    return made


def test_a_prompt_that_fails_or_returns_no_string_cannot_answer() -> None:
    def fails(question: str) -> str:
        raise KeyError("no token")

    with pytest.raises(PromptUnavailable, match="the auth prompt raised KeyError"):
        secrets(fails).ask("Verification code: ")
    with pytest.raises(PromptUnavailable, match="returned NoneType, not str"):
        secrets(lambda q: None).ask("Verification code: ")  # type: ignore[arg-type, return-value]


def test_time_spent_asking_is_counted() -> None:
    def slow(question: str) -> str:
        time.sleep(0.2)
        return "x"

    made = secrets(slow)
    made.ask("q")
    assert 0.2 <= made.asked_s() < 1.0


def test_an_answer_is_offered_again_only_while_it_is_recent(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    made = secrets()
    made.remember("me@h", {"Code: ": ("123456", time.monotonic())}, None)
    assert made.recent_answer("me@h", "Code: ") is not None
    assert made.recent_answer("other@h", "Code: ") is None
    monkeypatch.setattr(_ssh_auth, "ANSWER_REUSE_S", 0.0)
    assert made.recent_answer("me@h", "Code: ") is None


def test_passwords_come_from_the_config_the_keyring_or_the_last_login(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    assert asyncio.run(secrets(password=SECRET).stored_password("me@h")) == SECRET
    monkeypatch.setitem(
        sys.modules, "keyring", types.SimpleNamespace(get_password=lambda s, n: f"{s}/{n}")
    )
    assert asyncio.run(secrets(keyring_service="hpc").stored_password("me@h")) == "hpc/password"
    typed = secrets(lambda q: "typed")
    assert asyncio.run(typed.ask_password("me@h")) == "typed"
    typed.remember("me@h", {}, "typed")
    assert asyncio.run(typed.stored_password("me@h")) == "typed"
    nobody = secrets()
    assert asyncio.run(nobody.ask_password("me@h")) is None
    assert "asks for a password and clustrix cannot ask here" in nobody.problems[0].what


# --------------------------------------------------------------------------- keys to offer
def write_key(path: Path, passphrase: str | None = None, fmt: str = "openssh") -> Path:
    key = asyncssh.generate_private_key("ssh-rsa" if fmt == "pkcs8-pem" else "ssh-ed25519")
    # few KDF rounds: asyncssh's default of 128 costs seconds per decryption
    path.write_bytes(key.export_private_key(fmt, passphrase, rounds=2, ignore_few_rounds=True))
    path.chmod(0o600)
    return path


def test_unencrypted_default_keys_are_left_to_asyncssh(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HOME", str(tmp_path))
    (tmp_path / ".ssh").mkdir()
    write_key(tmp_path / ".ssh" / "id_ed25519")
    assert client_keys(None, (), secrets()) == {}


def test_an_encrypted_key_is_offered_and_decrypted_only_when_used(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HOME", str(tmp_path))
    (tmp_path / ".ssh").mkdir()
    locked = write_key(tmp_path / ".ssh" / "id_ed25519", SECRET)
    asked: list[str] = []
    made = secrets(lambda q: asked.append(q) or SECRET)
    options = client_keys(None, (), made)
    assert options["client_keys"] == [str(locked)] and asked == []  # not yet
    assert options["passphrase"](str(locked)) == SECRET  # asyncssh calls it when signing
    assert options["passphrase"](str(locked)) == SECRET  # ... and once only
    assert asked == [f"Passphrase for key {locked}: "]
    assert made.key_origin[str(locked)] == "the default key"


def test_an_old_pem_key_without_public_half_is_decrypted_at_once(tmp_path: Path) -> None:
    locked = write_key(tmp_path / "id_rsa", SECRET, "pkcs8-pem")
    options = client_keys(str(locked), (), secrets(passphrase=SECRET))
    (key,) = options["client_keys"]
    assert isinstance(key, asyncssh.SSHKey)


# -------------------------------------------------------------------------- refusal messages
def test_a_refusal_names_the_user_and_each_problem_with_its_fix() -> None:
    plain = refusal("Permission denied", user="me", where="h:22", key_file=None, problems=[])
    assert plain == (
        "authentication as me@h:22 refused (Permission denied): "
        "check username, key_file, password or the SSH agent"
    )
    problems = [Problem("the server asks 'Code:'", "run it where clustrix can ask")]
    message = refusal("denied", user="me", where="h", key_file="/k", problems=problems)
    assert message.endswith(": the server asks 'Code:': run it where clustrix can ask")
