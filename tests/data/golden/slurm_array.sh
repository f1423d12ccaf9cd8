#!/bin/bash
#SBATCH --job-name=clustrix-simulate
#SBATCH --output="/scratch/my jobs/run 1/0f3c9a/logs/%a.out"
#SBATCH --error="/scratch/my jobs/run 1/0f3c9a/logs/%a.err"
#SBATCH --array=0-9%4
#SBATCH --cpus-per-task=4
#SBATCH --mem=2560M
#SBATCH --time=90
#SBATCH --partition=short
#SBATCH --account=proj42
#SBATCH --qos=normal
#SBATCH --gpus=1
#SBATCH --constraint=skylake
#SBATCH --exclusive
set -u
module load gcc/12
module load python/3.11
export OMP_NUM_THREADS=4
export WEIRD='a b'"'"'c"$d`e`;f'
job_dir='/scratch/my jobs/run 1/0f3c9a'
task="${SLURM_ARRAY_TASK_ID:-0}"
PYTHONPATH='/scratch/my jobs/runtime/clustrix-worker.zip'"${PYTHONPATH:+:$PYTHONPATH}" \
  '/opt/python 3.11/bin/python3' -m clustrix.worker run "$job_dir" "$task" &
child=$!
trap 'kill -TERM "$child" 2>/dev/null' TERM INT HUP
wait "$child"; rc=$?
# a trapped signal interrupts "wait": wait again for the real status
while kill -0 "$child" 2>/dev/null; do wait "$child"; rc=$?; done
exit_dir='/scratch/my jobs/run 1/0f3c9a/exit'
printf '%s\n' "$rc" > "$exit_dir/.$task.tmp" && mv -f "$exit_dir/.$task.tmp" "$exit_dir/$task"
exit "$rc"
