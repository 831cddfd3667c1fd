"""
The nanochat GPT decoder (2025 checkpoint format): rotary positions, QK RMSNorm, ReLU^2 MLP,
parameter-free RMSNorm, untied head, logit softcap, GQA/MQA, and a KV cache for generation.
State-dict keys are exactly nanochat's, so its checkpoints load by name.
"""

import torch
import torch.nn as nn
import torch.nn.functional as F

_SDPA_GQA = tuple(int(p) for p in torch.__version__.split(".")[:2]) >= (2, 5)  # enable_gqa arrived in 2.5


def norm(x):
    return F.rms_norm(x, (x.size(-1),))


def apply_rotary(x, cos, sin):
    # nanochat's convention: the two halves of the head dim are the rotated pairs
    d = x.shape[-1] // 2
    x1, x2 = x[..., :d], x[..., d:]
    return torch.cat([x1 * cos + x2 * sin, x1 * (-sin) + x2 * cos], -1).to(x.dtype)


class KVCache:
    """Preallocated keys/values for all layers. `pad` holds each row's left padding, so rows with
    prompts of different lengths decode together with their own positions."""

    def __init__(self, batch, n_layer, n_kv_head, head_dim, max_len, device, dtype, pad=None):
        self.k = torch.zeros(n_layer, batch, n_kv_head, max_len, head_dim, device=device, dtype=dtype)
        self.v = torch.zeros_like(self.k)
        self.pos = 0
        self.max_len = max_len
        self.pad = pad if pad is not None else torch.zeros(batch, dtype=torch.long, device=device)
        self.has_pad = pad is not None and bool(pad.any())  # decided once: no host sync per step

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

    def forward(self, x, cos_sin, kv_cache, mask):
        B, T, _ = x.shape
        q = self.c_q(x).view(B, T, self.n_head, self.head_dim)
        k = self.c_k(x).view(B, T, self.n_kv_head, self.head_dim)
        v = self.c_v(x).view(B, T, self.n_kv_head, self.head_dim)
        cos, sin = cos_sin
        q, k = norm(apply_rotary(q, cos, sin)), norm(apply_rotary(k, cos, sin))
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
        if mask is None:
            # no padding: plain causal when queries and keys start together; a single new
            # token (or a chunk at the end of the cache) otherwise sees everything before it
            causal = q.shape[2] == k.shape[2]
            y = F.scaled_dot_product_attention(q, k, v, is_causal=causal and T > 1, **kw)
        else:
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, **kw)
        return self.c_proj(y.transpose(1, 2).reshape(B, T, -1))


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

    def forward(self, x, cos_sin, kv_cache, mask):
        x = x + self.attn(norm(x), cos_sin, kv_cache, mask)
        return x + self.mlp(norm(x))


class GPT(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        self.config = cfg
        self.transformer = nn.ModuleDict({
            "wte": nn.Embedding(cfg.vocab_size, cfg.n_embd),
            "h": nn.ModuleList([Block(cfg, i) for i in range(cfg.n_layer)]),
        })
        self.lm_head = nn.Linear(cfg.n_embd, cfg.vocab_size, bias=False)
        self.head_dim = cfg.n_embd // cfg.n_head
        cos, sin = self._rotary(cfg.sequence_len * 10, self.head_dim)
        self.register_buffer("cos", cos, persistent=False)
        self.register_buffer("sin", sin, persistent=False)

    @staticmethod
    def _rotary(seq_len, head_dim, base=10000):
        inv_freq = 1.0 / (base ** (torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim))
        freqs = torch.outer(torch.arange(seq_len, dtype=torch.float32), inv_freq)
        return freqs.cos(), freqs.sin()  # (L, d/2), kept fp32 (nanochat keeps bf16)

    @torch.no_grad()
    def init_weights(self):
        # nanochat's init: unit-variance embeddings, zero output projections and head
        for name, p in self.named_parameters():
            if name.endswith("wte.weight"):
                nn.init.normal_(p, std=1.0)
            elif name == "lm_head.weight" or name.endswith("c_proj.weight"):
                nn.init.zeros_(p)
            else:
                fan_out, fan_in = p.shape
                nn.init.normal_(p, std=fan_in ** -0.5 * min(1.0, (fan_out / fan_in) ** 0.5))

    @torch.no_grad()
    def resize_vocab(self, new_size):
        """Grow the vocabulary; existing rows stay bit-identical, new rows get a fresh init."""
        old = self.config.vocab_size
        if new_size < old:
            raise ValueError(f"cannot shrink vocab {old} -> {new_size}")
        if new_size == old:
            return
        wte, head = self.transformer.wte.weight, self.lm_head.weight
        new_wte = nn.Embedding(new_size, wte.shape[1], device=wte.device, dtype=wte.dtype)
        new_head = nn.Linear(wte.shape[1], new_size, bias=False, device=head.device, dtype=head.dtype)
        new_wte.weight[:old] = wte
        nn.init.normal_(new_wte.weight[old:], std=1.0)
        new_head.weight[:old] = head
        nn.init.zeros_(new_head.weight[old:])
        self.transformer.wte, self.lm_head = new_wte, new_head
        self.config.vocab_size = new_size

    def _positions(self, T, kv_cache, device):
        """Rotary positions (1 or B, T) and an attention mask (B, 1, T, S) when plain causal won't do."""
        t0 = kv_cache.pos if kv_cache is not None else 0
        q_pos = torch.arange(t0, t0 + T, device=device)
        padded = kv_cache is not None and kv_cache.has_pad
        if not padded and not (t0 > 0 and T > 1):
            return q_pos[None], None
        pad = kv_cache.pad if padded else torch.zeros(1, dtype=torch.long, device=device)
        keys = torch.arange(t0 + T, device=device)
        mask = (keys[None, None, :] <= q_pos[None, :, None]) & (keys[None, None, :] >= pad[:, None, None])
        return (q_pos[None] - pad[:, None]).clamp_(min=0), mask[:, None]

    def forward(self, idx=None, targets=None, *, embeds=None, kv_cache=None, loss_reduction="mean"):
        """idx (B, T) token ids, or `embeds` (B, T, C) ready-made input embeddings.
        Returns logits (B, T, V) in fp32, or the loss when targets (-1 = ignore) are given."""
        x = self.transformer.wte(idx) if embeds is None else embeds
        B, T, _ = x.shape
        pos, mask = self._positions(T, kv_cache, x.device)
        cos, sin = self.cos[pos][:, :, None], self.sin[pos][:, :, None]  # (1 or B, T, 1, d/2)
        x = norm(x)
        for block in self.transformer.h:
            x = block(x, (cos, sin), kv_cache, mask)
        if kv_cache is not None:
            kv_cache.pos += T
        x = norm(x)
        if targets is not None:
            return self.loss(x, targets, loss_reduction)
        return self.logits(x)

    def logits(self, x):
        logits = self.lm_head(x).float()
        return 15.0 * torch.tanh(logits / 15.0)

    def loss(self, x, targets, reduction="mean"):
        logits = self.logits(x)
        return F.cross_entropy(logits.view(-1, logits.size(-1)), targets.reshape(-1), ignore_index=-1,
                               reduction=reduction)

    def num_flops_per_token(self):
        """Matmul FLOPs per token for forward+backward (6N), plus attention (12 * L * h * d * T)."""
        c = self.config
        n = sum(p.numel() for p in self.parameters()) - self.transformer.wte.weight.numel()
        return 6 * n + 12 * c.n_layer * c.n_embd * c.sequence_len
