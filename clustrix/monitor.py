"""One status round trip for all outstanding jobs, and the poll backoff.

Each poll cycle runs ONE shell command on the cluster that prints, in this order:

1. the scheduler's status of every outstanding job (one ``squeue``/``ps``, never one per job),
2. the exit status files the job scripts wrote (``exit/<task>``) and, in self-scheduled
   submissions, the claim files of the calls the tasks took (``claims/<call>``),
3. the result files the workers wrote (``results/<call>.pkl``), and over a slow link the
   content of the small ones too (a base64 tar): no read per result,
4. only when ``future.logs()`` asks for them: the last bytes of some job logs (base64, each
   after a line of its own marker: a log may hold anything).

The order matters: a job reported ended in (1) wrote its exit file before, and its results
before that, so (2) and (3) see them; a call's claim is made before it runs, so a result in
(3) always comes with its claim in (2). Pure functions only: the engine runs the command.

Over a slow link a cycle may first **wait on the cluster** (:func:`wait_steps`): instead of
sleeping on the client and then asking, the command looks for new exit, claim and result
files a few times during the pause and goes on to (1)-(4) as soon as one appears, so a
result comes half a round trip after it is written rather than at the next cycle.
"""

from __future__ import annotations

import base64
import binascii
import io
import logging
import posixpath
import shlex
import tarfile
from collections.abc import Sequence
from dataclasses import dataclass, field

from . import _wire

__all__ = [
    "EAGER_S",
    "NEWS_MARK",
    "POLL_BURST",
    "WAIT_THERE_MIN_S",
    "PollBudget",
    "PollOutput",
    "parse_poll_output",
    "poll_delay",
    "poll_script",
    "wait_steps",
]

log = logging.getLogger("clustrix")

MARK = "@@clustrix-poll@@"
#: Comes before each log tail (section 4), which comes last.
TAIL_MARK = "@@clustrix-tail@@"
#: On stderr when a cycle that waited on the cluster went on at news, before its pauses ended.
NEWS_MARK = "@@clustrix-news@@"
#: Beyond this many job directories, scan the whole jobs root instead of listing each one,
#: so the command line stays short however many submissions are outstanding.
MAX_LISTED_DIRS = 200


def poll_script(
    status_argv: Sequence[str] | None,
    job_dirs: Sequence[str],
    jobs_root: str,
    consumed: Sequence[str] = (),
    *,
    fetched: Sequence[str] = (),
    bundle_kib: int = 0,
    tails: Sequence[tuple[str, int]] = (),
    wait_steps_s: Sequence[float] = (),
    news_marker: str | None = None,
) -> str:
    """The ``sh`` script of one poll cycle.

    ``consumed`` are files read for the last time (exit files of finished tasks): deleting
    them here, in the same round trip, keeps every later listing short. ``fetched`` are
    result files already read: moved into ``results/done/`` (kept for a ``recover()`` after
    a crash, but no longer listed). With ``bundle_kib``, the result files listed and smaller
    than that many KiB also come back in the same output (a base64 tar, after the listing):
    over a slow link, no read per result. ``tails`` are (log path, max bytes): the last
    bytes of each come last, in that order (:attr:`PollOutput.tails`).

    With ``wait_steps_s`` (:func:`wait_steps`) and ``news_marker`` (a file of the
    executor's own) the script first sleeps those pauses one after another, until an exit,
    claim or result file newer than the marker is there (then :data:`NEWS_MARK` goes to
    stderr), then touches the marker just
    before the status query and the listings: what is newer than it next time was written
    after this cycle looked. The output is the same as without.
    """
    lines = ["umask 077"]  # the done/ directories are as private as the rest
    if consumed:
        lines.append(f"rm -f -- {' '.join(shlex.quote(p) for p in consumed)}")
    by_dir: dict[str, list[str]] = {}
    for path in fetched:
        by_dir.setdefault(posixpath.dirname(path), []).append(path)
    for directory, paths in by_dir.items():
        done = shlex.quote(f"{directory}/{_wire.DONE_DIR}")
        files = " ".join(shlex.quote(p) for p in paths)
        lines.append(f"mkdir -p {done} && mv -f -- {files} {done}/ 2>/dev/null")
    status_at = len(lines)  # where a wait goes (job dirs only: nothing to wait for else)
    if status_argv:
        lines.append(f'{shlex.join(status_argv)} 2>&1; echo "{MARK} $?"')
    else:
        lines.append(f'echo "{MARK} 0"')
    if not job_dirs:
        lines.append(f'echo "{MARK}"')
        return "\n".join(lines + _tail_lines(tails))
    if len(job_dirs) <= MAX_LISTED_DIRS:
        roots, depth = " ".join(shlex.quote(d) for d in job_dirs), 2
    else:
        roots, depth = shlex.quote(jobs_root), 3
    find = f"find {roots} -mindepth {depth} -maxdepth {depth}"
    claims = f"-path '*/{_wire.EXIT_DIR}/[0-9]*' -o -path '*/{_wire.CLAIMS_DIR}/[0-9]*'"
    finished = f"-path '*/{_wire.RESULTS_DIR}/*{_wire.SUFFIX}' ! -name '.*'"
    if news_marker is not None and wait_steps_s:
        marker = shlex.quote(news_marker)
        news = f"{find} \\( {claims} -o \\( {finished} \\) \\) -newer {marker}"
        pauses = " ".join(f"{step:g}" for step in wait_steps_s)
        lines[status_at:status_at] = [
            # No marker yet: what comes from now on is news. One that cannot be made: the
            # pauses are slept in full (find -newer finds nothing), as on the client.
            f"[ -e {marker} ] || touch {marker} 2>/dev/null",
            # fractional sleep: coreutils, busybox, BSD; 1 s where sleep wants integers
            f'for s in {pauses}; do sleep "$s" 2>/dev/null || sleep 1; '
            f'[ -n "$({news} 2>/dev/null | head -n 1)" ] && {{ echo {NEWS_MARK} >&2; break; }}; '
            "done",
            # before the status query and the listings: what is newer, they did not see
            f"touch {marker} 2>/dev/null",
        ]
    lines.append(f"{find} \\( {claims} \\) -exec grep -H '' {{}} + 2>/dev/null")
    lines.append(f'echo "{MARK}"')
    results = f"{find} {finished}"
    lines.append(f"{results} 2>/dev/null")
    if bundle_kib:
        # found again (a result that appeared meanwhile is simply one more); xargs -r: no
        # tar at all when there is nothing new
        lines.append(f'echo "{MARK}"')
        lines.append(
            f"{results} -size -{bundle_kib}k -print0 2>/dev/null"
            " | xargs -0 -r tar -cf - 2>/dev/null | base64"
        )
    lines += _tail_lines(tails)
    lines.append("exit 0")
    return "\n".join(lines)


