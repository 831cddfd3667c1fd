"""
The nanochat GPT decoder in both of nanochat's checkpoint formats. Shared: rotary positions, QK RMSNorm,
ReLU^2 MLP, parameter-free RMSNorm, untied head, logit softcap, GQA/MQA, and a KV cache for generation.
The 2026 format (config.version = 2026, nanochat since spring 2026) adds sliding-window attention by a
layer pattern, value embeddings on every other layer, per-layer resid/x0 lambdas, smear (the previous
token's embedding mixed in), backout (a mid-layer residual subtracted at the end), q/k scaled by 1.2,
rotary base 100000 and vocabulary tables padded to a multiple of 64 (logits are cut to vocab_size).
State-dict keys are exactly nanochat's, so its checkpoints load by name.

Vision tokens enter where token embeddings go. The ids beside them say which positions hold a token:
-1 marks a vision token (it is not a vocabulary id), and there the 2026 extras that read token ids do
nothing: no value embedding (v is the projection of the vision token alone) and no smear into or out of
the position (the previous "token" of a vision token is another patch, not a word).
"""

import torch
import torch.nn as nn
import torch.nn.functional as F

_SDPA_GQA = tuple(int(p) for p in torch.__version__.split(".")[:2]) >= (2, 5)  # enable_gqa arrived in 2.5
VE_GATE_CHANNELS, SMEAR_CHANNELS = 12, 24  # 2026: the gates read the first channels of their input


def norm(x):
    return F.rms_norm(x, (x.size(-1),))


def apply_rotary(x, cos, sin):
    # nanochat's convention: the two halves of the head dim are the rotated pairs
    d = x.shape[-1] // 2
    x1, x2 = x[..., :d], x[..., d:]
    return torch.cat([x1 * cos + x2 * sin, x1 * (-sin) + x2 * cos], -1).to(x.dtype)


