#!/bin/bash
#$ -N clustrix-simulate
#$ -S /bin/bash
#$ -cwd
#$ -j y
#$ -o /dev/null
#$ -A clustrix_5e1d0c
# clustrix job clustrix-simulate: 1 task(s)
_clx_logs=/home/u/.clustrix/jobs/5e1d0c/logs
exec >>"$_clx_logs/0.out" 2>>"$_clx_logs/0.err" || exit 1
set -u
umask 077
_clx_task="0"
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
