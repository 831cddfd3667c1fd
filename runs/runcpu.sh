#!/usr/bin/env bash
# The CPU speedrun: on a fresh machine, install, then train a DeepSeek-OCR-style model from scratch on
# synthetic documents and test it on text and fonts it never saw. Same architecture as the full model
# at the `cpu` preset.
#   data -> tokenizer -> Phase 0 (glyph warm-up) -> Phase 1 -> Phase 2 (vision frozen, decoder + projector train
#   with text mixed in) -> held-out evaluation -> OCR a sample -> report.md
# It is sized by wall clock, not by steps: each phase runs what fits in its share of MINUTES on this machine.
# The recipe, and why (experiments and numbers: dev/LOG.md):
#   - the `cpu` preset's vision path has a conv stem and a normalised compressor (nonlinear below CLIP):
#     SAM's linear patch conv + plain compressor trained from scratch never learned to see glyphs;
#   - Phase 0, a glyph warm-up: the encoder alone learns to name the characters in each vision token's cell, left
#     to right (labels from the generator, read through the decoder's head), ~3x cheaper a sample than the full
#     model; the fresh model's head is drawn at std 0.02, not zero (a zero head halved the probe's speed);
#     it gets 25 % of the training time (35 and 45 % gave the encoder more glyphs but the decoder fewer steps to learn
#     to use them: random CER 25-27 % at 35 %, 22-25 % at 25 %; dev/LOG.md sections 6, 7). It draws
#     paragraphs of 5-8 lines, 70 % of them random characters (P0_KINDS, P0_SYNTH_SET): a view full of text has
#     ~2x the glyph labels of the usual mix at the same cost, and random text shows the rare glyphs; 400 steps
#     then name 77.5 % of held-out random characters instead of 61 % (dev/LOG.md section 7);
#   - Muon (MATRIX_LR) for every weight matrix and conv filter, AdamW for embeddings, the head, norms and biases:
#     the glyph probe learned ~2x faster per step than with AdamW alone, and the speedrun's line CER went from 27 %
#     to 12 % (dev/LOG.md section 6);
#   - Phase 1, everything trains, the encoder at 0.3x the lr (VISION_LR_MULT: at 1x it unlearnt glyphs, 77 -> 74 %,
#     and line CER was 11.6 % instead of 10.3 %; frozen SAM + compressor, as in DeepSeek's second stage, fit 17 %
#     more steps but read lines worse, 13.3 %), with two aids from the synthetic data: the glyph loss (P1_GLYPH_WEIGHT 3:
#     at 1, the first 250 steps cost the encoder 5 points of the glyphs it named, at 3 only 2), and an
#     alignment loss telling one attention head per layer (layers 0-1) which vision token holds the character read:
#     a decoder from scratch, even fed perfect glyphs, did not learn to find them in the 2D layout by itself;
#   - half of Phase 1 and 2 samples are single lines and half paragraphs of 3-8 lines (the held-out ones have 3-6),
#     and 45 % of each are random characters (no language to guess from: only reading helps). With a third lines
#     and 40 % random, random CER stayed at 21-22 % (two runs); lines are cheaper steps (~10 % more fit) and
#     paragraphs had slack. Fresh clones, line / paragraph / random CER: 8.3 / 12.2 / 21.9 % (a third lines, 40 %),
#     10.5 / 17.4 / 17.8 % (half, 50 %: lines missed); half, 45 %, three runs: 7.5 / 13.3 / 15.0, 9.4 / 12.1 / 17.8
#     and 9.9 / 17.1 / 18.6 % (dev/LOG.md section 9);
#   - Phase 2 as DeepSeek's: vision frozen, projector + decoder train, text-only chat mixed in; at a tenth of Phase 1's
#     lr (P2_LR, P2_MATRIX_LR): restarting at half of it undid Phase 1's finish (line CER 9.2 -> 11.4 %, paragraph
#     13.1 -> 16.3 %); at a tenth they stay where Phase 1 left them (9.2 / 13.6 %) and bits per byte on prose
#     still fall, 5.8 -> 3.3;
#   - bf16 autocast on CPU (1.5x the steps of fp32 here, same loss); a byte-level tokenizer (VOCAB=271 = 256
#     bytes + 15 specials): one token per character is what a decoder from scratch learns to copy fastest.
# Artefacts: $NANOOCR_BASE_DIR/cpu-speedrun/ (default base ~/.cache/nanoocr): model/ (use as --model), report.md
# Every knob below can be overridden from the environment (the test suite runs a seconds-long version);
# NANOOCR_SKIP_INSTALL=1 uses the active Python environment as it is.
set -euo pipefail
cd "$(dirname "$0")/.."
T0=$(date +%s)
if [ -z "${NANOOCR_SKIP_INSTALL:-}" ]; then
    . runs/env.sh
    # tesseract is the yardstick the eval prints beside our model (optional: the eval says so when missing)
    if ! command -v tesseract >/dev/null 2>&1 && command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
        (apt-get update -qq && apt-get install -y -qq tesseract-ocr >/dev/null) || echo "tesseract not installed"
    fi
fi

