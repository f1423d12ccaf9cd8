#!/bin/sh
# clustrix job clustrix-train: 4 task(s) on a plain host
umask 077  # what the job creates is private, its run record and GPU claims too
_clx_t="$1"
_clx_logs='/scratch/my jobs/run 1/0f3c9a/logs'
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
# failing before the worker runs: the exit status says so (else: LOST)
_clx_fail() { echo "clustrix: $1" >&2; _clx_x='/scratch/my jobs/run 1/0f3c9a/exit'
  printf '1\n' > "$_clx_x/.$_clx_t.tmp" &&
  mv -f "$_clx_x/.$_clx_t.tmp" "$_clx_x/$_clx_t"
  exit 1; }
# 2 GPU(s) of the host's, held by no other clustrix job: wait for them
_clx_gpu_dir='/scratch/my jobs/run 1/gpus'
mkdir -p "$_clx_gpu_dir" || _clx_fail "cannot create $_clx_gpu_dir"
_clx_release() { flock "$_clx_gpu_dir/.lock" sh -c 'dir=$1; me=$2; shift 2
for key; do
  { read -r owner < "$dir/$key"; } 2>/dev/null && [ "$owner" = "$me" ] && rm -f "$dir/$key"
done
exit 0
' clustrix-gpus "$_clx_gpu_dir" "$_clx_me" 30 31 4750552d35663263; }
: > "$_clx_logs/$_clx_t.wait"
while :; do
  _clx_gpus=$(flock "$_clx_gpu_dir/.lock" sh -c '_clx_start_of() {
  _clx_s=
  { read -r _clx_l < "/proc/$1/stat"; } 2>/dev/null || return 0
  _clx_l=${_clx_l##*'"'"') '"'"'}
  set -- $_clx_l
  [ "$1" = Z ] || _clx_s=${20}
}
_clx_boot=
{ read -r _clx_boot < /proc/sys/kernel/random/boot_id; } 2>/dev/null
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
  printf '"'"'%s\n'"'"' "$me" > "$dir/${kd%%:*}"; devices=${devices:+$devices,}${kd#*:}
done
echo "$devices"
' clustrix-gpus "$_clx_gpu_dir" 2 "$_clx_me" 0 30 1 31 GPU-5f2c 4750552d35663263) ||
    _clx_fail "cannot claim GPUs (flock $_clx_gpu_dir/.lock)"
  [ -z "$_clx_gpus" ] || break
  sleep 1
done
rm -f "$_clx_logs/$_clx_t.wait"
export CUDA_VISIBLE_DEVICES="$_clx_gpus"
# the time limit (90 min), enforced here: there is no scheduler
(
  _clx_stop= _clx_z=
  trap '_clx_stop=1; [ -z "$_clx_z" ] || kill -KILL "$_clx_z" 2>/dev/null' TERM
  sleep 5400 & _clx_z=$!
  [ -n "$_clx_stop" ] || wait "$_clx_z"
  if [ -n "$_clx_stop" ]; then kill -KILL "$_clx_z" 2>/dev/null; exit 0; fi
  trap '' TERM  # the TERM for the group below is not for the watchdog
  [ -e "$_clx_logs/$_clx_t.cancel" ] || : > "$_clx_logs/$_clx_t.timeout"
  echo 'clustrix: time limit (90 min) reached: stopping the job' >&2
  kill -TERM -"$$"
  sleep 10
  kill -KILL -"$$"
) &
_clx_wd=$!
_clx_end() { [ -z "$_clx_wd" ] || kill "$_clx_wd" 2>/dev/null
  [ -z "$_clx_gpus" ] || _clx_release; }
trap _clx_end EXIT
set -u
umask 077
_clx_task="$_clx_t"
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
