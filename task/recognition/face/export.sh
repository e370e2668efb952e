#!/usr/bin/env bash
# Export a trained backbone to ONNX (PLSC's export.sh, paths as variables): FP16 off and NCHW
# layout for the exported graph; writes OUTPUT_DIR/<Model.name>.onnx and checks it against Paddle.
# Extra arguments are passed on to plsc-export.
#
#   bash task/recognition/face/export.sh                                       # IResNet50, ./output/IResNet50/best_model
#   CONFIG=configs/FaceViT_tiny_...yaml PRETRAINED=./output/FaceViT_tiny_patch9_112/latest bash .../export.sh
#   DRY_RUN=1 bash .../export.sh                                               # print the command only
set -euo pipefail

REPO_ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../../.." && pwd)
CONFIG=${CONFIG:-$REPO_ROOT/configs/IResNet50_MS1MV3_ArcFace_pfc10_1n8c_dp_mp_fp16o1.yaml}
OUTPUT_DIR=${OUTPUT_DIR:-./output}
DRY_RUN=${DRY_RUN:-0}

if [ -z "${PRETRAINED:-}" ]; then
  # Default: the best checkpoint of the config's model under OUTPUT_DIR.
  MODEL_NAME=$(python -c 'import sys, yaml; print(yaml.safe_load(open(sys.argv[1]))["Model"]["name"])' "$CONFIG")
  PRETRAINED=$OUTPUT_DIR/$MODEL_NAME/best_model
fi

if command -v plsc-export >/dev/null 2>&1; then
  EXPORT=(plsc-export)
else
  EXPORT=(python "$REPO_ROOT/tools/export.py")
fi

COMMAND=("${EXPORT[@]}" -c "$CONFIG"
         -o Global.pretrained_model="$PRETRAINED"
         -o Global.output_dir="$OUTPUT_DIR"
         -o FP16.level=O0
         -o Model.data_format=NCHW
         "$@")
if [ "$DRY_RUN" = 1 ]; then
  echo "${COMMAND[*]}"
else
  exec "${COMMAND[@]}"
fi
