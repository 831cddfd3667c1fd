"""
SAM ViT-B image encoder + neck + the DeepSeek 16x compressor (net_2, net_3).
Parameter names follow segment-anything / the DeepSeek-OCR release, so their weights load by name.
"""

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

# how decomposed relative positions enter attention: "bias" (an additive (N, N) mask), "fold" (folded
# into q/k, no mask), or "auto" (bias on CPU, fold elsewhere). Both are exact; tests compare them.
REL_POS_IMPL = "auto"


class LayerNorm2d(nn.Module):
    """LayerNorm over the channels of a (B, C, H, W) map."""

    def __init__(self, channels, eps=1e-6):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(channels))
        self.bias = nn.Parameter(torch.zeros(channels))
        self.eps = eps

    def forward(self, x):
        return F.layer_norm(x.permute(0, 2, 3, 1), x.shape[1:2], self.weight, self.bias, self.eps).permute(0, 3, 1, 2)


def resize_pos_grid(pos, size):
    """(1, G, G, C) learned grid -> (1, size, size, C), bicubic with antialias in fp32."""
    if pos.shape[1] == size:
        return pos
    x = pos.float().permute(0, 3, 1, 2)
    x = F.interpolate(x, size=(size, size), mode="bicubic", antialias=True, align_corners=False)
    return x.permute(0, 2, 3, 1).to(pos.dtype)


def rel_pos_table(q_size, k_size, rel_pos):
    """Relative position embeddings for each (query, key) coordinate pair: (q_size, k_size, head_dim)."""
    n = 2 * max(q_size, k_size) - 1
    if rel_pos.shape[0] != n:  # trained at another size: resize the table linearly
        x = rel_pos.float().reshape(1, rel_pos.shape[0], -1).permute(0, 2, 1)
        rel_pos = F.interpolate(x, size=n, mode="linear").reshape(-1, n).permute(1, 0).to(rel_pos.dtype)
    q = torch.arange(q_size, device=rel_pos.device)[:, None] * max(k_size / q_size, 1.0)
    k = torch.arange(k_size, device=rel_pos.device)[None, :] * max(q_size / k_size, 1.0)
    return rel_pos[((q - k) + (k_size - 1) * max(q_size / k_size, 1.0)).long()]


class Attention(nn.Module):
    def __init__(self, dim, heads):
        super().__init__()
        self.heads = heads
        self.head_dim = dim // heads
        self.qkv = nn.Linear(dim, dim * 3)
        self.proj = nn.Linear(dim, dim)
        # sized at init for the pretrained input; resized on the fly for other grids
        self.rel_pos_h = nn.Parameter(torch.zeros(1, self.head_dim))
        self.rel_pos_w = nn.Parameter(torch.zeros(1, self.head_dim))

    def init_rel_pos(self, size):
        self.rel_pos_h = nn.Parameter(torch.zeros(2 * size - 1, self.head_dim))
        self.rel_pos_w = nn.Parameter(torch.zeros(2 * size - 1, self.head_dim))

    def forward(self, x):
        B, H, W, C = x.shape
        q, k, v = self.qkv(x).view(B, H * W, 3, self.heads, self.head_dim).permute(2, 0, 3, 1, 4)  # (B, h, N, d)
        Rh = rel_pos_table(H, H, self.rel_pos_h).to(q.dtype)  # (H, H, d)
        Rw = rel_pos_table(W, W, self.rel_pos_w).to(q.dtype)  # (W, W, d)
        qg = q.view(B, self.heads, H, W, self.head_dim)
        rel_h = torch.einsum("bnhwc,hkc->bnhwk", qg, Rh).reshape(B, self.heads, H * W, H)
        rel_w = torch.einsum("bnhwc,wkc->bnhwk", qg, Rw).reshape(B, self.heads, H * W, W)
        if REL_POS_IMPL == "bias" or (REL_POS_IMPL == "auto" and x.device.type == "cpu"):
            # CPU's fused SDPA kernel takes an additive bias at no extra cost
            bias = (rel_h.view(B, self.heads, H * W, H, 1) + rel_w.view(B, self.heads, H * W, 1, W))
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=bias.view(B, self.heads, H * W, H * W))
        else:
            # On GPU an (N, N) bias per head would cost O(N^2) memory (4096^2 per head at 1024 px), so the
            # decomposed positions are folded into the dot product instead:
            # [q*s, rel_h, rel_w] . [k, onehot(row), onehot(col)] = s*q.k + rel_h[row(k)] + rel_w[col(k)]
            rows = torch.arange(H, device=x.device).repeat_interleave(W)
            cols = torch.arange(W, device=x.device).repeat(H)
            onehot = torch.cat([F.one_hot(rows, H), F.one_hot(cols, W)], -1).to(k.dtype)  # (N, H+W)
            q = torch.cat([q * self.head_dim ** -0.5, rel_h, rel_w], -1)
            k = torch.cat([k, onehot.expand(B, self.heads, -1, -1)], -1)
            y = F.scaled_dot_product_attention(q, k, v, scale=1.0)  # (B, h, N, d)
        return self.proj(y.transpose(1, 2).reshape(B, H, W, C))


