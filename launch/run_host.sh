#!/usr/bin/env bash
# The per-host command of a multi-host run: every host (TPU VM worker, or SLURM task) runs
# exactly this, with the same arguments; jax.distributed.initialize() then finds the others.
#
# Usage: launch/run_host.sh CONFIG WORKDIR [--config.key=value ...]
#   e.g. launch/run_host.sh configs/latent.py:base gs://my-bucket/runs/latent --config.data.shards=...
#
# Environment (all optional):
#   VASA_VENV            virtualenv to activate (default: REPO/.venv when it exists)
#   VASA_PYTHON          python executable (default: python from the venv / PATH)
#   VASA_COORDINATOR     host:port of process 0; exported as JAX_COORDINATOR_ADDRESS (jax reads it)
#   VASA_NUM_PROCESSES   process count (default: SLURM_NTASKS; TPU pods detect it themselves)
#   VASA_PROCESS_ID      this process's id (default: SLURM_PROCID; TPU pods detect it themselves)
#   VASA_XLA_FLAGS       appended to XLA_FLAGS (e.g. GPU latency-hiding-scheduler flags)
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
CONFIG=$1
WORKDIR=$2
shift 2

REPO_DIR=${VASA_REPO:-"$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"}
cd "$REPO_DIR"

# ---- Python environment ----
if [[ -n "${VASA_VENV:-}" ]]; then
  # shellcheck disable=SC1091
  source "$VASA_VENV/bin/activate"
elif [[ -f "$REPO_DIR/.venv/bin/activate" ]]; then
  # shellcheck disable=SC1091
  source "$REPO_DIR/.venv/bin/activate"
fi
PYTHON=${VASA_PYTHON:-python}
export PYTHONPATH="$REPO_DIR${PYTHONPATH:+:$PYTHONPATH}"  # configs/ imports `configs.common`
if [[ -n "${VASA_XLA_FLAGS:-}" ]]; then
  export XLA_FLAGS="${XLA_FLAGS:-} $VASA_XLA_FLAGS"
fi

# ---- Who am I: explicit VASA_* vars win, then the SLURM task variables set by srun ----
# On TPU VMs nothing is needed: jax.distributed.initialize() asks the TPU metadata server.
if [[ -z "${VASA_PROCESS_ID:-}" && -n "${SLURM_PROCID:-}" ]]; then
  export VASA_PROCESS_ID=$SLURM_PROCID
fi
if [[ -z "${VASA_NUM_PROCESSES:-}" && -n "${SLURM_NTASKS:-}" ]]; then
  export VASA_NUM_PROCESSES=$SLURM_NTASKS
fi
if [[ -n "${VASA_COORDINATOR:-}" ]]; then
  export JAX_COORDINATOR_ADDRESS=$VASA_COORDINATOR
fi
export VASA_DISTRIBUTED=1

echo "[run_host] $(hostname) process ${VASA_PROCESS_ID:-auto} of ${VASA_NUM_PROCESSES:-auto}," \
  "coordinator ${JAX_COORDINATOR_ADDRESS:-auto}: train $CONFIG -> $WORKDIR" >&2
exec "$PYTHON" -m vasa_jax train --config "$CONFIG" --workdir "$WORKDIR" --distributed "$@"
