"""The shell programs of the ``ssh`` backend (:mod:`clustrix.schedulers.direct`), run on the
host: the launcher, the status and cancel commands, the GPU claims, the host check.

POSIX ``sh`` (dash) and Linux: ``/proc/<pid>/stat`` and the boot id tell whether a recorded
process still runs, ``setsid`` gives each job its own session and process group. Each is a
constant passed as ``sh -c <program> <name> <args>...``: values only ever travel as
arguments, never inside the program text. Nothing here is Python's business but the text.
"""

from __future__ import annotations

import shlex

__all__ = [
    "CANCEL",
    "CLAIM_GPUS",
    "DISCOVER",
    "KILLER",
    "LAUNCHER",
    "RELEASE_GPUS",
    "START_OF",
    "STATUS",
]

# `_clx_start_of PID` sets _clx_s to the start time of the live (not zombie) process PID,
# or to "" if there is none. Field 22 of /proc/PID/stat; the command name (field 2) may hold
# spaces and parentheses, so the fields are counted after its last ") ".
START_OF = """\
_clx_start_of() {
  _clx_s=
  { read -r _clx_l < "/proc/$1/stat"; } 2>/dev/null || return 0
  _clx_l=${_clx_l##*') '}
  set -- $_clx_l
  [ "$1" = Z ] || _clx_s=${20}
}
_clx_boot=
{ read -r _clx_boot < /proc/sys/kernel/random/boot_id; } 2>/dev/null
"""

#: ``sh -c LAUNCHER clustrix-launch <script> <job dir> <task>...``: start every task, wait
#: until each has recorded itself, print ``<task> <pid> <start>`` per task. A task is claimed
#: (``mkdir logs/<t>.launch``) before it starts: a launcher run again after a lost
#: connection starts none twice. Nothing is printed before every task runs (a write to a
#: dropped connection would kill the launcher half-way).
LAUNCHER = """\
umask 077  # the logs are the job's: private
script=$1; logs=$2/logs; shift 2
for t; do
  mkdir "$logs/$t.launch" 2>/dev/null || continue
  setsid sh "$script" "$t" </dev/null >"$logs/$t.out" 2>"$logs/$t.err" &
done
for t; do
  i=0
  while [ ! -e "$logs/$t.run" ] && [ "$i" -lt 600 ]; do sleep 0.05; i=$((i + 1)); done
done
bad=
for t; do
  if read -r pid start boot < "$logs/$t.run"; then
    echo "$t $pid $start"
  else
    bad="$bad $t"
  fi
done 2>/dev/null
[ -z "$bad" ] && exit 0
echo "clustrix: task(s)$bad did not start on $(uname -n); see $logs/<task>.err" >&2
for t; do
  read -r pid start boot < "$logs/$t.run" && kill -KILL -"$pid"
done 2>/dev/null
exit 1
"""

#: ``sh -c STATUS clustrix-status <jobs root> [<run id>...]``: one ``CLX|id|WORD|rc|reason``
#: line per job that has a run record (no run id: every job of the work dir). Alive means
#: the recorded pid runs with the recorded start time since the recorded boot.
STATUS = (
    START_OF
    + """\
root=$1; shift
if [ $# = 0 ]; then
  for f in "$root"/*/logs/*.run; do
    [ -e "$f" ] || continue
    d=${f%/logs/*}; t=${f##*/}; set -- "$@" "${d##*/}_${t%.run}"
  done
fi
for id; do
  d=$root/${id%_*}; t=${id##*_}; l=$d/logs
  { read -r pid start boot < "$l/$t.run"; } 2>/dev/null || continue
  _clx_s=
  [ "$boot" != "$_clx_boot" ] || _clx_start_of "$pid"
  if [ -n "$_clx_s" ] && [ "$_clx_s" = "$start" ]; then
    if [ -e "$l/$t.wait" ]; then w=WAITING; else w=RUNNING; fi
    echo "CLX|$id|$w||"; continue
  fi
  rc=; { read -r rc < "$d/exit/$t"; } 2>/dev/null; why=
  if [ -e "$l/$t.timeout" ]; then w=TIMEOUT; why="time limit reached"
  elif [ -e "$l/$t.cancel" ]; then w=CANCELLED
  elif [ -n "$rc" ]; then if [ "$rc" = 0 ]; then w=COMPLETED; else w=FAILED; fi
  elif [ "$boot" != "$_clx_boot" ]; then w=LOST; why="the host restarted"
  else w=LOST; why="its processes are gone without an exit status (killed from outside?)"
  fi
  echo "CLX|$id|$w|$rc|$why"
done
exit 0
"""
)

