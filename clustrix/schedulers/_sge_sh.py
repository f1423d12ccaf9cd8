"""The shell scripts of the Grid Engine backend (``sh -c`` text, POSIX sh and awk only).

Kept apart from :mod:`clustrix.schedulers.sge` so that each reads in one sitting: here what
runs on the cluster, there how its output is read. Every value reaches these scripts as a
positional argument, never pasted into their text; the programs they call (``qstat``...) are
pasted in already quoted (:func:`script`), with the ``export`` lines discovery found needed.
"""

from __future__ import annotations

import shlex
from collections.abc import Mapping

__all__ = [
    "DETAIL",
    "DISCOVER",
    "DISCOVER_MARK",
    "ERRORS_MARK",
    "FIND_SUBMITTED",
    "ROOTS",
    "STATUS",
    "discovery_sections",
    "script",
    "seconds",
]

#: Starts each line of discovery's answer (``key=value``, or a section's name).
DISCOVER_MARK = "@@clustrix-sge@@"
#: Separates ``qstat -xml`` from the error reasons in the status command's output.
ERRORS_MARK = "@@clustrix-sge-errors@@"

#: Where Grid Engine is looked for when the login shell does not know it (common install
#: roots: Debian's, the default of the installer, vendors'): :data:`DISCOVER`'s $3.
ROOTS = (
    "/var/lib/gridengine /opt/sge /opt/gridengine /usr/share/gridengine /usr/local/sge "
    "/opt/ge /opt/uge /opt/age /cm/shared/apps/sge/current"
)

#: $1/$2: SGE_ROOT/SGE_CELL given in the config's environment_variables (then only that
#: root is tried); $3: the install roots to try when the login shell finds no Grid Engine.
DISCOVER = """\
works() { qconf -sconf >/dev/null 2>&1; }
bin_of() {  # the directory of Grid Engine's commands below $SGE_ROOT, if any
  for a in ${SGE_ARCH:-} $("$SGE_ROOT/util/arch" 2>/dev/null); do
    if [ -x "$SGE_ROOT/bin/$a/qsub" ]; then echo "$SGE_ROOT/bin/$a"; return 0; fi
  done
  return 1
}
try_root() {  # try_root ROOT: Grid Engine works with SGE_ROOT=ROOT (its settings sourced)
  cell=${SGE_CELL:-default}
  [ -d "$1/$cell/common" ] || return 1
  SGE_ROOT=$1; export SGE_ROOT
  if [ -r "$1/$cell/common/settings.sh" ]; then . "$1/$cell/common/settings.sh"; fi
  if works; then return 0; fi
  b=$(bin_of) || return 1
  PATH=$b:$PATH
  works
}
if [ -n "$2" ]; then SGE_CELL=$2; export SGE_CELL; fi
found=
if [ -n "$1" ]; then
  roots=$1
  if try_root "$1"; then found=settings; fi
elif works; then
  found=path
elif [ -n "${SGE_ROOT:-}" ] && try_root "$SGE_ROOT"; then
  found=settings  # the login shell sets SGE_ROOT, not the PATH
else
  roots="${SGE_ROOT:-} $3"
  for root in $3; do
    if try_root "$root"; then found=settings; break; fi
  done
fi
m=@MARK@
if [ -z "$found" ]; then
  echo "$m missing"
  echo "$m qsub=$(command -v qsub || echo none)"
  echo "$m SGE_ROOT=${SGE_ROOT:-}"
  echo "$m tried=$roots"
  echo "$m error=$(qconf -sconf 2>&1 | tr '\\n' ' ' | cut -c1-300)"
  exit 3
fi
echo "$m found=$found"
q=$(command -v qsub); echo "$m bin=${q%/*}"
for v in SGE_ROOT SGE_CELL SGE_QMASTER_PORT SGE_EXECD_PORT SGE_CLUSTER_NAME; do
  eval "x=\\${$v:-}"
  if [ -n "$x" ]; then echo "$m env $v=$x"; fi
done
echo "$m conf"; qconf -sconf 2>&1
echo "$m pes"; for pe in $(qconf -spl 2>/dev/null); do qconf -sp "$pe" 2>&1; done
echo "$m queues"; qstat -g c 2>&1
exit 0
"""
DISCOVER = DISCOVER.replace("@MARK@", DISCOVER_MARK)

