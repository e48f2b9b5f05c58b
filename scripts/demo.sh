#!/usr/bin/env bash
# make demo: the smallest real end-to-end run, offline. Real data (scikit-learn's handwritten
# digits), a real backbone architecture (MobileNetV2; random weights until the pretrained
# backbone lands), a gated SavedModel published as version 1, and predictions from it.
set -euo pipefail
OUT=${1:-out/demo}
BIN=${BIN:-.venv/bin}
BACKBONE=${BACKBONE:-mobilenet_v2}
DATA=${DATA:-}
mkdir -p "$OUT"
if [ -z "$DATA" ]; then
  DATA="$OUT/digits"
  "$BIN/xfer-sample-data" digits "$DATA" >/dev/null
fi
BASE="$OUT/models/digits"
echo "== export: train a head on $DATA and publish a version under $BASE"
"$BIN/xfer-export" --data "$DATA" --backbone "$BACKBONE" --weights none --image-size 96 \
  --alpha 0.35 --head mlp --epochs 60 --learning-rate 0.003 --model-name digits --model-base-path "$BASE" \
  --run-dir "$OUT/run" | tee "$OUT/export.json"
VERSION_DIR="$BASE/$(ls "$BASE" | grep -E '^[0-9]+$' | sort -n | tail -1)"
echo "== predict: three images with the published version ($VERSION_DIR)"
mapfile -t SAMPLES < <(find "$DATA" -name '*.png' | sort | awk 'NR % 600 == 1')
"$BIN/xfer-predict" --model-dir "$BASE" --top-k 3 "${SAMPLES[@]}" | tee "$OUT/predictions.txt"
cat <<LIST

== outputs in $OUT
  digits/               the dataset: one PNG folder per class (from scikit-learn)
  run/                  training run: config.json, metrics.json, history.csv, curves.png
  models/digits/<N>/    the published SavedModel version(s), ready for TF Serving
  export.json           what was published: version, gate parity, accuracy per split
  predictions.txt       top-3 labels for a few images, from the published model
LIST
