"""Asking the person at the keyboard for a login secret, and the system keyring.

An *auth prompt* is any callable that takes the whole question as one string (it names the
host and what is asked: ``"[me@login.hpc.example.org:22] Verification code: "``) and returns
the answer; ``getpass.getpass`` is one. Three are here:

- :func:`terminal_prompt`: ``getpass`` on the terminal, when standard input is one;
- :func:`notebook_prompt`: a password box in the Jupyter frontend, from any thread of the
  kernel (the question comes while a cell runs, e.g. the one that makes the executor);
- :func:`no_prompt`: never asks, for batch runs that must fail at once instead.

:func:`default_prompt` picks the notebook inside a Jupyter kernel, the terminal otherwise.
A prompt that cannot ask raises :class:`PromptUnavailable` saying why; the login then fails
with an error that says what to give instead. Answers are never logged or written anywhere.

Knows nothing of asyncssh, connections or configuration (no asyncssh import here).
"""

from __future__ import annotations

import getpass
import logging
import sys
import threading
from collections.abc import Callable
from typing import Any

__all__ = [
    "AuthPrompt",
    "PromptUnavailable",
    "default_prompt",
    "keyring_secret",
    "no_prompt",
    "notebook_prompt",
    "terminal_prompt",
]

logger = logging.getLogger("clustrix.ssh")

#: A question (the whole prompt text) in, the answer out.
AuthPrompt = Callable[[str], str]

# Two executors logging in at once must not interleave their questions on one terminal.
_ASKING = threading.Lock()


class PromptUnavailable(Exception):
    """The prompt cannot ask anyone; the message says why (``"stdin is not a terminal"``)."""


def terminal_prompt(prompt: str) -> str:
    """Ask on the terminal without echo (``getpass``); only when stdin is a terminal, so
    that a script run by cron, nohup, a batch job or CI fails at once instead of waiting."""
    stdin = sys.stdin
    if stdin is None or not stdin.isatty():
        raise PromptUnavailable("stdin is not a terminal")
    with _ASKING:
        try:
            return getpass.getpass(prompt)
        except EOFError:
            raise PromptUnavailable("the terminal gave no answer (end of input)") from None


def _kernel() -> Any | None:
    """The running Jupyter (ipykernel) kernel, if this process is one."""
    if "ipykernel" not in sys.modules:
        return None
    try:
        from ipykernel.kernelbase import Kernel
    except ImportError:  # pragma: no cover
        return None
    return Kernel.instance() if Kernel.initialized() else None


def notebook_prompt(prompt: str) -> str:
    """Ask through the Jupyter frontend (a password field under the running cell).

    Works from the executor's own threads, where ``getpass`` would not: ipykernel replaces
    ``getpass`` only in the thread of the running cell, but its kernel's ``getpass`` answers
    any thread. A notebook run without a person (``jupyter nbconvert --execute``,
    papermill) does not take input: that raises :class:`PromptUnavailable`.
    """
    kernel = _kernel()
    if kernel is None:
        raise PromptUnavailable("this process is not a Jupyter kernel")
    with _ASKING:
        try:
            return str(kernel.getpass(prompt))
        except EOFError:
            raise PromptUnavailable("the notebook gave no answer") from None
        except Exception as exc:  # StdinNotImplementedError: the frontend takes no input
            if type(exc).__name__ == "StdinNotImplementedError":
                raise PromptUnavailable(
                    "the notebook frontend takes no input (a notebook run without a person)"
                ) from None
            raise


def default_prompt(prompt: str) -> str:
    """:func:`notebook_prompt` inside a Jupyter kernel, :func:`terminal_prompt` otherwise."""
    if _kernel() is not None:
        return notebook_prompt(prompt)
    return terminal_prompt(prompt)


def no_prompt(prompt: str) -> str:
    """Never ask: a login that needs an answer fails at once, saying what was asked."""
    raise PromptUnavailable("asking is turned off (auth_prompt=no_prompt)")


def keyring_secret(service: str | None, name: str) -> str | None:
    """``keyring.get_password(service, name)``, or None without a service or an entry.

    ``service`` None: the keyring is not consulted (``keyring_service`` unset). A keyring
    that cannot be read (the package missing, no backend) raises :class:`PromptUnavailable`
    naming the fix, since the user asked for it.
    """
    if service is None:
        return None
    try:
        import keyring  # type: ignore[import-not-found, unused-ignore]
    except ImportError:
        raise PromptUnavailable(
            f"keyring_service is {service!r} but the keyring package is not installed: "
            "pip install keyring, or unset keyring_service"
        ) from None
    try:
        secret = keyring.get_password(service, name)
    except Exception as exc:  # keyring.errors.KeyringError and what backends raise
        raise PromptUnavailable(
            f"the system keyring cannot be read for service {service!r} "
            f"({type(exc).__name__}: {exc}): fix the keyring backend or unset keyring_service"
        ) from None
    if secret is None:
        logger.debug("no %s for service %r in the keyring", name, service)
    return None if secret is None else str(secret)