def window_partition(x, w):
    """(B, H, W, C) -> (B * nW, w, w, C), zero-padding H, W up to multiples of w (as SAM does)."""
    B, H, W, C = x.shape
    ph, pw = (w - H % w) % w, (w - W % w) % w
    if ph or pw:
        x = F.pad(x, (0, 0, 0, pw, 0, ph))
    Hp, Wp = H + ph, W + pw
    x = x.view(B, Hp // w, w, Wp // w, w, C).permute(0, 1, 3, 2, 4, 5).reshape(-1, w, w, C)
    return x, (Hp, Wp)


def window_unpartition(x, w, padded, hw):
    Hp, Wp = padded
    H, W = hw
    B = x.shape[0] // ((Hp // w) * (Wp // w))
    x = x.view(B, Hp // w, Wp // w, w, w, -1).permute(0, 1, 3, 2, 4, 5).reshape(B, Hp, Wp, -1)
    return x[:, :H, :W].contiguous()


class MLP(nn.Module):
    def __init__(self, dim, hidden):
        super().__init__()
        self.lin1 = nn.Linear(dim, hidden)
        self.lin2 = nn.Linear(hidden, dim)

    def forward(self, x):
        return self.lin2(F.gelu(self.lin1(x)))


class Block(nn.Module):
    def __init__(self, dim, heads, mlp_ratio, window_size, rel_size):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = Attention(dim, heads)
        self.attn.init_rel_pos(rel_size)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = MLP(dim, int(dim * mlp_ratio))
        self.window_size = window_size  # 0 = global attention

    def forward(self, x):
        shortcut = x
        x = self.norm1(x)
        if self.window_size > 0:
            H, W = x.shape[1:3]
            x, padded = window_partition(x, self.window_size)
            x = window_unpartition(self.attn(x), self.window_size, padded, (H, W))
        else:
            x = self.attn(x)
        x = shortcut + x
        return x + self.mlp(self.norm2(x))


class PatchEmbed(nn.Module):
    def __init__(self, patch_size, dim):
        super().__init__()
        self.proj = nn.Conv2d(3, dim, kernel_size=patch_size, stride=patch_size)

    def forward(self, x):
        return self.proj(x).permute(0, 2, 3, 1)  # (B, H, W, C)


def conv_norm(channels):
    """Per-channel normalisation over each map (InstanceNorm, affine). The glyph probe's measurements: LayerNorm
    over channels keeps the path at chance (a pixel's channel vector loses its scale, so ink contrast is
    gone), GroupNorm learns at half speed, per-channel norms (BatchNorm or this) learn fastest; this one
    needs no batch statistics, so DDP, eval and frozen phases behave the same."""
    return nn.GroupNorm(channels, channels)


class ConvStem(nn.Module):
    """log2(patch) 3x3 stride-2 convs, each followed by a per-channel norm + ReLU: the same (B, H/p, W/p, dim) map
    as PatchEmbed, but with a nonlinearity between pixels and tokens that a from-scratch model can learn
    glyph strokes with (a single patch conv is a linear map of each patch)."""

    def __init__(self, patch_size, dim):
        super().__init__()
        n = patch_size.bit_length() - 1
        chans = [3] + [max(dim // 2 ** (n - 1 - i), 16) for i in range(n)]
        layers = []
        for c_in, c_out in zip(chans[:-1], chans[1:]):
            layers += [nn.Conv2d(c_in, c_out, 3, stride=2, padding=1), conv_norm(c_out), nn.ReLU()]
        self.proj = nn.Sequential(*layers)

    def forward(self, x):
        return self.proj(x).permute(0, 2, 3, 1)  # (B, H, W, C)


def compressor_norm(channels, act):
    # a no-op unless asked: DeepSeek's compressor is two plain convs
    return nn.Sequential(conv_norm(channels), nn.ReLU()) if act else nn.Identity()


class SamEncoder(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        self.cfg = cfg
        self.patch_embed = (ConvStem if cfg.stem == "conv" else PatchEmbed)(cfg.patch_size, cfg.dim)
        self.pos_embed = nn.Parameter(torch.zeros(1, cfg.pos_grid, cfg.pos_grid, cfg.dim))
        self.blocks = nn.ModuleList([
            Block(cfg.dim, cfg.heads, cfg.mlp_ratio,
                  0 if i in cfg.global_blocks else cfg.window_size,
                  cfg.pos_grid if i in cfg.global_blocks else cfg.window_size)
            for i in range(cfg.depth)])
        self.neck = nn.Sequential(
            nn.Conv2d(cfg.dim, cfg.neck_dim, 1, bias=False), LayerNorm2d(cfg.neck_dim),
            nn.Conv2d(cfg.neck_dim, cfg.neck_dim, 3, padding=1, bias=False), LayerNorm2d(cfg.neck_dim))
        self.net_2 = nn.Conv2d(cfg.neck_dim, cfg.net2_dim, 3, stride=2, padding=1, bias=False)
        self.net_3 = nn.Conv2d(cfg.net2_dim, cfg.out_dim, 3, stride=2, padding=1, bias=False)
        self.net_2_act = compressor_norm(cfg.net2_dim, cfg.compressor_act)
        self.net_3_act = compressor_norm(cfg.out_dim, cfg.compressor_act)
        self.grad_checkpoint = False  # recompute global blocks in backward (memory for compute)

    def trunk_parameters(self):
        return [p for n, p in self.named_parameters() if not n.startswith(("net_2", "net_3"))]

    def compressor_parameters(self):
        return [p for n, p in self.named_parameters() if n.startswith(("net_2", "net_3"))]

    def trunk(self, x):
        """(B, 3, S, S) -> (B, neck_dim, S/p, S/p): SAM proper, before the compressor."""
        x = self.patch_embed(x)
        x = x + resize_pos_grid(self.pos_embed, x.shape[1]).to(x.dtype)
        for blk in self.blocks:
            if self.grad_checkpoint and blk.window_size == 0 and torch.is_grad_enabled():
                x = checkpoint(blk, x, use_reentrant=False)
            else:
                x = blk(x)
        return self.neck(x.permute(0, 3, 1, 2))

    def compress(self, x):
        return self.net_3_act(self.net_3(self.net_2_act(self.net_2(x))))  # 16x fewer tokens than patches

    def forward(self, x):
        return self.compress(self.trunk(x))  # (B, out_dim, g, g)
