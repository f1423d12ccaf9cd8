"""Logging in to one host: keys, passphrases, passwords and keyboard-interactive answers.

:class:`Secrets` keeps, for one transport and in memory only, what the user gave
(``password``, ``key_passphrase``, the keyring) and what they typed. It asks through the auth
prompt (:mod:`._ssh_prompt`) at most once per question, three times for a mistyped one, and
clocks the asking, so that a person's typing does not count against ``connect_timeout_s``.
:class:`LoginClient` is the asyncssh client of one login to one host: it answers the
server's questions from :class:`Secrets` and notes what it could not answer, which
:func:`refusal` turns into the error. :func:`client_keys` chooses the keys to offer.

What a reconnection asks again: a passphrase or password, never (asked once per transport).
A keyboard-interactive answer (a one-time code) is offered again to a reconnection within
:data:`ANSWER_REUSE_S` of being given, as a code is usually still valid then (a server that
refuses it asks again, and so do we). After that the server decides: one with a grace period
(pam_google_authenticator's ``grace_period``) lets the reconnection in without a question;
otherwise the question comes again and is asked again, and a run that cannot ask fails,
saying what was asked.

Knows nothing of commands, files or jobs; the dial and jump hosts are :mod:`._ssh_session`'s.
"""

from __future__ import annotations

import asyncio
import logging
import os
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import asyncssh

from ._ssh_prompt import AuthPrompt, PromptUnavailable, keyring_secret

__all__ = ["ANSWER_REUSE_S", "LoginClient", "Problem", "Secrets", "client_keys", "refusal"]

logger = logging.getLogger("clustrix.ssh")

#: A keyboard-interactive answer is offered again to a reconnection this soon after it was given.
ANSWER_REUSE_S = 30.0
#: Questions per login for one thing (a passphrase, a password, a code), as OpenSSH's
#: NumberOfPasswordPrompts.
MAX_TRIES = 3
#: The keys asyncssh (and OpenSSH) try when ~/.ssh/config names none, in its order.
DEFAULT_KEYS = (
    "id_ed25519_sk", "id_ecdsa_sk", "id_ed448", "id_ed25519", "id_ecdsa", "id_rsa", "id_dsa",
)  # fmt: skip


@dataclass(frozen=True)
class Problem:
    """Something a login could not answer or that was refused, and what to do about it."""

    what: str
    fix: str


class _NoPassphrase(asyncssh.KeyImportError):
    """No usable passphrase: asyncssh then tries the next key (it skips on a ValueError)."""


