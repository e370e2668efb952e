#!/usr/bin/env bash
# IJB-C (or IJB-B) 1:1 evaluation of an exported ONNX model (PLSC's eval_ijbc.sh, paths as
# variables). IMAGE_PATH is the IJB release folder holding meta/ and loose_crop/. Extra arguments
# are passed on to onnx_ijbc.py.
#
#   MODEL=./output/IResNet50.onnx IMAGE_PATH=/data/IJB_release/IJBC bash task/recognition/face/eval_ijbc.sh
#   TARGET=IJBB IMAGE_PATH=/data/IJB_release/IJBB bash .../eval_ijbc.sh
#   DRY_RUN=1 bash .../eval_ijbc.sh                                    # print the command only
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
MODEL=${MODEL:-./output/IResNet50.onnx}
IMAGE_PATH=${IMAGE_PATH:-./dataset/IJB_release/IJBC}
TARGET=${TARGET:-IJBC}
RESULT_DIR=${RESULT_DIR:-./output}
DRY_RUN=${DRY_RUN:-0}

COMMAND=(python "$HERE/onnx_ijbc.py"
         --model-root "$MODEL"
         --image-path "$IMAGE_PATH"
         --target "$TARGET"
         --result-dir "$RESULT_DIR"
         "$@")
if [ "$DRY_RUN" = 1 ]; then
  echo "${COMMAND[*]}"
else
  exec "${COMMAND[@]}"
fi
