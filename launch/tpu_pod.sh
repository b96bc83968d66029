#!/usr/bin/env bash
# Train on a Cloud TPU pod slice (v4-32, v5e-64, ...): copy this checkout to every TPU VM worker,
# install it, then start the same `vasa-jax train ... --distributed` command on all workers
# (jax.distributed.initialize() finds the other workers through the TPU metadata server).
#
# Usage: launch/tpu_pod.sh [options] -- CONFIG WORKDIR [--config.key=value ...]
#   e.g. launch/tpu_pod.sh --name my-v4-32 --zone us-central2-b --project my-proj -- \
#            configs/latent.py:base gs://my-bucket/runs/latent --config.data.shards=/data/shards
# Options (or environment variables):
#   --name NAME        TPU VM name                      (TPU_NAME)
#   --zone ZONE        its zone                         (TPU_ZONE)
#   --project PROJECT  GCP project                      (TPU_PROJECT; default: gcloud's project)
#   --skip-copy        do not copy/install the code (already there from an earlier launch)
#   --skip-install     copy the code but do not pip install
#   --detach           run training under nohup (log: ~/vasa-train.log on each worker)
#   --remote-dir DIR   code directory on the workers    (VASA_REMOTE_DIR, default: vasa-jax)
#   --jax-spec SPEC    pip requirement for jax on TPU   (VASA_JAX_SPEC, default: jax[tpu])
#   --shared-path      WORKDIR is a local path that every worker shares (an NFS/Filestore or
#                      gcsfuse mount at the same place on all workers) instead of gs://
#   -h, --help         this message
# WORKDIR must be shared by all workers (each writes its own checkpoint shards into it): a gs://
# path, or a shared mount with --shared-path.
set -euo pipefail

usage() {
  # The header comment (without #SBATCH lines) is the usage text.
  awk 'NR == 1 || /^#SBATCH/ { next } /^#/ { sub(/^# ?/, ""); print; next } { exit }' \
    "${BASH_SOURCE[0]}" >&2
  exit "${1:-2}"
}
die() {
  echo "tpu_pod.sh: error: $*" >&2
  exit 1
}

NAME=${TPU_NAME:-}
ZONE=${TPU_ZONE:-}
PROJECT=${TPU_PROJECT:-}
REMOTE_DIR=${VASA_REMOTE_DIR:-vasa-jax}
JAX_SPEC=${VASA_JAX_SPEC:-jax[tpu]}
COPY=1
INSTALL=1
DETACH=0
SHARED_PATH=0
while [[ $# -gt 0 ]]; do
  case "$1" in
    --name) NAME=${2:?--name needs a value}; shift 2 ;;
    --zone) ZONE=${2:?--zone needs a value}; shift 2 ;;
    --project) PROJECT=${2:?--project needs a value}; shift 2 ;;
    --remote-dir) REMOTE_DIR=${2:?--remote-dir needs a value}; shift 2 ;;
    --jax-spec) JAX_SPEC=${2:?--jax-spec needs a value}; shift 2 ;;
    --skip-copy) COPY=0; INSTALL=0; shift ;;
    --skip-install) INSTALL=0; shift ;;
    --detach) DETACH=1; shift ;;
    --shared-path) SHARED_PATH=1; shift ;;
    -h|--help) usage 0 ;;
    --) shift; break ;;
    *) break ;;
  esac
done
if [[ $# -lt 2 ]]; then
  echo "tpu_pod.sh: error: CONFIG and WORKDIR are required" >&2
  usage
fi
CONFIG=$1
WORKDIR=$2
shift 2
[[ -n "$NAME" ]] || die "no TPU name: pass --name NAME or set TPU_NAME"
[[ -n "$ZONE" ]] || die "no zone: pass --zone ZONE or set TPU_ZONE"
if [[ "$WORKDIR" != gs://* ]] && (( ! SHARED_PATH )); then
  die "WORKDIR '$WORKDIR' must be a gs:// path shared by all workers (or a shared mount," \
    "with --shared-path)"
fi
command -v gcloud >/dev/null 2>&1 || die "gcloud not found; install the Google Cloud SDK"

REPO_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
GCLOUD_TPU=(gcloud compute tpus tpu-vm)
WHERE=(--zone "$ZONE" --worker=all)
if [[ -n "$PROJECT" ]]; then
  WHERE+=(--project "$PROJECT")
fi

# Runs one shell command line on every worker at once.
on_all_workers() {
  "${GCLOUD_TPU[@]}" ssh "$NAME" "${WHERE[@]}" --command "$1"
}

# ---- Copy the code (without venvs, runs and git history) ----
if (( COPY )); then
  TARBALL=$(mktemp -t vasa-jax-XXXXXX.tgz)
  trap 'rm -f "$TARBALL"' EXIT
  tar -czf "$TARBALL" -C "$REPO_DIR" --exclude=./.venv --exclude=./.git --exclude=./workdirs \
    --exclude='*.egg-info' --exclude='__pycache__' .
  echo "[tpu_pod] copying $(du -h "$TARBALL" | cut -f1) of code to all workers of $NAME" >&2
  "${GCLOUD_TPU[@]}" scp "$TARBALL" "$NAME:vasa-jax.tgz" "${WHERE[@]}"
  on_all_workers "set -e; rm -rf $REMOTE_DIR && mkdir -p $REMOTE_DIR && \
tar -xzf vasa-jax.tgz -C $REMOTE_DIR && rm vasa-jax.tgz"
fi

# ---- Install (one venv per worker) ----
if (( INSTALL )); then
  echo "[tpu_pod] installing on all workers" >&2
  on_all_workers "set -e; cd $REMOTE_DIR && python3 -m venv .venv && . .venv/bin/activate && \
pip install -q --upgrade pip && pip install -q -e . $(printf '%q' "$JAX_SPEC")"
fi

# ---- Train: the same command on every worker ----
REMOTE_CMD="cd $REMOTE_DIR && bash launch/run_host.sh $(printf '%q ' "$CONFIG" "$WORKDIR" "$@")"
if (( DETACH )); then
  REMOTE_CMD="nohup bash -c $(printf '%q' "$REMOTE_CMD") > \$HOME/vasa-train.log 2>&1 < /dev/null &"
fi
echo "[tpu_pod] starting on all workers: $REMOTE_CMD" >&2
on_all_workers "$REMOTE_CMD"
if (( DETACH )); then
  echo "[tpu_pod] started; follow it with: ${GCLOUD_TPU[*]} ssh $NAME ${WHERE[*]/--worker=all/--worker=0}" \
    "--command 'tail -f vasa-train.log'" >&2
fi