class Secrets:
    """What one transport knows and has been told, for every login it makes (in memory)."""

    def __init__(
        self,
        prompt: AuthPrompt,
        *,
        password: str | None,
        passphrase: str | None,
        keyring_service: str | None,
    ) -> None:
        self._prompt = prompt
        self._password = password
        self._passphrase = passphrase
        self._keyring_service = keyring_service
        self._passphrases: dict[str, str] = {}  # key file -> its passphrase
        #: key file -> where it came from, for messages ("key_file", "the default key", ...)
        self.key_origin: dict[str, str] = {}
        self._typed_passwords: dict[str, str] = {}  # user@host:port -> password that worked
        self._answers: dict[tuple[str, str], tuple[str, float]] = {}  # (host, prompt) -> ...
        self._lock = threading.Lock()  # asyncssh asks for passphrases from worker threads
        self._asking_since: float | None = None
        self._asked_s = 0.0
        self._agent_path = ""
        self._cannot_ask: str | None = None
        #: What the login under way could not answer (reset by :meth:`begin_login`).
        self.problems: list[Problem] = []

    def begin_login(self, agent_path: str) -> None:
        """A login starts: forget the last one's problems; ``agent_path`` for messages."""
        self.problems = []
        self._agent_path = agent_path
        self._cannot_ask = None

    def note(self, problem: Problem) -> None:
        if problem not in self.problems:
            self.problems.append(problem)

    def asked_s(self) -> float:
        """Seconds spent waiting for a person so far, the question being asked included."""
        since = self._asking_since
        return self._asked_s + (time.monotonic() - since if since is not None else 0.0)

    def ask(self, question: str) -> str:
        """The prompt's answer to ``question`` (blocking: call it from a worker thread).
        Once the prompt could not ask, it is not tried again in the same login."""
        if self._cannot_ask is not None:
            raise PromptUnavailable(self._cannot_ask)
        self._asking_since = time.monotonic()
        try:
            answer = self._prompt(question)
        except PromptUnavailable as exc:
            self._cannot_ask = str(exc)
            raise
        except Exception as exc:  # a user's prompt that failed: it cannot answer
            self._cannot_ask = f"the auth prompt raised {type(exc).__name__}: {exc}"
            raise PromptUnavailable(self._cannot_ask) from None
        finally:
            self._asked_s += time.monotonic() - self._asking_since
            self._asking_since = None
        if not isinstance(answer, str):
            raise PromptUnavailable(f"the auth prompt returned {type(answer).__name__}, not str")
        return answer

    def _keyring(self, name: str) -> str | None:
        try:
            return keyring_secret(self._keyring_service, name)
        except PromptUnavailable as exc:
            self.note(Problem(str(exc), "fix the keyring or unset keyring_service"))
            return None

    # -- key passphrases ---------------------------------------------------------------------

    def passphrase(self, path: str) -> str:
        """The passphrase of the key file ``path``. asyncssh calls this from a worker thread
        just before the key is first used, i.e. once the server has accepted its public key
        (an agent's key or an unencrypted one that works is never held up by a question)."""
        with self._lock:  # one question at a time; the answer serves every later login
            known = self._passphrases.get(path)
            if known is not None:
                return known
            data = _read(path)
            for source, value in self._given_passphrases():
                if _decrypts(data, value):
                    self._passphrases[path] = value
                    return value
                self.note(
                    Problem(f"the passphrase from {source} does not decrypt {path}", "check it")
                )
            question = f"Passphrase for key {path}: "
            for _ in range(MAX_TRIES):
                try:
                    typed = self.ask(question)
                except PromptUnavailable as exc:
                    origin = self.key_origin.get(path, "the key")
                    self.note(_locked(f"{origin} {path}", path, str(exc), self._agent_path))
                    raise _NoPassphrase(str(exc)) from None
                if _decrypts(data, typed):
                    self._passphrases[path] = typed
                    return typed
                question = f"Wrong passphrase, try again. Passphrase for key {path}: "
            self.note(Problem(f"the {MAX_TRIES} passphrases typed for {path} were wrong", "retry"))
            raise _NoPassphrase(f"wrong passphrase for {path}")

    def _given_passphrases(self) -> Iterator[tuple[str, str]]:
        """(where from, passphrase) given without asking; the keyring read only if needed."""
        if self._passphrase is not None:
            yield "key_passphrase", self._passphrase
        if self._keyring_service is not None:
            found = self._keyring("key_passphrase")
            if found is not None:
                yield f"the keyring ({self._keyring_service})", found

    # -- passwords and keyboard-interactive ----------------------------------------------------

    @property
    def password_given(self) -> bool:
        """True when ``password`` was given: a refused one is not replaced by asking."""
        return self._password is not None

    async def stored_password(self, label: str) -> str | None:
        """The password for ``label`` without asking: ``password``, else the keyring's, else
        the one typed at the last successful login."""
        if self._password is not None:
            return self._password
        if self._keyring_service is not None:
            found = await asyncio.to_thread(self._keyring, "password")
            if found is not None:
                return found
        return self._typed_passwords.get(label)

    async def ask_password(self, label: str) -> str | None:
        """The password for ``label``, asked; None when nobody can be asked (noted)."""
        self._typed_passwords.pop(label, None)  # asked again: the one kept was refused
        try:
            return await asyncio.to_thread(self.ask, f"Password for {label}: ")
        except PromptUnavailable as exc:
            self.note(
                Problem(
                    f"the server asks for a password and clustrix cannot ask here ({exc})",
                    "set password (or CLUSTRIX_PASSWORD, or keyring_service), or use a key",
                )
            )
            return None

    def recent_answer(self, label: str, prompt: str) -> tuple[str, float] | None:
        """The answer given to ``prompt`` of ``label`` in the last :data:`ANSWER_REUSE_S`."""
        found = self._answers.get((label, prompt))
        if found is not None and time.monotonic() - found[1] < ANSWER_REUSE_S:
            return found
        return None

    def remember(
        self, label: str, answers: dict[str, tuple[str, float]], password: str | None
    ) -> None:
        """A login to ``label`` succeeded with these answers: keep them for reconnections."""
        for prompt, given in answers.items():
            self._answers[(label, prompt)] = given
        if password is not None and self._password is None:
            self._typed_passwords[label] = password

    def forget(self, label: str, prompt: str) -> None:
        self._answers.pop((label, prompt), None)


