#!/bin/bash
#SBATCH --job-name=clustrix-simulate
#SBATCH --output=/home/u/.clustrix/jobs/5e1d0c/logs/0.out
#SBATCH --error=/home/u/.clustrix/jobs/5e1d0c/logs/0.err
#SBATCH --open-mode=append
#SBATCH --cpus-per-task=1
#SBATCH --time=30
#SBATCH --signal=B:USR2@120
#SBATCH --requeue
set -u
umask 077
_clx_task="${SLURM_ARRAY_TASK_ID:-0}"
_clx_job_dir=/home/u/.clustrix/jobs/5e1d0c
_clx_exit_dir=/home/u/.clustrix/jobs/5e1d0c/exit
# a run before a requeue (preemption, node failure) may have left its exit status
if [ -e "$_clx_exit_dir/$_clx_task" ]; then rm -f "$_clx_exit_dir/$_clx_task"; fi
# USR2 ignored until the worker's handler is in place (ignoring survives exec)
trap '' USR2
# PYTHONSAFEPATH: a 'clustrix' directory in the job's cwd must not shadow the runtime
CLUSTRIX_CHECKPOINT_SIGNAL=USR2 PYTHONSAFEPATH=1 PYTHONPATH=/home/u/.clustrix/runtime/clustrix-worker.zip"${PYTHONPATH:+:$PYTHONPATH}" \
  /usr/bin/python3 -c 'import sys; from clustrix.worker import main; sys.exit(main(sys.argv[2:]))' clustrix.worker run "$_clx_job_dir" "$_clx_task" &
_clx_child=$!
trap '_clx_sig=1; kill -TERM "$_clx_child" 2>/dev/null' TERM INT HUP
trap '_clx_sig=1; kill -USR2 "$_clx_child" 2>/dev/null' USR2
# a trapped signal interrupts "wait" (status 128+n): wait again for the real status,
# unless the worker is gone and its status with it (a zombie still counts: dash
# waits for it; bash reaps on its own, and waiting again there returns -1, or
# blocks while another child lives)
_clx_sig=1
while [ "$_clx_sig" = 1 ]; do _clx_sig=0; wait "$_clx_child"; _clx_rc=$?
  kill -0 "$_clx_child" 2>/dev/null || break; done
if [ "$_clx_rc" = 75 ]; then
  echo 'clustrix: the worker checkpointed; requeueing the job' >&2
  scontrol requeue "$SLURM_JOB_ID" && exit 0
  echo 'clustrix: the job could not be requeued' >&2
fi
# written in place, no temp file and mv (a process, ~1 ms of every task): a reader
# that comes between the create and the one write sees an empty file, which counts
# as none (the poll's grep prints nothing for it)
printf '%s\n' "$_clx_rc" > "$_clx_exit_dir/$_clx_task"
exit "$_clx_rc"