#: The detached killer: ``<grace s> <pid>:<start>...``. A leader that is gone (or a zombie)
#: may leave members of its group behind; the pid number cannot be reused meanwhile.
KILLER = (
    START_OF
    + """\
sleep "$1"; shift
for ps; do
  _clx_start_of "${ps%%:*}"
  if [ -z "$_clx_s" ] || [ "$_clx_s" = "${ps#*:}" ]; then kill -KILL -"${ps%%:*}"; fi
done 2>/dev/null
exit 0
"""
)

#: ``sh -c CANCEL clustrix-cancel <jobs root> <grace s> <run id>...``: mark each live job
#: cancelled and TERM its process group; a detached killer KILLs what is left after the grace.
CANCEL = (
    START_OF
    + """\
root=$1; grace=$2; shift 2; left=
for id; do
  l=$root/${id%_*}/logs; t=${id##*_}
  { read -r pid start boot < "$l/$t.run"; } 2>/dev/null || continue
  [ "$boot" = "$_clx_boot" ] || continue
  _clx_start_of "$pid"
  [ -z "$_clx_s" ] || [ "$_clx_s" = "$start" ] || continue  # the pid is another's now
  if [ -n "$_clx_s" ] && [ ! -e "$l/$t.timeout" ]; then : > "$l/$t.cancel"; fi
  kill -TERM -"$pid" 2>/dev/null; left="$left $pid:$start"
done
[ -z "$left" ] && exit 0
"""
    + f"setsid sh -c {shlex.quote(KILLER)} clustrix-kill"
    + """ "$grace" $left </dev/null >/dev/null 2>&1 &
exit 0
"""
)

#: ``sh -c DISCOVER clustrix-discover``: CPU count, and whether the host has what jobs need.
DISCOVER = """\
echo "CLX-NPROC $(nproc 2>/dev/null || getconf _NPROCESSORS_ONLN 2>/dev/null)"
echo "CLX-OS $(uname -sr 2>/dev/null)"
[ -r /proc/self/stat ] && [ -r /proc/sys/kernel/random/boot_id ] && echo CLX-PROC
command -v setsid >/dev/null 2>&1 && echo CLX-SETSID
command -v flock >/dev/null 2>&1 && echo CLX-FLOCK
nvidia-smi --query-gpu=index --format=csv,noheader 2>/dev/null | sed 's/^/CLX-GPU /'
exit 0
"""

#: Under ``flock``: ``<gpu dir> <count> <owner> <device> <key>...``: take ``count`` devices
#: whose owner file is missing or names a process that is gone; print them (comma-separated),
#: or nothing if not enough are free.
CLAIM_GPUS = (
    START_OF
    + """\
set -f  # device names are not patterns
dir=$1; want=$2; me=$3; shift 3; got=; n=0
while [ $# -ge 2 ] && [ "$n" -lt "$want" ]; do
  if { read -r pid start boot < "$dir/$2"; } 2>/dev/null && [ "$boot" = "$_clx_boot" ]; then
    _clx_start_of "$pid"
    if [ -n "$_clx_s" ] && [ "$_clx_s" = "$start" ]; then shift 2; continue; fi
  fi
  got="$got $2:$1"; n=$((n + 1)); shift 2
done
[ "$n" -ge "$want" ] || exit 0
devices=
for kd in $got; do
  printf '%s\\n' "$me" > "$dir/${kd%%:*}"; devices=${devices:+$devices,}${kd#*:}
done
echo "$devices"
"""
)

#: Under ``flock``: ``<gpu dir> <owner> <key>...``: give back the devices ``owner`` holds.
RELEASE_GPUS = """\
dir=$1; me=$2; shift 2
for key; do
  { read -r owner < "$dir/$key"; } 2>/dev/null && [ "$owner" = "$me" ] && rm -f "$dir/$key"
done
exit 0
"""