BASE="${NANOOCR_BASE_DIR:-$HOME/.cache/nanoocr}/cpu-speedrun"
PRESET="${PRESET:-cpu}"
VOCAB="${VOCAB:-271}"
# the run is sized by wall clock: after the install, what is left of MINUTES (less EVAL_RESERVE seconds for the
# evaluation and the phases' start-up) goes P0_SHARE / P1_SHARE / P2_SHARE % to Phase 0 / 1 / 2, and each phase
# runs the steps that fit in its share on this machine (--time-budget), at most *_STEPS. MINUTES=0: the *_STEPS.
MINUTES="${MINUTES:-30}"
EVAL_RESERVE="${EVAL_RESERVE:-170}"
P0_SHARE="${P0_SHARE:-25}"
P1_SHARE="${P1_SHARE:-69}"
P2_SHARE="${P2_SHARE:-6}"
P0_STEPS="${P0_STEPS:-3000}"
P0_BATCH="${P0_BATCH:-16}"
P0_LR="${P0_LR:-2e-3}"
P0_KINDS="${P0_KINDS:-paragraph:1}"
P0_SYNTH_SET="${P0_SYNTH_SET:-random_text=0.7 paragraph_lines=5,8}"
P1_STEPS="${P1_STEPS:-10000}"
P2_STEPS="${P2_STEPS:-1000}"
BATCH="${BATCH:-8}"
P1_TRAIN="${P1_TRAIN:-all}"
P1_LR="${P1_LR:-1e-3}"
MATRIX_LR="${MATRIX_LR:-0.02}"
P2_MATRIX_LR="${P2_MATRIX_LR:-0.002}"
P1_GLYPH_WEIGHT="${P1_GLYPH_WEIGHT:-3}"
P2_GLYPH_WEIGHT="${P2_GLYPH_WEIGHT:-1}"
ALIGN_WEIGHT="${ALIGN_WEIGHT:-1}"
SYNTH_SET="${SYNTH_SET:-random_text=0.45 paragraph_lines=3,8}"
DTYPE="${DTYPE:-bf16}"
VISION_LR_MULT="${VISION_LR_MULT:-0.3}"
P2_LR="${P2_LR:-1e-4}"
KINDS="${KINDS:-line:1,paragraph:1}"
EVAL_N="${EVAL_N:-100}"
WORKERS="${WORKERS:-1}"
EVAL_EVERY="${EVAL_EVERY:-500}"
mkdir -p "$BASE"
TIMES="$BASE/timings.tsv"
: > "$TIMES"
stage() { local name=$1; shift; local t=$(date +%s); echo "== $name"; "$@"; echo -e "$name\t$(( $(date +%s) - t ))" >> "$TIMES"; }

echo -e "install\t$(( $(date +%s) - T0 ))" >> "$TIMES"
LEFT=$(( MINUTES * 60 - ($(date +%s) - T0) - EVAL_RESERVE ))
budget() { [ "$MINUTES" -gt 0 ] && echo "--time-budget $(( LEFT * $1 / 100 ))" || true; }
stage data python -m nanoocr.cli synth --out "$BASE/data/heldout_line" --n "$EVAL_N" --split heldout --kinds line
stage data python -m nanoocr.cli synth --out "$BASE/data/heldout_paragraph" --n "$EVAL_N" --split heldout --kinds paragraph
stage data python -m nanoocr.cli synth --out "$BASE/data/heldout_random" --n "$EVAL_N" --split heldout --kinds line \
    --set text=random
stage data python -m nanoocr.cli synth --out "$BASE/data/text_chat.jsonl" --text-chat 2000
stage tokenizer python -m scripts.tok_train --vocab-size "$VOCAB" --out "$BASE/tokenizer"
stage phase0 python -m scripts.vis_tok_train --preset "$PRESET" --tokenizer "$BASE/tokenizer" --train all \
    --data synth --synth-kinds "$P0_KINDS" --synth-set $P0_SYNTH_SET --steps "$P0_STEPS" --batch-size "$P0_BATCH" \
    --lr "$P0_LR" --matrix-lr "$MATRIX_LR" $(budget "$P0_SHARE") --head-init 0.02 --glyph-weight 1 --glyph-only --dtype "$DTYPE" --val-data "" \
    --workers "$WORKERS" --save-every "$EVAL_EVERY" --out "$BASE/phase0"
stage phase1 python -m scripts.vis_tok_train --model "$BASE/phase0/model" --train "$P1_TRAIN" \
    --data synth --synth-kinds "$KINDS" --synth-set $SYNTH_SET --steps "$P1_STEPS" --batch-size "$BATCH" \
    --lr "$P1_LR" --matrix-lr "$MATRIX_LR" $(budget "$P1_SHARE") --vision-lr-mult "$VISION_LR_MULT" --glyph-weight "$P1_GLYPH_WEIGHT" --align-weight "$ALIGN_WEIGHT" \
    --dtype "$DTYPE" --workers "$WORKERS" --eval-every "$EVAL_EVERY" --save-every "$EVAL_EVERY" --out "$BASE/phase1"
stage phase2 python -m scripts.vis_mid_train --model "$BASE/phase1/model" \
    --resume-from-deepencoder "$BASE/phase1/deepencoder.safetensors" --data synth --synth-kinds "$KINDS" \
    --synth-set $SYNTH_SET --text-data "$BASE/data/text_chat.jsonl" --text-ratio 0.1 --steps "$P2_STEPS" \
    --batch-size "$BATCH" --lr "$P2_LR" --matrix-lr "$P2_MATRIX_LR" $(budget "$P2_SHARE") --glyph-weight "$P2_GLYPH_WEIGHT" --align-weight "$ALIGN_WEIGHT" \
    --dtype "$DTYPE" --workers "$WORKERS" --eval-every "$EVAL_EVERY" --save-every "$EVAL_EVERY" --out "$BASE/phase2"
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
