"""SSH login as clusters require it, through real OpenSSH servers (scripts/testcluster.sh):
keys with a passphrase (given, from the environment, from the keyring, or asked once), keys
held by ssh-agent, ~/.ssh/config (Host alias, User, Port, IdentityFile, ProxyJump), a jump
host (a second sshd as bastion, by ProxyJump and by ``jump_host``), and a key plus a one-time
code (keyboard-interactive, PAM google-authenticator; the code computed here from the secret).

Every test has a HOME of its own (no ~/.ssh of the runner's) and no SSH agent unless it
starts one.
"""

from __future__ import annotations

import logging
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
import types
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
from clustertools import LoginServers, require_login_servers

from clustrix import ClusterConfig, ClusterExecutor, TransportError
from clustrix._factory import make_transport
from clustrix.transports import _ssh_auth
from clustrix.transports.ssh import SSHTransport, no_prompt

pytestmark = pytest.mark.cluster

PASSPHRASE = "correct horse battery staple"


@pytest.fixture(scope="module")
def servers() -> LoginServers:
    return require_login_servers()


@pytest.fixture(autouse=True)
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A HOME of the test's own with an empty ~/.ssh, and no SSH agent."""
    home = tmp_path / "home"
    (home / ".ssh").mkdir(parents=True, mode=0o700)
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.delenv("SSH_AUTH_SOCK", raising=False)
    for name in os.environ:
        if name.startswith("CLUSTRIX_") and not name.startswith("CLUSTRIX_TEST_"):
            monkeypatch.delenv(name)
    return home


@pytest.fixture
def locked_key(tmp_path: Path, servers: LoginServers) -> Path:
    """The test user's authorized key, encrypted with PASSPHRASE (OpenSSH format)."""
    path = tmp_path / "id_locked"
    shutil.copy(servers.cluster.key_file, path)
    path.chmod(0o600)
    subprocess.run(
        # -a 2: few KDF rounds, so that each decryption takes milliseconds, not a tenth of a second
        ["ssh-keygen", "-q", "-p", "-a", "2", "-P", "", "-N", PASSPHRASE, "-f", str(path)],
        check=True,
        stdout=subprocess.DEVNULL,
    )
    return path


class Prompt:
    """An auth prompt that records the questions and answers from a script."""

    def __init__(self, *answers: str | Callable[[], str]) -> None:
        self.questions: list[str] = []
        self._answers = list(answers)

    def __call__(self, question: str) -> str:
        self.questions.append(question)
        answer = self._answers.pop(0) if len(self._answers) > 1 else self._answers[0]
        return answer() if callable(answer) else answer


def never(question: str) -> str:
    raise AssertionError(f"asked {question!r} although nothing needs asking")


@pytest_asyncio.fixture
async def make(servers: LoginServers) -> AsyncIterator[Callable[..., SSHTransport]]:
    """``make(**kwargs)``: an SSHTransport to the cluster's sshd, closed after the test."""
    made: list[SSHTransport] = []
    cluster = servers.cluster

    def build(**kwargs: Any) -> SSHTransport:
        options: dict[str, Any] = dict(
            host=cluster.host,
            port=cluster.port,
            username=cluster.user,
            key_file=cluster.key_file,
            known_hosts=servers.known_hosts,
            auth_prompt=never,
        )
        options.update(kwargs)
        transport = SSHTransport(**options)
        made.append(transport)
        return transport

    yield build
    for transport in made:
        await transport.close()


async def whoami(transport: SSHTransport) -> str:
    return (await transport.run(["id", "-un"])).stdout.strip()


async def reconnect(transport: SSHTransport) -> None:
    """Drop the connection as a network failure would; the next command dials again."""
    session = transport._session
    old = session._conn
    session.drop(old)
    await transport.connect()
    assert session._conn is not old


async def client_port_seen_by_sshd(transport: SSHTransport) -> int:
    """The client port in ``$SSH_CONNECTION``: the far end of the TCP connection sshd got."""
    return int((await transport.run(["sh", "-c", "echo $SSH_CONNECTION"])).stdout.split()[1])