def _tail_lines(tails: Sequence[tuple[str, int]]) -> list[str]:
    # a log not there yet (the job has not started) prints nothing: an empty tail
    return [
        f'echo "{TAIL_MARK}"; tail -c {int(size)} -- {shlex.quote(path)} 2>/dev/null | base64'
        for path, size in tails
    ]


@dataclass
class PollOutput:
    """What one poll cycle saw."""

    status_ok: bool
    status_text: str
    #: exit status by exit-file path (``<job_dir>/exit/<task>``)
    exit_codes: dict[str, int] = field(default_factory=dict)
    #: paths of the result files present
    result_paths: set[str] = field(default_factory=set)
    #: the content of the result files that came with the listing (``bundle_kib``)
    result_data: dict[str, bytes] = field(default_factory=dict)
    #: who claimed each call of a self-scheduled submission, by claim-file path
    #: (``<job_dir>/claims/<call>``): a task index, or ``cancelled``
    claims: dict[str, str] = field(default_factory=dict)
    #: the log tails asked for (``poll_script(tails=...)``), in the order asked
    tails: list[bytes] = field(default_factory=list)


def parse_poll_output(stdout: str) -> PollOutput:
    """Split the poll command's output into its sections."""
    stdout, *tails = stdout.split(TAIL_MARK)
    status_part, _, rest = stdout.partition(MARK)
    rc_line, _, rest = rest.partition("\n")
    exits_part, _, results_part = rest.partition(MARK)
    rc_text = rc_line.strip()
    output = PollOutput(status_ok=rc_text == "0", status_text=status_part)
    for tail in tails:
        try:
            output.tails.append(base64.b64decode("".join(tail.split())))
        except (binascii.Error, ValueError):  # cut off: as good as no tail
            output.tails.append(b"")
    claims_marker = f"/{_wire.CLAIMS_DIR}/"
    for line in exits_part.splitlines():
        path, sep, value = line.rpartition(":")
        if not sep:
            continue
        if claims_marker in path:
            output.claims[path] = value.strip()
        elif value.strip().lstrip("-").isdigit():
            output.exit_codes[path] = int(value)
    listing, _, bundle = results_part.partition(MARK)
    output.result_paths = {line for line in listing.splitlines() if line}
    if bundle.strip():
        output.result_data = _untar(bundle)
    return output


