"""
Train the BPE tokenizer (rustbpe) on a text corpus and save it in our non-pickle format.

  python -m scripts.tok_train --vocab-size 1024 --out tok/                   # the built-in corpus
  python -m scripts.tok_train --corpus data.txt more.jsonl --vocab-size 65536 --out tok/
A .jsonl corpus contributes its "text" fields and the contents of its "messages".
"""

import argparse
import json
import time
from pathlib import Path

parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
parser.add_argument("--corpus", nargs="*", default=[], help="text/JSONL files; default: the synthetic corpus")
parser.add_argument("--vocab-size", type=int, default=1024)
parser.add_argument("--max-chars", type=int, default=50_000_000, help="stop reading the corpus after this many")
parser.add_argument("--out", required=True)


def corpus_texts(paths, max_chars):
    if not paths:
        from nanoocr.synth import corpus
        yield from corpus()["train"].paragraphs
        return
    seen = 0
    for path in paths:
        for line in Path(path).read_text(encoding="utf-8").splitlines():
            if path.endswith(".jsonl"):
                row = json.loads(line) if line.strip() else {}
                texts = [row.get("text", "")] + [m.get("content", "") for m in row.get("messages", [])]
                line = "\n".join(t for t in texts if t)
            seen += len(line)
            yield line
            if seen >= max_chars:
                return


if __name__ == "__main__":
    from nanoocr.tokenizer import Tokenizer
    args = parser.parse_args()
    t0 = time.time()
    tok = Tokenizer.train(corpus_texts(args.corpus, args.max_chars), args.vocab_size)
    tok.save(args.out)
    sample = "The quick brown fox jumps over the lazy dog. 1234.56"
    ids = tok.encode(sample)
    print(f"tokenizer: vocab {tok.vocab_size} in {time.time() - t0:.1f}s -> {args.out}; "
          f"{len(sample) / len(ids):.2f} chars/token on a sample")