def own_tcp_connections() -> set[tuple[int, int]]:
    """(local port, remote port) of every TCP socket this process holds (Linux /proc)."""
    inodes = set()
    for fd in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(target[8:-1])
    found = set()
    for line in Path("/proc/self/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        if fields[9] in inodes:
            found.add((int(fields[1].split(":")[1], 16), int(fields[2].split(":")[1], 16)))
    return found


async def assert_through_bastion(transport: SSHTransport, servers: LoginServers) -> None:
    """The sshd was reached from the bastion's side: the client port it saw is not a socket
    of ours, and ours goes to the bastion."""
    port = await client_port_seen_by_sshd(transport)
    ours = own_tcp_connections()
    assert port not in {local for local, _ in ours}, "connected directly, not via the jump host"
    assert any(remote == servers.bastion_port for _, remote in ours)


# ---------------------------------------------------------------------- keys with a passphrase
@pytest.mark.asyncio
async def test_key_passphrase_given_unlocks_key_file(
    make: Callable[..., SSHTransport], locked_key: Path
) -> None:
    transport = make(key_file=locked_key, key_passphrase=PASSPHRASE)
    assert await whoami(transport) == "clustrix"


@pytest.mark.asyncio
async def test_key_passphrase_from_the_environment(
    servers: LoginServers, locked_key: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CLUSTRIX_KEY_PASSPHRASE", PASSPHRASE)
    cluster = servers.cluster
    config = ClusterConfig(
        cluster_host=cluster.host,
        cluster_port=cluster.port,
        username=cluster.user,
        key_file=locked_key,
        known_hosts=servers.known_hosts,
    )
    assert PASSPHRASE not in repr(config) and PASSPHRASE not in config.model_dump_json()
    transport = make_transport(config, auth_prompt=never)
    try:
        assert await whoami(transport) == "clustrix"  # type: ignore[arg-type]
    finally:
        await transport.close()


@pytest.mark.asyncio
async def test_key_passphrase_from_the_keyring(
    make: Callable[..., SSHTransport], locked_key: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    asked: list[tuple[str, str]] = []

    def get_password(service: str, name: str) -> str | None:
        asked.append((service, name))
        return PASSPHRASE if name == "key_passphrase" else None

    monkeypatch.setitem(sys.modules, "keyring", types.SimpleNamespace(get_password=get_password))
    transport = make(key_file=locked_key, keyring_service="clustrix-test")
    assert await whoami(transport) == "clustrix"
    assert asked == [("clustrix-test", "key_passphrase")]


@pytest.mark.asyncio
async def test_passphrase_is_asked_once_not_again_on_reconnection(
    make: Callable[..., SSHTransport], locked_key: Path
) -> None:
    prompt = Prompt(PASSPHRASE)
    transport = make(key_file=locked_key, auth_prompt=prompt)
    assert await whoami(transport) == "clustrix"
    await reconnect(transport)
    assert await whoami(transport) == "clustrix"
    assert prompt.questions == [f"Passphrase for key {locked_key}: "]


@pytest.mark.asyncio
async def test_a_mistyped_passphrase_is_asked_again(
    make: Callable[..., SSHTransport], locked_key: Path
) -> None:
    prompt = Prompt("typo", PASSPHRASE)
    transport = make(key_file=locked_key, auth_prompt=prompt)
    assert await whoami(transport) == "clustrix"
    assert len(prompt.questions) == 2 and "Wrong passphrase" in prompt.questions[1]


@pytest.mark.asyncio
async def test_wrong_passphrases_are_refused_naming_the_key(
    make: Callable[..., SSHTransport], locked_key: Path
) -> None:
    with pytest.raises(TransportError) as info:
        await make(key_file=locked_key, auth_prompt=Prompt("wrong")).connect()
    assert f"the 3 passphrases typed for {locked_key} were wrong" in str(info.value)
    with pytest.raises(TransportError) as info:
        await make(key_file=locked_key, key_passphrase="wrong", auth_prompt=no_prompt).connect()
    message = str(info.value)
    assert f"the passphrase from key_passphrase does not decrypt {locked_key}: check it" in message


@pytest.mark.asyncio
async def test_a_locked_key_nobody_can_unlock_names_every_fix(
    make: Callable[..., SSHTransport], locked_key: Path
) -> None:
    with pytest.raises(TransportError) as info:
        await make(key_file=locked_key, auth_prompt=no_prompt).connect()
    message = str(info.value)
    assert message.startswith("authentication as clustrix@127.0.0.1:"), message
    assert f"key_file {locked_key} is passphrase-protected" in message
    assert "auth_prompt=no_prompt" in message  # why it could not ask
    for fix in ("key_passphrase", "CLUSTRIX_KEY_PASSPHRASE", "keyring_service"):
        assert fix in message
    assert f"ssh-add {locked_key}" in message and "SSH_AUTH_SOCK is not set" in message


# ----------------------------------------------------------------------------------- ssh-agent
@pytest.fixture
def agent(tmp_path: Path, locked_key: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """An ssh-agent of the test's own holding ``locked_key`` (ssh-add given the passphrase
    by an SSH_ASKPASS script), as SSH_AUTH_SOCK."""
    socket_path = tmp_path / "agent.sock"
    started = subprocess.run(
        ["ssh-agent", "-a", str(socket_path)], capture_output=True, text=True, check=True
    )
    pid = int(started.stdout.split("SSH_AGENT_PID=")[1].split(";")[0])
    try:
        askpass = tmp_path / "askpass"
        askpass.write_text(f"#!/bin/sh\necho '{PASSPHRASE}'\n")
        askpass.chmod(0o700)
        env = dict(os.environ, SSH_AUTH_SOCK=str(socket_path), SSH_ASKPASS=str(askpass))
        env.update(SSH_ASKPASS_REQUIRE="force", DISPLAY=":0")
        subprocess.run(
            ["ssh-add", "-q", str(locked_key)],
            env=env,
            stdin=subprocess.DEVNULL,
            check=True,
            timeout=30,
        )
        monkeypatch.setenv("SSH_AUTH_SOCK", str(socket_path))
        yield socket_path
    finally:
        os.kill(pid, signal.SIGTERM)


@pytest.mark.asyncio
async def test_a_key_held_by_ssh_agent_needs_no_key_file_nor_passphrase(
    make: Callable[..., SSHTransport], agent: Path
) -> None:
    assert await whoami(make(key_file=None)) == "clustrix"


@pytest.mark.asyncio
async def test_with_an_agent_holding_it_a_locked_key_file_is_not_asked_for(
    make: Callable[..., SSHTransport], agent: Path, locked_key: Path
) -> None:
    # The agent's copy is offered first and accepted: no passphrase question at all.
    assert await whoami(make(key_file=locked_key)) == "clustrix"


# ------------------------------------------------------------------- ~/.ssh/config, jump hosts
def write_ssh_config(home: Path, text: str) -> None:
    (home / ".ssh" / "config").write_text(textwrap.dedent(text))


@pytest.mark.asyncio
async def test_ssh_config_alias_user_port_identity_file_and_proxy_jump(
    make: Callable[..., SSHTransport], servers: LoginServers, home: Path, locked_key: Path
) -> None:
    # Everything from ~/.ssh/config: the alias, its HostName, User, Port, an encrypted
    # IdentityFile (asked for once, used for both hosts), and a ProxyJump to another alias.
    cluster = servers.cluster
    write_ssh_config(
        home,
        f"""\
        Host test-bastion
            HostName {cluster.host}
            Port {servers.bastion_port}
            User {cluster.user}
            IdentityFile {locked_key}
            UserKnownHostsFile {servers.known_hosts}
        Host test-login
            HostName {cluster.host}
            Port {cluster.port}
            User {cluster.user}
            IdentityFile {locked_key}
            UserKnownHostsFile {servers.known_hosts}
            ProxyJump test-bastion
        """,
    )
    prompt = Prompt(PASSPHRASE)
    transport = make(
        host="test-login", port=None, username=None, key_file=None, known_hosts=None,
        auth_prompt=prompt,
    )  # fmt: skip
    assert await whoami(transport) == "clustrix"
    await assert_through_bastion(transport, servers)
    assert prompt.questions == [f"Passphrase for key {locked_key}: "]
    assert transport.location == f"{cluster.user}@test-login"


@pytest.mark.asyncio
async def test_jump_host_field_goes_through_the_bastion(
    make: Callable[..., SSHTransport], servers: LoginServers
) -> None:
    cluster = servers.cluster
    transport = make(jump_host=f"{cluster.user}@{cluster.host}:{servers.bastion_port}")
    assert await whoami(transport) == "clustrix"
    await assert_through_bastion(transport, servers)
    await reconnect(transport)  # the route is dialled again, jump host first
    await assert_through_bastion(transport, servers)


@pytest.mark.asyncio
async def test_jump_host_field_wins_over_proxy_jump_none_ignores_it(
    make: Callable[..., SSHTransport], servers: LoginServers, home: Path
) -> None:
    cluster = servers.cluster
    write_ssh_config(
        home,
        f"""\
        Host test-login
            HostName {cluster.host}
            ProxyJump nobody@no-such-host.invalid
        """,
    )
    direct = make(host="test-login", jump_host="none")
    assert await whoami(direct) == "clustrix"
    assert await client_port_seen_by_sshd(direct) in {port for port, _ in own_tcp_connections()}
    jumped = make(host="test-login", jump_host=f"{cluster.host}:{servers.bastion_port}")
    await assert_through_bastion(jumped, servers)  # the bastion's user: username's


@pytest.mark.asyncio
async def test_a_jump_host_that_will_not_forward_there_is_named(
    make: Callable[..., SSHTransport], servers: LoginServers
) -> None:
    cluster = servers.cluster
    with pytest.raises(TransportError) as info:  # the bastion's PermitOpen excludes 2223
        await make(port=2223, jump_host=f"{cluster.host}:{servers.bastion_port}").connect()
    message = str(info.value)
    assert f"jump host {cluster.host}:{servers.bastion_port} refused to forward to" in message
    assert "AllowTcpForwarding" in message and "cluster_port" in message


@pytest.mark.asyncio
async def test_a_jump_host_refusing_the_login_is_named(
    make: Callable[..., SSHTransport], servers: LoginServers, tmp_path: Path
) -> None:
    cluster = servers.cluster
    with pytest.raises(TransportError) as info:
        await make(jump_host=f"nobody@{cluster.host}:{servers.bastion_port}").connect()
    assert str(info.value).startswith(
        f"jump host: authentication as nobody@{cluster.host}:{servers.bastion_port} refused"
    )


# -------------------------------------------------------------------- a key and a one-time code
@pytest.fixture
def code(servers: LoginServers) -> Prompt:
    return Prompt(servers.totp)


@pytest.mark.asyncio
async def test_two_factor_login_asks_once_and_reconnects_without_asking(
    make: Callable[..., SSHTransport], servers: LoginServers, code: Prompt
) -> None:
    transport = make(port=servers.two_factor_port, auth_prompt=code)
    assert await whoami(transport) == "clustrix"
    assert code.questions == [f"[clustrix@127.0.0.1:{servers.two_factor_port}] Verification code: "]
    await reconnect(transport)  # within ANSWER_REUSE_S: the code is offered again, accepted
    assert await whoami(transport) == "clustrix"
    assert len(code.questions) == 1


@pytest.mark.asyncio
async def test_two_factor_reconnection_asks_again_once_the_code_is_old(
    make: Callable[..., SSHTransport],
    servers: LoginServers,
    code: Prompt,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    transport = make(port=servers.two_factor_port, auth_prompt=code)
    assert await whoami(transport) == "clustrix"
    monkeypatch.setattr(_ssh_auth, "ANSWER_REUSE_S", 0.0)
    await reconnect(transport)
    assert len(code.questions) == 2


@pytest.mark.asyncio
async def test_a_refused_code_is_asked_again(
    make: Callable[..., SSHTransport], servers: LoginServers
) -> None:
    prompt = Prompt("000000", servers.totp)
    if servers.totp() == "000000":  # pragma: no cover - one chance in a million
        pytest.skip("the real code is 000000 right now")
    assert await whoami(make(port=servers.two_factor_port, auth_prompt=prompt)) == "clustrix"
    assert len(prompt.questions) == 2


@pytest.mark.asyncio
async def test_wrong_codes_are_refused_saying_so(
    make: Callable[..., SSHTransport], servers: LoginServers
) -> None:
    with pytest.raises(TransportError) as info:
        await make(port=servers.two_factor_port, auth_prompt=Prompt("000000")).connect()
    assert "did not accept the answer to 'Verification code:'" in str(info.value)


@pytest.mark.asyncio
async def test_the_time_a_person_takes_does_not_count_against_connect_timeout(
    make: Callable[..., SSHTransport], servers: LoginServers
) -> None:
    def slow() -> str:
        time.sleep(1.5)
        return servers.totp()

    transport = make(port=servers.two_factor_port, auth_prompt=Prompt(slow), connect_timeout_s=1)
    assert await whoami(transport) == "clustrix"


@pytest.mark.asyncio
async def test_jump_host_and_two_factor_target(
    make: Callable[..., SSHTransport], servers: LoginServers, code: Prompt
) -> None:
    transport = make(
        port=servers.two_factor_port,
        jump_host=f"127.0.0.1:{servers.bastion_port}",
        auth_prompt=code,
    )
    assert await whoami(transport) == "clustrix"
    await assert_through_bastion(transport, servers)
    assert len(code.questions) == 1


def test_a_non_interactive_run_that_needs_a_code_says_so(servers: LoginServers) -> None:
    # pytest's stdin is no terminal: the default prompt cannot ask, as under cron or CI.
    cluster = servers.cluster
    config = ClusterConfig(
        cluster_type="slurm",
        cluster_host=cluster.host,
        cluster_port=servers.two_factor_port,
        username=cluster.user,
        key_file=cluster.key_file,
        known_hosts=servers.known_hosts,
    )
    with pytest.raises(TransportError) as info:
        ClusterExecutor(config)
    message = str(info.value)
    assert f"authentication as clustrix@127.0.0.1:{servers.two_factor_port} refused" in message
    assert "the server asks 'Verification code:' (keyboard-interactive" in message
    assert "cannot ask here (stdin is not a terminal)" in message
    assert "auth_prompt=" in message


@pytest.mark.asyncio
async def test_nothing_secret_is_logged(
    make: Callable[..., SSHTransport],
    servers: LoginServers,
    locked_key: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    answer = servers.totp()
    transport = make(
        port=servers.two_factor_port,
        key_file=locked_key,
        auth_prompt=Prompt(PASSPHRASE, answer),
    )
    assert await whoami(transport) == "clustrix"
    assert "Auth for user clustrix succeeded" in caplog.text  # asyncssh's DEBUG log was seen
    assert PASSPHRASE not in caplog.text and answer not in caplog.text


# ----------------------------------------------------------------------- the notebook's prompt
def test_the_notebook_prompt_asks_in_the_jupyter_frontend(servers: LoginServers) -> None:
    """A real Jupyter kernel makes the transport with the default prompt; the question comes
    to the frontend as a password input request from the executor's thread."""
    pytest.importorskip("ipykernel")
    from jupyter_client.manager import start_new_kernel

    cluster = servers.cluster
    manager, client = start_new_kernel(kernel_name="python3", startup_timeout=60)
    try:
        code = textwrap.dedent(
            f"""\
            import asyncio, threading
            from clustrix.transports.ssh import SSHTransport

            async def main():
                t = SSHTransport(host={cluster.host!r}, port={servers.two_factor_port},
                                 username={cluster.user!r}, key_file={str(cluster.key_file)!r},
                                 known_hosts={str(servers.known_hosts)!r})
                try:
                    return (await t.run(["id", "-un"])).stdout.strip()
                finally:
                    await t.close()

            box = []  # the kernel runs its own loop: dial on another thread, as the executor
            worker = threading.Thread(target=lambda: box.append(asyncio.run(main())))
            worker.start(); worker.join()
            print("logged in as", box[0])
            """
        )
        msg_id = client.execute(code, allow_stdin=True)
        request = client.get_stdin_msg(timeout=60)
        assert request["content"]["password"] is True
        assert "Verification code" in request["content"]["prompt"]
        client.input(servers.totp())
        output = []
        while True:
            msg = client.get_iopub_msg(timeout=60)
            if msg["parent_header"].get("msg_id") != msg_id:
                continue
            if msg["msg_type"] == "stream":
                output.append(msg["content"]["text"])
            if msg["msg_type"] == "error":
                pytest.fail("\n".join(msg["content"]["traceback"]))
            if msg["msg_type"] == "status" and msg["content"]["execution_state"] == "idle":
                break
        assert "logged in as clustrix" in "".join(output)
    finally:
        client.stop_channels()
        manager.shutdown_kernel(now=True)


def test_the_executor_asks_through_its_auth_prompt(servers: LoginServers, code: Prompt) -> None:
    cluster = servers.cluster
    config = ClusterConfig(
        cluster_type="slurm",
        cluster_host=cluster.host,
        cluster_port=servers.two_factor_port,
        username=cluster.user,
        key_file=cluster.key_file,
        known_hosts=servers.known_hosts,
        remote_work_dir="~/.clustrix-tests",
    )
    with ClusterExecutor(config, auth_prompt=code) as executor:
        assert executor.exists("~/.clustrix-tests")
    assert len(code.questions) == 1
