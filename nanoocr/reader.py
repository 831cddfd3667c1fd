"""
Reader: a loaded model + tokenizer that turns page images into text. The one place prompts are
rendered for generation, so the OCR command, the web app and evaluation all read the same way.
"""

import time
from dataclasses import dataclass

import torch

from nanoocr.checkpoint import load_model
from nanoocr.common import pick_device
from nanoocr.engine import Engine
from nanoocr.image import collate_views, make_views, num_image_tokens
from nanoocr.prompts import prompt_text

# DeepSeek's repetition guard for long pages: ban a token that would repeat a 30-gram of the last 90 tokens
NGRAM_SIZE, NGRAM_WINDOW = 30, 90
TABLE_TOKENS = ("<td>", "</td>", "|", " |", "| ", "---", " ---")  # cell tokens may legitimately repeat


@dataclass
class Result:
    text: str
    tokens: int
    seconds: float


def unused_rows(tokenizer, vocab_rows):
    """Decoder rows that are no token of `tokenizer` (vocab padding, rows reserved for tokens it lacks):
    greedy decoding must never pick one, as there is nothing to decode it to."""
    return list(range(tokenizer.vocab_size, vocab_rows))


class Reader:
    def __init__(self, model, tokenizer, device="auto", mode="base", max_new_tokens=512, ngram_size=NGRAM_SIZE):
        self.device = pick_device(device)
        self.model = model.to(self.device).eval()
        self.tok = tokenizer
        self.mode = mode
        self.max_new_tokens = max_new_tokens
        self.ngram_size = ngram_size
        self.engine = Engine(self.model, device=self.device)
        self.stop = [tokenizer.special_id("<|assistant_end|>"), tokenizer.bos_id]
        ids = {i for t in TABLE_TOKENS for i in tokenizer.encode(t) if len(tokenizer.encode(t)) == 1}
        self.whitelist = sorted(ids)
        self.banned = [tokenizer.image_id] + unused_rows(tokenizer, self.model.config.gpt.vocab_size)

    @classmethod
    def from_dir(cls, model_dir, device="auto", **kw):
        model, tok, _ = load_model(model_dir, need_tokenizer=True)
        return cls(model, tok, device=device, **kw)

    def prompt_ids(self, image, prompt="free", ref=None, mode=None):
        n = num_image_tokens(image.width, image.height, mode or self.mode, self.model.config)
        messages = [{"role": "user", "content": prompt_text(prompt, ref)}]
        return self.tok.render_for_completion(messages, [n])

    @torch.no_grad()
    def read(self, images, prompt="free", ref=None, mode=None, max_new_tokens=None, temperature=0.0, stop=None):
        """Read a batch of page images (PIL) with one prompt; returns a Result per image, in order.
        stop(): asked after every generated step; True ends the reading there (the texts so far are returned)."""
        mode = mode or self.mode
        t0 = time.time()
        prompts = [self.prompt_ids(im, prompt, ref, mode) for im in images]
        views = collate_views([make_views(im, mode, self.model.config) for im in images])
        out = [[] for _ in images]
        for step in self.engine.generate_steps(
                prompts, views, max_new_tokens=max_new_tokens or self.max_new_tokens, stop_ids=self.stop,
                temperature=temperature, ngram_size=self.ngram_size, ngram_window=NGRAM_WINDOW,
                ngram_whitelist=self.whitelist, banned_ids=self.banned):
            for row, token in step:
                out[row].append(token)
            if stop is not None and stop():
                break
        dt = (time.time() - t0) / max(1, len(images))
        return [Result(self.tok.decode(ids), len(ids), dt) for ids in out]
