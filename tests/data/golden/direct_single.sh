#!/bin/sh
# clustrix job clustrix-simulate: 1 task(s) on a plain host
umask 077  # what the job creates is private, its run record and GPU claims too
_clx_t="$1"
_clx_logs=/home/u/.clustrix/jobs/5e1d0c/logs
_clx_start_of() {
  _clx_s=
  { read -r _clx_l < "/proc/$1/stat"; } 2>/dev/null || return 0
  _clx_l=${_clx_l##*') '}
  set -- $_clx_l
  [ "$1" = Z ] || _clx_s=${20}
}
_clx_boot=
{ read -r _clx_boot < /proc/sys/kernel/random/boot_id; } 2>/dev/null
# who runs this task: status and cancel check the pid, its start time and the
# boot, so that a reused pid is never taken for the job
_clx_start_of "$$"
_clx_me="$$ $_clx_s $_clx_boot"
[ -n "$_clx_s" ] && printf '%s\n' "$_clx_me" > "$_clx_logs/.$_clx_t.run" &&
  mv -f "$_clx_logs/.$_clx_t.run" "$_clx_logs/$_clx_t.run" || exit 1
_clx_wd= _clx_gpus=
_clx_end() { [ -z "$_clx_wd" ] || kill "$_clx_wd" 2>/dev/null
  [ -z "$_clx_gpus" ] || _clx_release; }
trap _clx_end EXIT
set -u
umask 077
_clx_task="$_clx_t"
_clx_job_dir=/home/u/.clustrix/jobs/5e1d0c
_clx_exit_dir=/home/u/.clustrix/jobs/5e1d0c/exit
# a run before a requeue (preemption, node failure) may have left its exit status
if [ -e "$_clx_exit_dir/$_clx_task" ]; then rm -f "$_clx_exit_dir/$_clx_task"; fi
# PYTHONSAFEPATH: a 'clustrix' directory in the job's cwd must not shadow the runtime
PYTHONSAFEPATH=1 PYTHONPATH=/home/u/.clustrix/runtime/clustrix-worker.zip"${PYTHONPATH:+:$PYTHONPATH}" \
  /usr/bin/python3 -c 'import sys; from clustrix.worker import main; sys.exit(main(sys.argv[2:]))' clustrix.worker run "$_clx_job_dir" "$_clx_task" &
_clx_child=$!
trap '_clx_sig=1; kill -TERM "$_clx_child" 2>/dev/null' TERM INT HUP
# a trapped signal interrupts "wait" (status 128+n): wait again for the real status,
# unless the worker is gone and its status with it (a zombie still counts: dash
# waits for it; bash reaps on its own, and waiting again there returns -1, or
# blocks while another child lives)
_clx_sig=1
while [ "$_clx_sig" = 1 ]; do _clx_sig=0; wait "$_clx_child"; _clx_rc=$?
  kill -0 "$_clx_child" 2>/dev/null || break; done
# written in place, no temp file and mv (a process, ~1 ms of every task): a reader
# that comes between the create and the one write sees an empty file, which counts
# as none (the poll's grep prints nothing for it)
printf '%s\n' "$_clx_rc" > "$_clx_exit_dir/$_clx_task"
exit "$_clx_rc"
