"""
Phase 2, fine-tuning: the DeepEncoder trained in Phase 1 (SAM, compressor, CLIP) is frozen; the
projector and the decoder train, with text-only chat mixed in so the decoder keeps its language.

  python -m scripts.vis_mid_train --model runs/p1/model --resume-from-deepencoder runs/p1/deepencoder.safetensors \
      --text-data chat.jsonl --text-ratio 0.3 --out runs/p2
--model gives the config, tokenizer and decoder to start from (Phase 1's output, or a folder from
`nanoocr import-weights` holding a nanochat decoder); --fresh-decoder re-initialises the decoder
instead, as DeepSeek-OCR does when it pairs a trained DeepEncoder with a new language model.
"""

import argparse

import torch

from nanoocr import checkpoint as ck
from nanoocr.common import setup_dist
from nanoocr.train import add_args, run_phase

parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
parser.add_argument("--model", required=True, help="model folder: config, tokenizer and decoder weights")
parser.add_argument("--resume-from-deepencoder", required=True, help="Phase 1's deepencoder.safetensors")
parser.add_argument("--fresh-decoder", action="store_true", help="re-initialise the decoder")
add_args(parser, train="finetune", lr=2e-5, steps=1000, batch_size=8, text_ratio=0.3)

if __name__ == "__main__":
    args = parser.parse_args()
    d = setup_dist(args.device)
    model, tok, _ = ck.load_model(args.model, need_tokenizer=True)
    ck.load_deepencoder(model, args.resume_from_deepencoder)
    if args.fresh_decoder:
        torch.manual_seed(args.seed)
        model.gpt.init_weights()
    run_phase(args, model, tok, "phase2", d)
