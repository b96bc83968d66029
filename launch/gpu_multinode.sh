#!/usr/bin/env bash
#SBATCH --job-name=vasa-jax
#SBATCH --nodes=2
#SBATCH --ntasks-per-node=8
#SBATCH --gpus-per-node=8
#SBATCH --cpus-per-task=12
#SBATCH --time=72:00:00
#SBATCH --output=vasa-jax-%j.log
# Multi-node GPU training under SLURM: one jax process per GPU (jax's SLURM detection gives each
# task the GPU of its SLURM_LOCALID), every task runs launch/run_host.sh with the same arguments.
#
# Usage: sbatch [--nodes=N] launch/gpu_multinode.sh CONFIG WORKDIR [--config.key=value ...]
#   or, inside an salloc allocation: bash launch/gpu_multinode.sh CONFIG WORKDIR ...
#   WORKDIR must be on a filesystem every node sees (NFS, Lustre, ...).
#
# Environment (optional): VASA_COORDINATOR_PORT (default: derived from SLURM_JOB_ID),
#   VASA_VENV, VASA_XLA_FLAGS (passed on to run_host.sh), VASA_REPO (the checkout on the nodes,
#   default: the submit directory).
set -euo pipefail

usage() {
  # The header comment (without #SBATCH lines) is the usage text.
  awk 'NR == 1 || /^#SBATCH/ { next } /^#/ { sub(/^# ?/, ""); print; next } { exit }' \
    "${BASH_SOURCE[0]}" >&2
  exit 2
}

if [[ $# -lt 2 || "$1" == "-h" || "$1" == "--help" ]]; then
  usage
fi

# ---- Fail fast outside a SLURM allocation ----
missing=()
for var in SLURM_JOB_NODELIST SLURM_NTASKS; do
  [[ -n "${!var:-}" ]] || missing+=("$var")
done
if (( ${#missing[@]} )); then
  echo "gpu_multinode.sh: error: ${missing[*]} not set: this script must run inside a SLURM" \
    "allocation. Submit it with 'sbatch launch/gpu_multinode.sh CONFIG WORKDIR' (or run it" \
    "from 'salloc'); for one machine use 'vasa-jax train' directly." >&2
  exit 1
fi
for tool in scontrol srun; do
  if ! command -v "$tool" >/dev/null 2>&1; then
    echo "gpu_multinode.sh: error: '$tool' not found on PATH (SLURM client tools are needed)." >&2
    exit 1
  fi
done

# sbatch runs a copy of this script from its spool directory, so find the checkout explicitly.
SCRIPT_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
if [[ -n "${VASA_REPO:-}" ]]; then
  REPO_DIR=$VASA_REPO
elif [[ -f "$SCRIPT_DIR/run_host.sh" ]]; then
  REPO_DIR="$(cd "$SCRIPT_DIR/.." && pwd)"
else
  REPO_DIR=${SLURM_SUBMIT_DIR:-$PWD}
fi
if [[ ! -f "$REPO_DIR/launch/run_host.sh" ]]; then
  echo "gpu_multinode.sh: error: $REPO_DIR/launch/run_host.sh not found; set VASA_REPO to the" \
    "vasa-jax checkout that every node can read." >&2
  exit 1
fi

# ---- Coordinator: process 0 runs on the first host of the allocation ----
COORD_HOST=$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1)
if [[ -z "$COORD_HOST" ]]; then
  echo "gpu_multinode.sh: error: 'scontrol show hostnames $SLURM_JOB_NODELIST' gave no host." >&2
  exit 1
fi
PORT=${VASA_COORDINATOR_PORT:-$(( 20000 + ${SLURM_JOB_ID:-0} % 20000 ))}
export VASA_COORDINATOR="$COORD_HOST:$PORT"
export VASA_NUM_PROCESSES=$SLURM_NTASKS
export VASA_REPO=$REPO_DIR

echo "[gpu_multinode] $SLURM_NTASKS processes on $SLURM_JOB_NODELIST, coordinator" \
  "$VASA_COORDINATOR" >&2
# srun sets SLURM_PROCID / SLURM_LOCALID per task; run_host.sh turns them into the process id.
# --kill-on-bad-exit: one failed task ends the step instead of leaving the others blocked in
# a collective.
exec srun --kill-on-bad-exit=1 bash "$REPO_DIR/launch/run_host.sh" "$@"
