"""The spare channel's reader (``transports/_ssh_spare.py``) under the local shells: it
runs exactly the command line it was sent, and the command gets exactly the rest of stdin."""

from __future__ import annotations

import shlex
import shutil
import subprocess

import pytest

from clustrix.transports._ssh_spare import SPARE_READER

WEIRD = "a b 'single' \"double\" ; $(echo pwned) `echo pwned` \\ *\nline two\tü€ 🐍"
SHELLS = [s for s in ("sh", "dash", "bash", "busybox") if shutil.which(s)]


def spare(shell: str, marker: str, stdin: bytes) -> subprocess.CompletedProcess[bytes]:
    argv = [shell, "sh"] if shell == "busybox" else [shell]
    return subprocess.run([*argv, "-c", SPARE_READER, marker], input=stdin, capture_output=True)


@pytest.mark.parametrize("shell", SHELLS)
def test_the_reader_runs_its_command_with_the_rest_of_stdin(shell: str) -> None:
    marker = "clustrix-end-0123456789abcdef"
    line = shlex.join(["sh", "-c", 'cat; printf "|%s|" "$0"; exit 3', WEIRD])
    data = f"{WEIRD}\n{marker}\n\\ tail without newline".encode()
    done = spare(shell, marker, f"{line}\n{marker}\n".encode() + data)
    assert done.returncode == 3
    assert done.stdout == data + f"|{WEIRD}|".encode()


@pytest.mark.parametrize("shell", SHELLS)
def test_a_reader_whose_stdin_ends_without_a_command_runs_nothing(shell: str) -> None:
    done = spare(shell, "clustrix-end-x", b"touch /nonexistent/never\n")
    assert done.returncode == 255 and done.stderr == b""
