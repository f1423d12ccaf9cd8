#!/bin/bash
#$ -N clustrix-simulate
#$ -S /bin/bash
#$ -cwd
#$ -j y
#$ -o /dev/null
#$ -A clustrix_0f3c9a
#$ -t 1-10
#$ -tc 4
#$ -pe smp 4
#$ -l h_vmem=640M
#$ -l h_rt=5400
#$ -q short.q
#$ -P proj42
#$ -l scratch=10G
#$ -R y
# clustrix job clustrix-simulate: 10 task(s)
_clx_logs='/scratch/my jobs/run 1/0f3c9a/logs'
exec >>"$_clx_logs/$((SGE_TASK_ID - 1)).out" 2>>"$_clx_logs/$((SGE_TASK_ID - 1)).err" || exit 1
set -u
umask 077
_clx_task="$((SGE_TASK_ID - 1))"
module load gcc/12
module load python/3.11
export OMP_NUM_THREADS=4
export WEIRD='a b'"'"'c"$d`e`;f'
_clx_job_dir='/scratch/my jobs/run 1/0f3c9a'
_clx_exit_dir='/scratch/my jobs/run 1/0f3c9a/exit'
# a run before a requeue (preemption, node failure) may have left its exit status
if [ -e "$_clx_exit_dir/$_clx_task" ]; then rm -f "$_clx_exit_dir/$_clx_task"; fi
# PYTHONSAFEPATH: a 'clustrix' directory in the job's cwd must not shadow the runtime
PYTHONSAFEPATH=1 PYTHONPATH='/scratch/my jobs/runtime/clustrix-worker.zip'"${PYTHONPATH:+:$PYTHONPATH}" \
  '/opt/python 3.11/bin/python3' -c 'import sys; from clustrix.worker import main; sys.exit(main(sys.argv[2:]))' clustrix.worker run "$_clx_job_dir" "$_clx_task" &
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