class LoginClient(asyncssh.SSHClient):
    """The asyncssh client of one login to ``label`` (``user@host:port``)."""

    def __init__(self, secrets: Secrets, label: str) -> None:
        self._secrets, self._label = secrets, label
        self._password_requests = 0
        self._password_questions = 0
        self._password: str | None = None
        self._rounds = 0
        self._times: dict[str, int] = {}  # prompt -> times answered in this login
        self._given: dict[str, tuple[str, float]] = {}  # prompt -> (answer, when given)

    def auth_banner_received(self, msg: str, lang: str) -> None:
        logger.info("%s: %s", self._label, msg.strip())

    def auth_completed(self) -> None:
        self._secrets.remember(self._label, self._given, self._password)

    async def password_auth_requested(self) -> str | None:
        self._password = await self._next_password()
        return self._password

    async def _next_password(self) -> str | None:
        """The stored password first, then (unless ``password`` was given) asked, up to
        MAX_TRIES times; None ends password authentication for this login."""
        secrets = self._secrets
        self._password_requests += 1
        if self._password_requests == 1:
            stored = await secrets.stored_password(self._label)
            if stored is not None:
                return stored
        if secrets.password_given or self._password_questions >= MAX_TRIES:
            return None
        self._password_questions += 1
        return await secrets.ask_password(self._label)

    def kbdint_auth_requested(self) -> str | None:
        # asyncssh starts keyboard-interactive again after every refusal while the server
        # offers it: stop after MAX_TRIES rounds of questions, as OpenSSH does.
        return "" if self._rounds < MAX_TRIES else None

    async def kbdint_challenge_received(
        self, name: str, instructions: str, lang: str, prompts: Sequence[tuple[str, bool]]
    ) -> list[str] | None:
        if not prompts:  # a message only (PAM's "info"), nothing to answer
            if instructions.strip():
                logger.info("%s: %s", self._label, instructions.strip())
            return []
        self._rounds += 1
        context = "".join(
            f"[{self._label}] {text.strip()}\n" for text in (name, instructions) if text.strip()
        )
        answers = []
        for prompt, _echo in prompts:
            answer = await self._answer(prompt, context)
            if answer is None:
                return None  # asyncssh gives up keyboard-interactive for this login
            answers.append(answer)
        return answers

    async def _answer(self, prompt: str, context: str) -> str | None:
        secrets, label = self._secrets, self._label
        times = self._times.get(prompt, 0)
        self._times[prompt] = times + 1
        if "password" in prompt.lower():  # PAM's "Password: " is the account password
            self._password = await self._next_password()
            return self._password
        if times:  # asked again in this login: the answer before was refused
            secrets.forget(label, prompt)
            refused = Problem(
                f"the server did not accept the answer to {prompt.strip()!r}",
                "check it (a one-time code: the clock of the device that makes it)",
            )
            secrets.note(refused)
        recent = secrets.recent_answer(label, prompt) if not times else None
        if recent is not None:
            self._given[prompt] = recent
            return recent[0]
        if times >= MAX_TRIES:
            return None
        try:
            answer = await asyncio.to_thread(secrets.ask, f"{context}[{label}] {prompt}")
        except PromptUnavailable as exc:
            secrets.note(
                Problem(
                    f"the server asks {prompt.strip()!r} (keyboard-interactive, e.g. a "
                    f"one-time code) and clustrix cannot ask here ({exc})",
                    "run it where clustrix can ask (a terminal, a notebook) or give "
                    "ClusterExecutor an auth_prompt= that returns the answer",
                )
            )
            return None
        self._given[prompt] = (answer, time.monotonic())
        return answer


