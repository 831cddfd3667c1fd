"""
Engine: batched generation for NanoDeepseekOCR. Images are encoded once, the left-padded prompts go
through one prefill into a KV cache, then every step feeds one token per row; rows that stop leave the
batch. Tokenizer-free: prompts come in as ids (with their <|image|> runs expanded), ids come out.
"""

from dataclasses import dataclass

import torch

from nanoocr import common
from nanoocr.gpt import KVCache

PAD_ID = 0  # fills the left padding; those positions are masked out, so the id never matters


def ngram_ban_mask(history, lengths, n, window, vocab_size, whitelist=()):
    """DeepSeek's no-repeat guard: (B, V) bool, True for every token that would complete an n-gram
    already present in the last `window` tokens of its row. history (B, L): row b's tokens are
    history[b, :lengths[b]] (lengths: (B,) or an int for all rows). Whitelisted ids are never banned.
    n = 1 bans every token of the window (DeepSeek's own code bans nothing there, by a slicing quirk)."""
    B, L = history.shape
    dev = history.device
    mask = torch.zeros(B, vocab_size + 1, dtype=torch.bool, device=dev)  # column V: sink for non-matches
    if n <= 0 or L < n:
        return mask[:, :vocab_size]
    if isinstance(lengths, int):  # torch.full, not as_tensor: a host->device copy would sync on CUDA
        lengths = torch.full((B,), lengths, device=dev)
    lengths = lengths.to(dev)[:, None]  # (B, 1)
    grams = history.unfold(1, n, 1)  # (B, W, n): gram i = history[:, i:i+n], W = L - n + 1
    start = torch.arange(grams.shape[1], device=dev)[None]  # (1, W)
    # a gram counts when it is complete before the row's end and starts inside the window
    ok = (start + n <= lengths) & (start >= lengths - window)  # (B, W)
    if n > 1:
        # the row's last n-1 tokens; rows shorter than that have no complete gram, so clamping is harmless
        at = (lengths - (n - 1) + torch.arange(n - 1, device=dev)).clamp_(min=0)  # (B, n-1)
        prefix = history.gather(1, at)
        ok &= (grams[..., :-1] == prefix[:, None]).all(-1)
    banned = torch.where(ok, grams[..., -1], vocab_size)  # (B, W)
    mask.scatter_(1, banned, True)
    mask = mask[:, :vocab_size]
    if len(whitelist):
        mask[:, torch.as_tensor(whitelist, device=dev)] = False
    return mask


