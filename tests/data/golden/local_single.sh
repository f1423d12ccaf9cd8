#!/bin/sh
# clustrix job clustrix-simulate: 1 task(s)
set -u
job_dir=/home/u/.clustrix/jobs/5e1d0c
task="$1"
PYTHONPATH=/home/u/.clustrix/runtime/clustrix-worker.zip"${PYTHONPATH:+:$PYTHONPATH}" \
  /usr/bin/python3 -m clustrix.worker run "$job_dir" "$task" &
child=$!
trap 'kill -TERM "$child" 2>/dev/null' TERM INT HUP
wait "$child"; rc=$?
# a trapped signal interrupts "wait": wait again for the real status
while kill -0 "$child" 2>/dev/null; do wait "$child"; rc=$?; done
exit_dir=/home/u/.clustrix/jobs/5e1d0c/exit
printf '%s\n' "$rc" > "$exit_dir/.$task.tmp" && mv -f "$exit_dir/.$task.tmp" "$exit_dir/$task"
exit "$rc"