def client_keys(
    key_file: str | None, identity_files: Sequence[str], secrets: Secrets
) -> dict[str, Any]:
    """asyncssh.connect's ``client_keys``/``passphrase`` for ``key_file`` (else the
    IdentityFile of ~/.ssh/config, else the default keys); {} leaves asyncssh's own choice,
    which skips passphrase-protected keys. An encrypted key whose public half is known
    (``.pub`` beside it, or the OpenSSH format) is decrypted only once the server accepts it;
    one without (old PEM format) is decrypted now, which may ask for its passphrase."""
    if key_file is not None:
        origin, paths = "key_file", [key_file]
    else:
        home_ssh = os.path.join(os.path.expanduser("~"), ".ssh")
        origin = "the IdentityFile in ~/.ssh/config" if identity_files else "the default key"
        named = list(identity_files) or [os.path.join(home_ssh, name) for name in DEFAULT_KEYS]
        paths = [os.path.expanduser(path) for path in named]
    states = {path: _key_state(path) for path in paths}
    if key_file is None:
        paths = [path for path in paths if states[path] != "unusable"]
        if "encrypted" not in (states[path] for path in paths):
            return {}
    secrets.key_origin.update(dict.fromkeys(paths, origin))
    keys: list[str | asyncssh.SSHKey] = []
    for path in paths:
        if states[path] != "encrypted" or _public_key(path):
            keys.append(path)
            continue
        try:
            keys.append(asyncssh.import_private_key(_read(path), secrets.passphrase(path)))
        except (asyncssh.KeyImportError, OSError) as exc:
            logger.info("skipping key %s: %s", path, exc)
    if not keys:
        return {"client_keys": None}  # nothing to offer: no public key authentication
    return {"client_keys": keys, "passphrase": secrets.passphrase}


def refusal(
    reason: str,
    *,
    user: str,
    where: str,
    key_file: str | None,
    problems: Sequence[Problem],
) -> str:
    """The message of a refused login: the user really tried, then what could not be answered
    (with its fix), else what to check."""
    message = f"authentication as {user}@{where} refused ({reason})"
    if not problems:
        given = f"key_file ({key_file})" if key_file is not None else "key_file"
        return f"{message}: check username, {given}, password or the SSH agent"
    return f"{message}: {'; '.join(f'{p.what}: {p.fix}' for p in problems)}"


def _locked(key: str, path: str, why: str, agent_path: str) -> Problem:
    agent = (
        f"the SSH agent at {agent_path} does not hold it"
        if agent_path
        else "no SSH agent runs: SSH_AUTH_SOCK is not set"
    )
    return Problem(
        f"{key} is passphrase-protected, no passphrase was given and clustrix cannot ask "
        f"for it here ({why})",
        "set key_passphrase (or CLUSTRIX_KEY_PASSPHRASE, or keyring_service), load it into an "
        f"SSH agent (ssh-add {path}; {agent}), or run where clustrix can ask (a terminal, a "
        "notebook)",
    )


def _read(path: str) -> bytes:
    with open(path, "rb") as file:
        return file.read()


def _decrypts(data: bytes, passphrase: str) -> bool:
    try:
        asyncssh.import_private_key(data, passphrase)
    except (asyncssh.KeyImportError, ValueError):
        return False
    return True


def _key_state(path: str) -> str:
    """``plain``, ``encrypted`` (needs a passphrase) or ``unusable`` (missing, not a key
    asyncssh reads here)."""
    try:
        asyncssh.read_private_key(path)
    except asyncssh.KeyImportError as exc:
        # "Passphrase must be specified to import encrypted private keys"
        return "encrypted" if "assphrase" in str(exc) else "unusable"
    except (OSError, ValueError):
        return "unusable"
    return "plain"


def _public_key(path: str) -> bool:
    """True if the public half of the key file is readable without its passphrase."""
    for candidate in (f"{path}.pub", path):
        try:
            asyncssh.read_public_key(candidate)
        except (asyncssh.KeyImportError, OSError, ValueError):
            continue
        return True
    return False
