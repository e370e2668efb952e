#!/usr/bin/env bash
# Train a face model with plsc (PLSC's train.sh, paths and devices as variables).
# Run it from the folder that holds ./dataset (the configs' paths are relative to it); extra
# arguments are passed on to plsc-train, e.g. -o Global.epochs=1.
#
#   bash task/recognition/face/train.sh                          # 1 node, GPUs 0-7
#   CONFIG=configs/IResNet100_WebFace42M_CosFace_pfc02_1n8c_dp_mp_fp16o1.yaml DEVICES=0,1,2,3 bash .../train.sh
#   NNODES=2 MASTER=10.0.0.1:8090 bash .../train.sh              # the same command on every node
#   NPROC_CPU=2 bash .../train.sh -o Model.class_num=100 ...     # no GPU: 2 CPU processes (gloo)
#   DRY_RUN=1 bash .../train.sh                                  # print the command only
set -euo pipefail

REPO_ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../../.." && pwd)
CONFIG=${CONFIG:-$REPO_ROOT/configs/IResNet50_MS1MV3_ArcFace_pfc10_1n8c_dp_mp_fp16o1.yaml}
DEVICES=${DEVICES:-0,1,2,3,4,5,6,7}
NNODES=${NNODES:-1}
MASTER=${MASTER:-}
NPROC_CPU=${NPROC_CPU:-0}
DRY_RUN=${DRY_RUN:-0}

# The installed console script, or the run-from-source wrapper in a plain checkout.
if command -v plsc-train >/dev/null 2>&1; then
  TRAIN=(plsc-train)
else
  TRAIN=("$REPO_ROOT/tools/train.py")
fi

LAUNCH=(python -m paddle.distributed.launch)
EXTRA=()
if [ "$NPROC_CPU" -gt 0 ]; then
  LAUNCH+=(--nproc_per_node="$NPROC_CPU")
  EXTRA+=(-o Global.device=cpu)
else
  LAUNCH+=(--devices="$DEVICES")
  if [ "$NNODES" -gt 1 ]; then
    if [ -z "$MASTER" ]; then
      echo "train.sh: NNODES=$NNODES needs MASTER=IP:PORT (the same on every node)" >&2
      exit 2
    fi
    LAUNCH+=(--nnodes "$NNODES" --master "$MASTER")
  fi
fi

COMMAND=("${LAUNCH[@]}" "${TRAIN[@]}" -c "$CONFIG" ${EXTRA[@]+"${EXTRA[@]}"} "$@")
if [ "$DRY_RUN" = 1 ]; then
  echo "${COMMAND[*]}"
else
  exec "${COMMAND[@]}"
fi
