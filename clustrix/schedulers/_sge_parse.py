"""Reading Grid Engine's answers: ``qstat -xml`` (with the status script's error reasons),
``qacct -j`` records, task ranges. Pure functions, tested on outputs captured from Debian 12's
gridengine 8.1.9 (``tests/data/sge/``); what the words mean is :mod:`clustrix.schedulers.sge`'s.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Sequence

from ._sge_sh import ERRORS_MARK
from .base import TaskStatus

__all__ = ["expand_tasks", "job_ranges", "parse_qacct", "parse_qstat_xml"]

_JOB_LIST = re.compile(r"<job_list\b[^>]*>(.*?)</job_list>", re.S)
_FIELD = re.compile(r"<(JB_job_number|state|tasks)>([^<]*)</")
_ERROR_REASON = re.compile(r"^error reason\s+(\d+):\s+(?:\S+ \S+ \[[^\]]*\]: )?(.*)$")


def expand_tasks(text: str) -> Iterator[int]:
    """Task numbers of qstat's ``1-10:2``, ``2,3``, ``5``."""
    for item in text.split(","):
        span, _, step = item.strip().partition(":")
        first, _, last = span.partition("-")
        if not first.isdigit():
            continue
        stop = int(last) if last.isdigit() else int(first)
        yield from range(int(first), stop + 1, int(step) if step.isdigit() and int(step) else 1)


def job_ranges(job_ids: Sequence[str]) -> list[str]:
    """The distinct job numbers of ``job_ids`` (``12``, ``12.3``) as ranges (``12-15``)."""
    numbers = sorted({int(j.split(".")[0]) for j in job_ids if j.split(".")[0].isdigit()})
    ranges: list[list[int]] = []
    for n in numbers:
        if ranges and n == ranges[-1][1] + 1:
            ranges[-1][1] = n
        else:
            ranges.append([n, n])
    return [f"{a}-{b}" if a != b else str(a) for a, b in ranges]


def parse_qstat_xml(text: str) -> dict[str, TaskStatus]:
    """``qstat -xml`` (and the status script's error reasons after it) as states by job ID:
    a plain job by its number, each array task as ``<number>.<task>``."""
    xml, _, errors = text.partition(ERRORS_MARK)
    states: dict[str, TaskStatus] = {}
    arrays: set[str] = set()
    for block in _JOB_LIST.findall(xml):
        fields = dict(_FIELD.findall(block))
        number, state = fields.get("JB_job_number", ""), fields.get("state", "")
        if not number.isdigit() or not state:
            continue
        if "tasks" not in fields:
            states[number] = TaskStatus(number, state)
            continue
        arrays.add(number)
        for task in expand_tasks(fields["tasks"]):
            job_id = f"{number}.{task}"
            states[job_id] = TaskStatus(job_id, state)
    number = ""
    for line in errors.splitlines():
        if line.startswith("job_number:"):
            number = line.partition(":")[2].strip()
        elif (match := _ERROR_REASON.match(line)) and number:
            job_id = f"{number}.{match[1]}" if number in arrays else number
            status = states.get(job_id)
            if status is not None:
                reason = (
                    f"{match[2].strip()} (Grid Engine holds the job in error state {status.state}, "
                    "where it never runs: clustrix deletes it)"
                )
                states[job_id] = TaskStatus(job_id, status.state, reason=reason)
    return states


def _records(text: str) -> Iterator[dict[str, str]]:
    """qacct's records (blocks after a line of ``=``) as field dicts."""
    record: dict[str, str] = {}
    for line in text.splitlines():
        if line.startswith("====="):
            if record:
                yield record
            record = {}
            continue
        key, _, value = line.partition(" ")
        if key and value.strip():
            record[key] = value.strip()
    if record:
        yield record


def parse_qacct(text: str) -> dict[str, TaskStatus]:
    """``qacct -j`` records as final states by job ID (the last record of a job counts: a
    rescheduled job has one per run)."""
    states: dict[str, TaskStatus] = {}
    for record in _records(text):
        number, task = record.get("jobnumber", ""), record.get("taskid", "undefined")
        code_text, _, why = record.get("failed", "").partition(":")
        exit_text = record.get("exit_status", "").split()
        if not number.isdigit() or not code_text.strip().isdigit() or not exit_text:
            continue
        job_id = number if task == "undefined" else f"{number}.{task}"
        code = int(code_text)
        exit_code = int(exit_text[0]) if exit_text[0].isdigit() else None
        if code == 0:
            states[job_id] = TaskStatus(job_id, "exited", exit_code=exit_code)
            continue
        why = why.strip()
        hint = {100: "deleted (qdel) or killed by a signal; ", 37: "its time limit was reached; "}
        reason = f"{hint.get(code, '')}qacct: failed {code}: {why}"
        states[job_id] = TaskStatus(job_id, f"failed {code}", reason=reason, exit_code=exit_code)
    return states
