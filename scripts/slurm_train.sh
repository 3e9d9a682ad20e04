#!/usr/bin/env bash
# qtrain on a Slurm cluster: one task per GPU, data-parallel over NCCL (README, "Several GPUs").
#   sbatch scripts/slurm_train.sh recipes/guanaco.yaml [--set key=value ...]
#
# Each task reads its rank from SLURM_PROCID / SLURM_NTASKS / SLURM_LOCALID and finds rank 0 on the
# first host of SLURM_JOB_NODELIST (trainer/distributed_env.h); no torchrun is needed. output_dir must be on a
# file system every node sees (rank 0 writes checkpoints, every rank reads them on --resume).
#
# Pre-emption and time limits: Slurm sends SIGTERM to every task (here also 5 minutes before the time
# limit); the ranks agree to stop after the same step, rank 0 writes a checkpoint of it and all exit 0.
# The job then requeues itself, and the same command continues with --resume (from step 0 if the job
# never reached its first checkpoint). Checkpoints can be resumed on another number of GPUs too.
#SBATCH --job-name=qtrain
#SBATCH --nodes=2
#SBATCH --ntasks-per-node=8          # one task per GPU
#SBATCH --gpus-per-node=8
#SBATCH --cpus-per-task=8
#SBATCH --time=24:00:00
#SBATCH --signal=TERM@300            # SIGTERM 5 minutes before the limit: time to checkpoint
#SBATCH --requeue
#SBATCH --open-mode=append
#SBATCH --output=qtrain-%j.log
set -euo pipefail
[ $# -ge 1 ] || { echo "usage: sbatch $0 RECIPE.yaml [qtrain options]" >&2; exit 2; }
cd "${SLURM_SUBMIT_DIR:-.}"
QTRAIN=${QTRAIN:-build/qtrain}

# One port per job, so two jobs sharing a node do not collide (rank 0 serves the rendezvous store on it).
export MASTER_PORT=${MASTER_PORT:-$((20000 + ${SLURM_JOB_ID:-0} % 20000))}
export OMP_NUM_THREADS=${SLURM_CPUS_PER_TASK:-8}
# export NCCL_SOCKET_IFNAME=ib0       # the network NCCL should use, if the default is wrong

status=0
srun --kill-on-bad-exit=1 "$QTRAIN" train "$@" --resume || status=$?

# Stopped by the signal before the end (a checkpoint was written, exit 0): run again from it.
if [ "$status" -eq 0 ] && tail -n 20 "qtrain-${SLURM_JOB_ID}.log" 2>/dev/null | grep -q "^stopped by signal"; then
  scontrol requeue "$SLURM_JOB_ID"
fi
exit "$status"