#: $1: this executor's job numbers as ranges (``12-15,20``). Prints ``qstat -xml`` of the
#: user's jobs; then, for those of ours in error state (Eqw: they would never run), their
#: error reasons. A task in error is deleted the second time it is seen so (it is marked in
#: its job's context the first time): the poll that fails its future still sees the reason.
STATUS = """\
out=$(@qstat@ -xml -u "$(id -un)" 2>&1)
rc=$?
printf '%s\\n' "$out"
if [ "$rc" != 0 ]; then exit "$rc"; fi
case $out in *'</job_info>'*) ;; *) echo 'clustrix: qstat -xml gave no job list'; exit 1 ;; esac
case $out in *'<state>'*E*) ;; *) exit 0 ;; esac
err=$(printf '%s\\n' "$out" | awk -v want="$1" '
  BEGIN { n = split(want, r, ",")
          for (i = 1; i <= n; i++) { m = split(r[i], ab, "-"); lo[i] = ab[1] + 0
                                      hi[i] = (m > 1 ? ab[2] : ab[1]) + 0 } }
  /<JB_job_number>/ { gsub(/[^0-9]/, ""); j = $0 + 0 }
  /<state>[^<]*E[^<]*<\\/state>/ { for (i = 1; i <= n; i++)
                                     if (j >= lo[i] && j <= hi[i]) { print j; break } }' |
  sort -un | paste -sd, -)
if [ -z "$err" ]; then exit 0; fi
info=$(@qstat@ -j "$err" 2>/dev/null)
echo '@ERRORS@'
printf '%s\\n' "$info" | grep -E '^(job_number|error reason)'
printf '%s\\n' "$info" | awk '
  /^job_number:/ { j = $2 }
  /^job-array tasks:/ { array[j] = 1 }
  /^context:/ { n = split($2, kv, ","); for (i = 1; i <= n; i++) seen[j, kv[i]] = 1 }
  /^error reason/ { t = $3; sub(/:$/, "", t); key = "clustrix_eqw_" t "=1"
                    if ((j, key) in seen) del = del " " (j in array ? j "." t : j)
                    else mark[j] = (j in mark ? mark[j] "," : "") key }
  END { if (del != "") print "del" del; for (j in mark) print "mark " j " " mark[j] }' |
while read -r verb a b; do
  case $verb in
    del) @qdel@ $a $b ;;
    mark) @qalter@ -ac "$b" "$a" ;;
  esac
done >/dev/null 2>&1
exit 0
"""
STATUS = STATUS.replace("@ERRORS@", ERRORS_MARK)

#: $1: seconds to wait, in all, for accounting records not written yet (Grid Engine writes
#: them every accounting_flush_time); then job numbers. One ``qacct -j`` per job.
DETAIL = """\
wait_s=$1; shift
waited=0
for j in "$@"; do
  while :; do
    out=$(@qacct@ -j "$j" 2>&1) && break
    if [ "$waited" -ge "$wait_s" ]; then break; fi
    sleep 1; waited=$((waited + 1))
  done
  printf '%s\\n' "$out"
done
exit 0
"""

#: $1: the account string the job script set (``-A``): the jobs of one submission, queued
#: or running (``qstat -j``) and finished (``qacct``).
FIND_SUBMITTED = """\
@qstat@ -u "$(id -un)" -j '*' 2>/dev/null | grep -E '^(job_number|account):'
@qacct@ -A "$1" -j 2>/dev/null | grep -E '^(jobnumber|account) '
exit 0
"""


def script(template: str, env: Mapping[str, str], binary_dir: str) -> str:
    """``template`` with its programs filled in (by name, or in ``binary_dir`` when they are
    not on the PATH), after the ``export`` lines of ``env``."""
    exports = "".join(f"export {k}={shlex.quote(v)}\n" for k, v in sorted(env.items()))
    prefix = f"{binary_dir}/" if binary_dir else ""
    for name in ("qstat", "qdel", "qalter", "qacct"):
        template = template.replace(f"@{name}@", shlex.quote(prefix + name))
    return exports + template


def discovery_sections(text: str) -> dict[str, str]:
    """Discovery's answer: ``key=value`` lines and named sections."""
    out: dict[str, str] = {}
    name = ""
    lines: list[str] = []
    for line in text.splitlines():
        if line.startswith(DISCOVER_MARK):
            if name:
                out[name] = "\n".join(lines)
            word = line[len(DISCOVER_MARK) :].strip()
            key, sep, value = word.partition("=")
            if sep and (" " not in key or key.startswith("env ")):
                out[key] = value
                name = ""
            else:
                name, lines = word, []
        elif name:
            lines.append(line)
    if name:
        out[name] = "\n".join(lines)
    return out


def seconds(text: str) -> int | None:
    """``HH:MM:SS`` (or plain seconds) as seconds."""
    parts = text.split(":")
    if not all(p.isdigit() for p in parts) or len(parts) > 3:
        return None
    total = 0
    for part in parts:
        total = total * 60 + int(part)
    return total