def table_rows(cfg):
    """Rows of the embedding tables and the head: the 2026 format pads the vocab to a multiple of 64."""
    return -(-cfg.vocab_size // 64) * 64 if cfg.version >= 2026 else cfg.vocab_size


def has_value_embeds(layer, n_layer):
    # every other layer, counted back from the last one (which always has them)
    return layer % 2 == (n_layer - 1) % 2


def window_sizes(cfg):
    """Per layer, how many earlier positions a query sees (None: all). 2026: the pattern tiled over the
    layers, the last layer always L; L = sequence_len, S = a quarter of it rounded up to 128."""
    if cfg.version < 2026:
        return [None] * cfg.n_layer
    long = cfg.sequence_len
    short = -(-long // 4 // 128) * 128
    pattern = cfg.window_pattern.upper()
    sizes = [long if pattern[i % len(pattern)] == "L" else short
             for i in range(cfg.n_layer)]
    sizes[-1] = long
    return sizes


class KVCache:
    """Preallocated keys/values for all layers. `pad` holds each row's left padding, so rows with
    prompts of different lengths decode together with their own positions. `prev` is the 2026 smear's
    memory: the last position's embedding (zero where it held no token)."""

    def __init__(self, batch, n_layer, n_kv_head, head_dim, max_len, device, dtype, pad=None):
        self.k = torch.zeros(n_layer, batch, n_kv_head, max_len, head_dim, device=device, dtype=dtype)
        self.v = torch.zeros_like(self.k)
        self.pos = 0
        self.max_len = max_len
        self.pad = pad if pad is not None else torch.zeros(batch, dtype=torch.long, device=device)
        self.has_pad = pad is not None and bool(pad.any())  # decided once: no host sync per step
        self.prev = None  # (B, 1, C)

    def insert(self, layer, k, v):
        t0, t1 = self.pos, self.pos + k.shape[2]
        if t1 > self.max_len:
            raise RuntimeError(f"KV cache full: {t1} > {self.max_len} positions")
        self.k[layer, :, :, t0:t1] = k
        self.v[layer, :, :, t0:t1] = v
        return self.k[layer, :, :, :t1], self.v[layer, :, :, :t1]

    def select(self, rows):
        """Keep only `rows` (finished rows dropped from the batch)."""
        self.k, self.v, self.pad = self.k[:, rows], self.v[:, rows], self.pad[rows]
        if self.prev is not None:
            self.prev = self.prev[rows]


class CausalSelfAttention(nn.Module):
    def __init__(self, cfg, layer_idx):
        super().__init__()
        self.layer_idx = layer_idx
        self.n_head, self.n_kv_head = cfg.n_head, cfg.n_kv_head
        self.head_dim = cfg.n_embd // cfg.n_head
        self.c_q = nn.Linear(cfg.n_embd, cfg.n_head * self.head_dim, bias=False)
        self.c_k = nn.Linear(cfg.n_embd, cfg.n_kv_head * self.head_dim, bias=False)
        self.c_v = nn.Linear(cfg.n_embd, cfg.n_kv_head * self.head_dim, bias=False)
        self.c_proj = nn.Linear(cfg.n_embd, cfg.n_embd, bias=False)
        self.qk_scale = 1.2 if cfg.version >= 2026 else None  # nanochat 2026: sharper attention
        if cfg.version >= 2026 and has_value_embeds(layer_idx, cfg.n_layer):
            self.ve_gate = nn.Linear(VE_GATE_CHANNELS, cfg.n_kv_head, bias=False)

    def forward(self, x, ve, cos_sin, kv_cache, mask, align=None):
        B, T, _ = x.shape
        q = self.c_q(x).view(B, T, self.n_head, self.head_dim)
        k = self.c_k(x).view(B, T, self.n_kv_head, self.head_dim)
        v = self.c_v(x).view(B, T, self.n_kv_head, self.head_dim)
        if ve is not None:  # value residual: a per-kv-head gate in (0, 3) from the block input
            gate = 3 * torch.sigmoid(self.ve_gate(x[..., :VE_GATE_CHANNELS]))  # (B, T, kv)
            v = v + (gate[..., None] * ve.view_as(v)).to(v.dtype)
        cos, sin = cos_sin
        q, k = norm(apply_rotary(q, cos, sin)), norm(apply_rotary(k, cos, sin))
        if self.qk_scale is not None:
            q, k = q * self.qk_scale, k * self.qk_scale
        q, k, v = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)  # (B, h, T, d)
        if kv_cache is not None:
            k, v = kv_cache.insert(self.layer_idx, k, v)
        kw = {}
        if self.n_kv_head != self.n_head:
            if _SDPA_GQA:
                kw["enable_gqa"] = True
            else:
                rep = self.n_head // self.n_kv_head
                k, v = k.repeat_interleave(rep, dim=1), v.repeat_interleave(rep, dim=1)
        aux = None if align is None else attention_nll(q[:, 0], k[:, 0], mask, align)
        if mask is None:
            # no padding: plain causal when queries and keys start together; a single new
            # token (or a chunk at the end of the cache) otherwise sees everything before it
            causal = q.shape[2] == k.shape[2]
            y = F.scaled_dot_product_attention(q, k, v, is_causal=causal and T > 1, **kw)
        else:
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, **kw)
        y = self.c_proj(y.transpose(1, 2).reshape(B, T, -1))
        return y if align is None else (y, aux)


def attention_nll(q, k, mask, target):
    """Summed -log attention weight of one head on the target key of each query: q, k (B, T, d), target (B, T)
    key positions, -1 = none. The same logits SDPA computes (its scale, the causal or given mask)."""
    logits = (q.float() @ k.float().transpose(1, 2)) * q.shape[-1] ** -0.5  # (B, T, S)
    if mask is None:
        T, S = logits.shape[1:]
        mask = torch.ones(T, S, dtype=torch.bool, device=q.device).tril(S - T)
    logits = logits.masked_fill(~mask.reshape(-1, *logits.shape[1:]) if mask.dim() > 2 else ~mask, float("-inf"))
    logp = logits.log_softmax(-1)
    ok = target >= 0
    return -logp.gather(-1, target.clamp(min=0)[..., None])[..., 0][ok].sum()


