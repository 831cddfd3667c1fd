#!/usr/bin/env bash
# The CPU speedrun: on a fresh machine, install, then train a DeepSeek-OCR-style model from scratch on
# synthetic documents and test it on text and fonts it never saw. Same architecture as the full model
# at the `cpu` preset.
#   data -> tokenizer -> Phase 1 -> Phase 2 (vision frozen, decoder + projector train with text mixed in)
#   -> held-out evaluation -> OCR a sample -> report.md
# Phase 1 recipe, and why (measurements in the report and in README "What limits accuracy"):
#   - SAM's trunk stays at its random init (a fixed random feature extractor): training it costs 2.7x the
#     time per step and, at the decoder's learning rate, collapses every image to the same features;
#   - compressor, CLIP, projector and decoder train; the vision parts at 0.3x the decoder's lr;
#   - a byte-level tokenizer (VOCAB=271 = 256 bytes + 15 specials): one token per character is what a decoder
#     from scratch learns to copy from vision tokens fastest.
# Artefacts: $NANOOCR_BASE_DIR/cpu-speedrun/ (default base ~/.cache/nanoocr): model/ (use as --model), report.md
# Every knob below can be overridden from the environment (the test suite runs a seconds-long version);
# NANOOCR_SKIP_INSTALL=1 uses the active Python environment as it is.
set -euo pipefail
cd "$(dirname "$0")/.."
T0=$(date +%s)
if [ -z "${NANOOCR_SKIP_INSTALL:-}" ]; then . runs/env.sh; fi

BASE="${NANOOCR_BASE_DIR:-$HOME/.cache/nanoocr}/cpu-speedrun"
PRESET="${PRESET:-cpu}"
VOCAB="${VOCAB:-271}"
P1_STEPS="${P1_STEPS:-1500}"
P2_STEPS="${P2_STEPS:-300}"
BATCH="${BATCH:-8}"
P1_TRAIN="${P1_TRAIN:-compressor,clip,projector,gpt}"
P1_LR="${P1_LR:-1e-3}"
GLYPH_WEIGHT="${GLYPH_WEIGHT:-1}"
DTYPE="${DTYPE:-bf16}"
VISION_LR_MULT="${VISION_LR_MULT:-0.3}"
P2_LR="${P2_LR:-5e-4}"
KINDS="${KINDS:-line:1,paragraph:2}"
EVAL_N="${EVAL_N:-100}"
WORKERS="${WORKERS:-1}"
EVAL_EVERY="${EVAL_EVERY:-500}"
mkdir -p "$BASE"
TIMES="$BASE/timings.tsv"
: > "$TIMES"
stage() { local name=$1; shift; local t=$(date +%s); echo "== $name"; "$@"; echo -e "$name\t$(( $(date +%s) - t ))" >> "$TIMES"; }

echo -e "install\t$(( $(date +%s) - T0 ))" >> "$TIMES"
stage data python -m nanoocr.cli synth --out "$BASE/data/heldout_line" --n "$EVAL_N" --split heldout --kinds line
stage data python -m nanoocr.cli synth --out "$BASE/data/heldout_paragraph" --n "$EVAL_N" --split heldout --kinds paragraph
stage data python -m nanoocr.cli synth --out "$BASE/data/heldout_random" --n "$EVAL_N" --split heldout --kinds line \
    --set text=random
stage data python -m nanoocr.cli synth --out "$BASE/data/text_chat.jsonl" --text-chat 2000
stage tokenizer python -m scripts.tok_train --vocab-size "$VOCAB" --out "$BASE/tokenizer"
stage phase1 python -m scripts.vis_tok_train --preset "$PRESET" --tokenizer "$BASE/tokenizer" --train "$P1_TRAIN" \
    --data synth --synth-kinds "$KINDS" --steps "$P1_STEPS" --batch-size "$BATCH" --lr "$P1_LR" \
    --vision-lr-mult "$VISION_LR_MULT" --glyph-weight "$GLYPH_WEIGHT" --dtype "$DTYPE" \
    --workers "$WORKERS" --eval-every "$EVAL_EVERY" --save-every "$EVAL_EVERY" --out "$BASE/phase1"
stage phase2 python -m scripts.vis_mid_train --model "$BASE/phase1/model" \
    --resume-from-deepencoder "$BASE/phase1/deepencoder.safetensors" --data synth --synth-kinds "$KINDS" \
    --text-data "$BASE/data/text_chat.jsonl" --text-ratio 0.1 --steps "$P2_STEPS" --batch-size "$BATCH" \
    --lr "$P2_LR" --dtype "$DTYPE" --workers "$WORKERS" --eval-every "$EVAL_EVERY" --save-every "$EVAL_EVERY" --out "$BASE/phase2"
rm -rf "$BASE/model" && cp -r "$BASE/phase2/model" "$BASE/model"
COMPARE=()
if command -v tesseract >/dev/null 2>&1; then COMPARE=(--compare tesseract); fi  # Debian: tesseract-ocr
stage eval python -m nanoocr.cli eval --model "$BASE/model" --data "$BASE/data/heldout_line/manifest.jsonl" \
    "$BASE/data/heldout_paragraph/manifest.jsonl" "$BASE/data/heldout_random/manifest.jsonl" --out "$BASE/eval" \
    "${COMPARE[@]}"
stage ocr python -m nanoocr.cli ocr "$BASE/data/heldout_paragraph/images/000000.png" --model "$BASE/model" \
    --prompt free --format txt --out "$BASE/ocr"
cat "$BASE/ocr/000000.txt"
python -m scripts.speedrun_report --base "$BASE" --total-seconds $(( $(date +%s) - T0 ))
echo "report: $BASE/report.md"