def _untar(text: str) -> dict[str, bytes]:
    """The files of the base64 tar(s) in ``text``, by absolute path (tar drops the '/')."""
    files: dict[str, bytes] = {}
    try:
        data = base64.b64decode(text)
        # ignore_zeros: xargs may have run tar more than once, each with its own archive
        with tarfile.open(fileobj=io.BytesIO(data), mode="r:", ignore_zeros=True) as archive:
            for member in archive:
                handle = archive.extractfile(member) if member.isfile() else None
                if handle is not None:
                    files["/" + member.name.lstrip("/")] = handle.read()
    except (ValueError, tarfile.TarError, EOFError) as exc:
        # a cut-off bundle: the listed results are then read one by one
        log.warning("clustrix: unreadable result bundle (%s); reading the files instead", exc)
    return files


#: For this long after a submission polls follow each other back to back: a job usually
#: starts within a second of its submission (SLURM's scheduling tick), a short call ends
#: soon after, and a gap between two polls is time added to its result.
EAGER_S = 2.0


#: A cycle waits on the cluster (rather than on the client) for a pause at least this long:
#: shorter ones are the back-to-back polls of the first seconds, where it would gain little.
WAIT_THERE_MIN_S = 0.2
#: Looks of a poll that waits on the cluster, spread over its pause: a result written during
#: it comes within a fifth of the pause (2 % of the jobs' age, see :func:`poll_delay`).
WAIT_LOOKS = 5
#: The looks of a wait are never closer together than this.
WAIT_STEP_MIN_S = 0.05


def wait_steps(wait_s: float) -> list[float]:
    """The pauses of a poll that waits ``wait_s`` on the cluster: :data:`WAIT_LOOKS` equal
    steps (fewer for a short wait, none for none)."""
    if wait_s <= 0:
        return []
    looks = max(1, min(WAIT_LOOKS, int(wait_s / WAIT_STEP_MIN_S)))
    return [round(wait_s / looks, 3)] * looks


def poll_delay(
    age_s: float, min_s: float, max_s: float, fraction: float = 0.1, *, last_poll_s: float = 0.0
) -> float:
    """Seconds to wait before the next poll, for jobs submitted ``age_s`` seconds ago, after
    a poll that took ``last_poll_s``.

    Younger than :data:`EAGER_S`: the next poll starts ``min_s`` after the last one started,
    at once if it took longer (over a slow link: back to back, one poll in flight). Then a
    fixed fraction of the jobs' age: a result is noticed within about 10 % of the time the
    job took, however long that is, while a long job costs few polls (about one per 10 % of
    its age, so a logarithmic number up to the ``max_s`` cap). Never below ``min_s``.
    """
    if age_s < EAGER_S:
        return max(0.0, min_s - last_poll_s)
    return min(max_s, max(min_s, fraction * age_s))


#: Status queries the budget lets go back to back before its rate holds: slurmctld's
#: default ``rl_bucket_size``, so that one executor's eager polls never trip a cluster's
#: RPC rate limit (``SchedulerParameters=rl_enable``) on their own.
POLL_BURST = 30


@dataclass
class PollBudget:
    """A token bucket for the scheduler's status queries: ``burst`` may go back to back,
    then at most ``per_s`` a second, however the submissions come.

    Without it, a user who submits a call every second would keep the eager window of
    :func:`poll_delay` open for good: a status query 20 times a second, for as long as the
    submissions go on, on a scheduler shared with everybody else. A poll cycle the budget
    has no query for still runs, on the schedule: it lists the job directories and brings
    the results that are there (what a short call waits for), and leaves the rest (which
    jobs ended, and how) to the next cycle that asks. So a steady stream of submissions
    costs ``per_s`` queries a second, and its results come as fast as before.
    """

    per_s: float
    burst: int = POLL_BURST
    tokens: float = field(init=False)  # full at first
    at_s: float | None = None  # when tokens was last brought up to date

    def __post_init__(self) -> None:
        self.tokens = float(self.burst)

    def _refill(self, now_s: float) -> None:
        if self.at_s is not None:
            elapsed_s = max(0.0, now_s - self.at_s)
            self.tokens = min(float(self.burst), self.tokens + elapsed_s * self.per_s)
        self.at_s = now_s

    def take(self, now_s: float) -> bool:
        """True (and one query spent) if a status query may go at ``now_s``."""
        self._refill(now_s)
        if self.tokens < 1:
            return False
        self.tokens -= 1
        return True