class MLP(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        self.c_fc = nn.Linear(cfg.n_embd, 4 * cfg.n_embd, bias=False)
        self.c_proj = nn.Linear(4 * cfg.n_embd, cfg.n_embd, bias=False)

    def forward(self, x):
        return self.c_proj(F.relu(self.c_fc(x)).square())


class Block(nn.Module):
    def __init__(self, cfg, layer_idx):
        super().__init__()
        self.attn = CausalSelfAttention(cfg, layer_idx)
        self.mlp = MLP(cfg)

    def forward(self, x, ve, cos_sin, kv_cache, mask, align=None):
        y = self.attn(norm(x), ve, cos_sin, kv_cache, mask, align)
        aux = None
        if align is not None:
            y, aux = y
        x = x + y
        x = x + self.mlp(norm(x))
        return x if align is None else (x, aux)


class GPT(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        self.config = cfg
        v26 = cfg.version >= 2026
        rows = table_rows(cfg)
        self.transformer = nn.ModuleDict({
            "wte": nn.Embedding(rows, cfg.n_embd),
            "h": nn.ModuleList([Block(cfg, i) for i in range(cfg.n_layer)]),
        })
        self.lm_head = nn.Linear(cfg.n_embd, rows, bias=False)
        self.head_dim = cfg.n_embd // cfg.n_head
        self.windows = window_sizes(cfg)
        if v26:
            self.resid_lambdas = nn.Parameter(torch.ones(cfg.n_layer))  # x = r_i * x + x0_i * x0 per block
            self.x0_lambdas = nn.Parameter(torch.zeros(cfg.n_layer))
            self.smear_gate = nn.Linear(SMEAR_CHANNELS, 1, bias=False)
            self.smear_lambda = nn.Parameter(torch.zeros(1))
            self.backout_lambda = nn.Parameter(torch.full((1,), 0.2))
            kv_dim = cfg.n_kv_head * self.head_dim
            self.value_embeds = nn.ModuleDict({str(i): nn.Embedding(rows, kv_dim) for i in range(cfg.n_layer)
                                               if has_value_embeds(i, cfg.n_layer)})
        self.rotary_base = 100000 if v26 else 10000
        cos, sin = self._rotary(cfg.sequence_len * 10, self.head_dim, self.rotary_base)
        self.register_buffer("cos", cos, persistent=False)
        self.register_buffer("sin", sin, persistent=False)

    @staticmethod
    def _rotary(seq_len, head_dim, base=10000):
        inv_freq = 1.0 / (base ** (torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim))
        freqs = torch.outer(torch.arange(seq_len, dtype=torch.float32), inv_freq)
        return freqs.cos(), freqs.sin()  # (L, d/2), kept fp32 (nanochat keeps bf16 on GPUs)

    def vocab_tables(self):
        """name -> the modules with one row (or output) per vocabulary id."""
        tables = {"transformer.wte": self.transformer.wte, "lm_head": self.lm_head}
        tables.update({f"value_embeds.{i}": e for i, e in getattr(self, "value_embeds", {}).items()})
        return tables

    @torch.no_grad()
    def init_weights(self):
        if self.config.version >= 2026:
            return self._init_2026()
        # nanochat's 2025 init: unit-variance embeddings, zero output projections and head
        for name, p in self.named_parameters():
            if name.endswith("wte.weight"):
                nn.init.normal_(p, std=1.0)
            elif name == "lm_head.weight" or name.endswith("c_proj.weight"):
                nn.init.zeros_(p)
            else:
                fan_out, fan_in = p.shape
                nn.init.normal_(p, std=fan_in ** -0.5 * min(1.0, (fan_out / fan_in) ** 0.5))

    def _init_2026(self):
        # nanochat's 2026 init: uniform matrices (std 1/sqrt(n_embd)), zero output projections, a tiny
        # head, near-neutral gates, stronger residual and more x0 in early layers
        c = self.config
        s = 3 ** 0.5 * c.n_embd ** -0.5  # the uniform bound with std 1/sqrt(n_embd)
        for name, table in self.vocab_tables().items():
            self._init_rows(name, table.weight)
        for block in self.transformer.h:
            a = block.attn
            for w in (a.c_q.weight, a.c_k.weight, a.c_v.weight):
                nn.init.uniform_(w, -s, s)
            nn.init.uniform_(block.mlp.c_fc.weight, -0.4 * s, 0.4 * s)
            nn.init.zeros_(a.c_proj.weight)
            nn.init.zeros_(block.mlp.c_proj.weight)
            if hasattr(a, "ve_gate"):
                nn.init.uniform_(a.ve_gate.weight, 0.0, 0.02)
        depth = torch.arange(c.n_layer, dtype=torch.float32) / max(c.n_layer - 1, 1)
        self.resid_lambdas.copy_(1.15 - 0.10 * depth)
        self.x0_lambdas.copy_(0.20 - 0.15 * depth)
        nn.init.uniform_(self.smear_gate.weight, 0.0, 0.02)
        nn.init.zeros_(self.smear_lambda)
        nn.init.constant_(self.backout_lambda, 0.2)

    def _init_rows(self, name, w):
        """Fresh values for vocabulary rows `w` of table `name`, as the format's init gives them."""
        if self.config.version < 2026:
            return nn.init.zeros_(w) if name == "lm_head" else nn.init.normal_(w, std=1.0)
        if name == "lm_head":
            return nn.init.normal_(w, std=0.001)
        if name == "transformer.wte":
            return nn.init.normal_(w, std=0.8)
        s = 3 ** 0.5 * self.config.n_embd ** -0.5
        return nn.init.uniform_(w, -s, s)  # value embeddings, like c_v

    @torch.no_grad()
    def resize_vocab(self, new_size, keep=None):
        """Set the vocabulary to `new_size` ids. The first `keep` rows (default: the old vocab) of every
        table stay bit-identical; every other row, padding included, gets a fresh init."""
        old = self.config.vocab_size
        keep = old if keep is None else keep
        if new_size < keep:
            raise ValueError(f"cannot shrink vocab {keep} -> {new_size}")
        self.config.vocab_size = new_size
        rows = table_rows(self.config)
        if new_size == old and all(t.weight.shape[0] == rows for t in self.vocab_tables().values()):
            return
        new = {}  # all modules first, then the rows: the random draws come in the order they always did
        for name, table in self.vocab_tables().items():
            w = table.weight
            if isinstance(table, nn.Linear):
                new[name] = nn.Linear(w.shape[1], rows, bias=False, device=w.device, dtype=w.dtype)
            else:
                new[name] = nn.Embedding(rows, w.shape[1], device=w.device, dtype=w.dtype)
        for name, table in self.vocab_tables().items():
            new[name].weight[:keep] = table.weight[:keep]
            self._init_rows(name, new[name].weight[keep:])
        for name, module in new.items():
            self._set_table(name, module)

    def _set_table(self, name, module):
        if name == "lm_head":
            self.lm_head = module
        elif name == "transformer.wte":
            self.transformer.wte = module
        else:
            self.value_embeds[name.split(".")[1]] = module

    def _layout(self, T, kv_cache, device):
        """Rotary positions (1 or B, T), which slots are past their row's padding (1 or B, T), and an
        attention mask (B or 1, 1, T, S) per window size, None where plain causal attention does."""
        t0 = kv_cache.pos if kv_cache is not None else 0
        q_pos = torch.arange(t0, t0 + T, device=device)
        padded = kv_cache is not None and kv_cache.has_pad
        pad = kv_cache.pad if padded else torch.zeros(1, dtype=torch.long, device=device)
        keys = torch.arange(t0 + T, device=device)[None, None, :]  # (1, 1, S)
        qs = q_pos[None, :, None]  # (1, T, 1)
        base = None
        if padded or (t0 > 0 and T > 1):
            base = ((keys <= qs) & (keys >= pad[:, None, None]))[:, None]
        masks = {}
        for w in set(self.windows):
            if w is None or t0 + T - 1 <= w:  # the window reaches back past the first slot: no effect
                masks[w] = base
            else:  # a window W sees W + 1 keys, itself included
                m = (keys <= qs) & (keys >= qs - w) & (keys >= pad[:, None, None])
                masks[w] = m[:, None]
        if not padded:
            return q_pos[None], q_pos[None] >= 0, masks
        return (q_pos[None] - pad[:, None]).clamp_(min=0), q_pos[None] >= pad[:, None], masks

    def forward(self, idx=None, targets=None, *, embeds=None, kv_cache=None, loss_reduction="mean", align=None):
        """idx (B, T) token ids, or `embeds` (B, T, C) ready-made input embeddings; the 2026 format needs
        idx beside embeds (-1 where a position holds no token, e.g. a vision token).
        Returns logits (B, T, vocab_size) in fp32, or the loss when targets (-1 = ignore) are given.
        align: key positions (L', B, T), -1 = none: head 0 of layer i < L' is also scored on attending there;
        then returns (out, summed -log attention weight)."""
        align_nll = 0.0
        x = self.transformer.wte(idx) if embeds is None else embeds
        B, T, _ = x.shape
        pos, live, masks = self._layout(T, kv_cache, x.device)
        cos, sin = self.cos[pos][:, :, None], self.sin[pos][:, :, None]  # (1 or B, T, 1, d/2)
        x = norm(x)
        v26 = self.config.version >= 2026
        if v26:
            if idx is None:
                raise ValueError("the 2026 decoder needs the token ids beside the embeddings (-1 for vision)")
            tok = (idx >= 0) & live  # (B, T): positions that hold a vocabulary token
            x = x0 = self._smear(x, tok, kv_cache)
            ve_idx, back_at, x_back = idx.clamp(min=0), self.config.n_layer // 2, None
        for i, block in enumerate(self.transformer.h):
            ve = None
            if v26:
                x = self.resid_lambdas[i] * x + self.x0_lambdas[i] * x0
                if str(i) in self.value_embeds:  # zero where no token: v comes from the input alone
                    ve = self.value_embeds[str(i)](ve_idx) * tok[..., None]
            if align is not None and i < len(align):
                x, nll = block(x, ve, (cos, sin), kv_cache, masks[self.windows[i]], align[i])
                align_nll = align_nll + nll
            else:
                x = block(x, ve, (cos, sin), kv_cache, masks[self.windows[i]])
            if v26 and i == back_at:
                x_back = x
        if kv_cache is not None:
            kv_cache.pos += T
        if v26:  # backout: remove the mid-layer residual's low-level features before the head
            x = x - self.backout_lambda * x_back
        x = norm(x)
        out = self.loss(x, targets, loss_reduction) if targets is not None else self.logits(x)
        return out if align is None else (out, align_nll)

    def _smear(self, x, tok, kv_cache):
        """2026: x_t += lambda * sigmoid(gate(x_t[:24])) * x_{t-1}, only between two token positions."""
        xt = x * tok[..., None]  # (B, T, C): embeddings of token positions, zero elsewhere
        prev = xt[:, :-1]
        if kv_cache is not None:
            first = kv_cache.prev if kv_cache.prev is not None else torch.zeros_like(xt[:, :1])
            prev = torch.cat([first.to(xt.dtype), prev], 1)
            kv_cache.prev = xt[:, -1:]
        else:
            prev = torch.cat([torch.zeros_like(xt[:, :1]), prev], 1)
        gate = self.smear_lambda * torch.sigmoid(self.smear_gate(x[..., :SMEAR_CHANNELS]))  # (B, T, 1)
        return x + (gate * tok[..., None]) * prev

    def logits(self, x):
        logits = self.lm_head(x)[..., :self.config.vocab_size].float()  # padding rows are never scored
        return 15.0 * torch.tanh(logits / 15.0)

    def loss(self, x, targets, reduction="mean"):
        logits = self.logits(x)
        return F.cross_entropy(logits.view(-1, logits.size(-1)), targets.reshape(-1), ignore_index=-1,
                               reduction=reduction)

    def num_flops_per_token(self):
        """Matmul FLOPs per token for forward+backward (6N), plus attention (12 * h * d * T per layer,
        T capped by the layer's window). Embedding lookups are not matmuls."""
        c = self.config
        lookups = [self.transformer.wte] + list(getattr(self, "value_embeds", {}).values())
        n = sum(p.numel() for p in self.parameters()) - sum(e.weight.numel() for e in lookups)
        attn = sum(min(w if w is not None else c.sequence_len, c.sequence_len) for w in self.windows)
        return 6 * n + 12 * c.n_embd * attn