def _new_cache(gpt, batch, max_len, device, dtype, pad):
    c = gpt.config
    pad = torch.tensor(pad, device=device) if any(pad) else None  # None: no mask, plain causal attention
    return KVCache(batch, c.n_layer, c.n_kv_head, c.n_embd // c.n_head, max_len, device, dtype, pad=pad)


class _Cached:
    """Prefill once into a KV cache, then one token per row per step."""

    def __init__(self, gpt, ids, embeds, pad, n_new, dtype):
        B, T, _ = embeds.shape
        # the last sampled token is never fed back, hence n_new - 1
        self.cache = _new_cache(gpt, B, T + n_new - 1, embeds.device, dtype, pad)
        self.gpt, self.ids, self.embeds = gpt, ids, embeds

    def first(self):
        logits = self.gpt(self.ids, embeds=self.embeds, kv_cache=self.cache)[:, -1]  # (B, V)
        self.ids = self.embeds = None
        return logits

    def next(self, tok):
        return self.gpt(tok[:, None], kv_cache=self.cache)[:, -1]

    def select(self, rows, keep):
        self.cache.select(rows)


class _Uncached:
    """The reference: the whole sequence goes through the model again at every step."""

    def __init__(self, gpt, ids, embeds, pad, n_new, dtype):
        self.gpt, self.ids, self.embeds, self.pad, self.dtype = gpt, ids, embeds, pad, dtype
        self.gen = torch.zeros(embeds.shape[0], 0, dtype=torch.long, device=embeds.device)  # (B, t)

    def _run(self):
        x = torch.cat([self.embeds, self.gpt.transformer.wte(self.gen)], 1)  # (B, T + t, D)
        ids = torch.cat([self.ids, self.gen], 1)
        cache = None
        if any(self.pad):  # a throwaway cache, only to carry the padding mask and positions
            cache = _new_cache(self.gpt, x.shape[0], x.shape[1], x.device, self.dtype, self.pad)
        return self.gpt(ids, embeds=x, kv_cache=cache)[:, -1]

    def first(self):
        return self._run()

    def next(self, tok):
        self.gen = torch.cat([self.gen, tok[:, None]], 1)
        return self._run()

    def select(self, rows, keep):
        self.ids, self.embeds, self.gen = self.ids[rows], self.embeds[rows], self.gen[rows]
        self.pad = [self.pad[j] for j in keep]


class Engine:
    def __init__(self, model, device=None, autocast_dtype=None):
        self.device = torch.device(device) if device is not None else next(model.parameters()).device
        self.model = model.to(self.device)
        # None: the device's default (bf16 on CUDA, fp32 on CPU); afterwards None means no autocast
        self.autocast_dtype = common.autocast_dtype(self.device, "auto" if autocast_dtype is None else autocast_dtype)

    def _autocast(self):
        return common.autocast_ctx(self.device.type, self.autocast_dtype)

    def _prompt_embeds(self, prompts, views):
        """Left-padded prompts -> the decoder's ids (B, T) (-1 at vision tokens), the merged input
        embeddings (B, T, D) and the per-row padding."""
        if any(len(p) == 0 for p in prompts):
            raise ValueError("empty prompt")
        T = max(len(p) for p in prompts)
        pad = [T - len(p) for p in prompts]
        idx = torch.tensor([[PAD_ID] * q + list(p) for q, p in zip(pad, prompts)], dtype=torch.long)
        idx = idx.to(self.device, non_blocking=True)
        vision = None
        if views is not None:
            if self.model.image_token_id is None:
                raise ValueError("images given but model.image_token_id is not set")
            dtype = next(self.model.parameters()).dtype
            vision = self.model.encode_images(views.to(self.device, dtype))  # the one vision pass
        return self.model.decoder_ids(idx, vision), self.model.embed(idx, vision), pad

    def generate(self, prompts, views=None, max_new_tokens=256, **kw):
        """All of generate_steps at once: B lists of generated ids, stop token excluded, in input order."""
        out = [[] for _ in prompts]
        for step in self.generate_steps(prompts, views, max_new_tokens, **kw):
            for row, token in step:
                out[row].append(token)
        return out

    def generate_steps(self, prompts, views=None, max_new_tokens=256, stop_ids=(), use_cache=True, **sampling):
        """prompts: B lists of ids with the <|image|> runs expanded; views: the images of all rows in row
        order (None: text only); sampling: the Sampling fields. Yields, each step, the [(row, id), ...] of
        the tokens that step added (a row's stop token is not added; that row then leaves the batch).
        A caller stops generation by breaking out of its loop, as with nanochat's engine."""
        sampling = Sampling(**sampling)
        if not prompts or max_new_tokens <= 0:
            return
        T = max(len(p) for p in prompts)
        if T + max_new_tokens - 1 > self.model.gpt.cos.shape[0]:
            raise ValueError(f"{T} prompt + {max_new_tokens} new tokens exceed the model's "
                             f"{self.model.gpt.cos.shape[0]} rotary positions")
        yield from self._steps(prompts, views, max_new_tokens, set(stop_ids), use_cache, sampling)

    @torch.inference_mode()
    def _steps(self, prompts, views, max_new_tokens, stop, use_cache, sampling):
        dev = self.device
        pick = sampling.picker(len(prompts), max_new_tokens, dev)
        active = list(range(len(prompts)))  # batch position -> input row
        with self._autocast():  # entered per step: the caller's code between steps runs without it
            ids, embeds, pad = self._prompt_embeds(prompts, views)
            dtype = self.autocast_dtype or embeds.dtype
            runner = (_Cached if use_cache else _Uncached)(self.model.gpt, ids, embeds, pad, max_new_tokens, dtype)
            logits = runner.first()  # (B, V)
        for t in range(max_new_tokens):
            with self._autocast():
                tok = pick(logits, t)  # (B,)
            ids = tok.tolist()  # the one host sync per step
            keep = [j for j, i in enumerate(ids) if i not in stop] if t + 1 < max_new_tokens else []
            yield [(active[j], i) for j, i in enumerate(ids) if i not in stop]
            if not keep:
                return
            if len(keep) < len(active):  # finished rows leave the batch
                rows = torch.tensor(keep, device=dev)
                active = [active[j] for j in keep]
                tok = tok[rows]
                pick.select(rows)
                runner.select(rows, keep)
            with self._autocast():
                logits = runner.next(tok)


@dataclass
class Sampling:
    """How the next token is chosen: greedy at temperature 0, else a draw from the top_k (seeded when
    seed is given); banned_ids are never chosen, nor (ngram_size > 0) a token that would repeat an
    n-gram of the last ngram_window tokens of its row, unless it is in ngram_whitelist."""
    temperature: float = 0.0
    top_k: int = None
    seed: int = None
    ngram_size: int = 0
    ngram_window: int = 90
    ngram_whitelist: tuple = ()
    banned_ids: tuple = ()

    def picker(self, batch, max_new_tokens, device):
        return _Picker(self, batch, max_new_tokens, device)


class _Picker:
    """Sampling applied step by step: it keeps each live row's generated ids for the n-gram guard."""

    def __init__(self, s, batch, max_new_tokens, dev):
        self.s = s
        self.banned = torch.tensor(sorted(set(s.banned_ids)), dtype=torch.long, device=dev)
        self.whitelist = torch.tensor(sorted(set(s.ngram_whitelist)), dtype=torch.long, device=dev)
        self.gen = torch.Generator(device=dev).manual_seed(s.seed) if s.seed is not None else None
        # all live rows have the same length t
        self.hist = torch.zeros(batch, max_new_tokens, dtype=torch.long, device=dev) if s.ngram_size > 0 else None

    def __call__(self, logits, t):
        s = self.s
        if self.banned.numel():
            logits.index_fill_(1, self.banned, float("-inf"))
        if self.hist is not None:  # only the last `window` tokens can hold a gram to ban
            w0 = max(0, t - s.ngram_window)
            ban = ngram_ban_mask(self.hist[:, w0:t], t - w0, s.ngram_size, s.ngram_window, logits.shape[-1],
                                 self.whitelist)
            logits.masked_fill_(ban, float("-inf"))
        tok = sample(logits, s.temperature, s.top_k, self.gen)
        if self.hist is not None:
            self.hist[:, t] = tok
        return tok

    def select(self, rows):
        if self.hist is not None:
            self.hist = self.hist[rows]


def sample(logits, temperature=0.0, top_k=None, generator=None):
    """(B, V) fp32 logits -> (B,) ids: argmax at temperature 0, else a draw from the top_k."""
    if temperature == 0:
        return logits.argmax(-1)
    logits = logits / temperature
    if top_k is not None and top_k < logits.shape[-1]:
        kth = torch.topk(logits, top_k, dim=-1).values[:, -1:]  # (B, 1)
        logits = logits.masked_fill(logits < kth, float("-inf"))
    probs = torch.softmax(logits, -1)
    return torch.multinomial(probs, 1, generator=generator)[:, 0]
