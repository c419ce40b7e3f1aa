#!/usr/bin/env bash
# The paper's recipe on MER2025-SEMI (Xie et al., MRAC'25): HuBERT-large (Chinese), CLIP ViT-L/14 on
# face crops, Chinese RoBERTa-wwm-ext-large, py-feat AUs, Gemini knowledge -> MoE -> pseudo-labels ->
# stage 2 -> reliance vote + the paper's rules. Weights must be downloaded beforehand (hub ids work
# where the hub is reachable; local folders work everywhere). Needs GEMINI_API_KEY for the vlm step.
# Usage: examples/mer2025.sh MER2025_DIR [OUT_DIR]
set -euo pipefail
MER=${1:?usage: examples/mer2025.sh MER2025_DIR [OUT_DIR]}
OUT=${2:-mer2025-out}
TEXT_MODEL=${TEXT_MODEL:-hfl/chinese-roberta-wwm-ext-large}
PYFEAT_WEIGHTS=${MOE_PYFEAT_WEIGHTS:-$HOME/pyfeat-weights}
FEATS="hf-audio:model=${AUDIO_MODEL:-TencentGameMate/chinese-hubert-large}"
FEATS="$FEATS,hf-image:model=${IMAGE_MODEL:-openai/clip-vit-large-patch14},crop=face"
FEATS="$FEATS,hf-text:model=$TEXT_MODEL"
FEATS="$FEATS,face-au:backend=pyfeat,weights=$PYFEAT_WEIGHTS"
FEATS="$FEATS,vlm:provider=gemini,model=${GEMINI_MODEL:-gemini-2.5-flash}"
FEATS="$FEATS,vlm-text:model=$TEXT_MODEL"

python cli.py extract "$MER/video" --cache "$OUT/cache" --features "$FEATS" \
    --transcripts "$MER/subtitle_chieng.csv" --text-column chinese --jobs "${JOBS:-4}" --device auto
python cli.py cache info --cache "$OUT/cache"
python cli.py export-annotator --cache "$OUT/cache" --out "$OUT/gemini.jsonl"
COMMON=(--cache "$OUT/cache" --labels "$MER/track2_train_labels.csv"
        --features hf-audio,hf-image,hf-text,face-au,vlm-text --seeds 0,1,2 --folds 5)
python cli.py fit "${COMMON[@]}" --out "$OUT/runs/stage1"
python cli.py pseudo-label "$OUT/runs/stage1" --cache "$OUT/cache" --annotator "$OUT/gemini.jsonl" \
    --out "$OUT/pseudo.csv" --min-confidence 0.6
python cli.py fit "${COMMON[@]}" --pseudo "$OUT/pseudo.csv" --stage2 joint --out "$OUT/runs/stage2"
python cli.py ensemble "$OUT/runs/stage1" "$OUT/runs/stage2" --rules mer2025 --annotator "$OUT/gemini.jsonl" \
    --ids "$MER/candidates.csv" --out "$OUT/submission.csv"
