"""
CLIP ViT-L trunk. In DeepEncoder it reads the compressed SAM map as its patch embeddings; the
ordinary pixel path (its own patch conv) is kept for checking against reference CLIP weights.
Parameter names follow the DeepSeek-OCR release (fused qkv_proj).
"""

import torch
import torch.nn as nn
import torch.nn.functional as F

from nanoocr.sam import resize_pos_grid


def quick_gelu(x):
    return x * torch.sigmoid(1.702 * x)


class Embeddings(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        self.pos_grid = cfg.pos_grid
        self.class_embedding = nn.Parameter(torch.zeros(cfg.dim))
        self.patch_embedding = nn.Conv2d(3, cfg.dim, cfg.patch_size, stride=cfg.patch_size, bias=False)
        self.position_embedding = nn.Embedding(cfg.pos_grid ** 2 + 1, cfg.dim)

    def positions(self, g):
        """(1 + g*g, dim): CLS position kept apart, the grid resized to g x g."""
        pos = self.position_embedding.weight
        grid = pos[1:].view(1, self.pos_grid, self.pos_grid, -1)
        return torch.cat([pos[:1], resize_pos_grid(grid, g).view(g * g, -1)])

    def forward(self, pixels=None, patch_embeds=None):
        if patch_embeds is None:
            patch_embeds = self.patch_embedding(pixels.to(self.patch_embedding.weight.dtype))
        B, C, g, _ = patch_embeds.shape
        x = patch_embeds.flatten(2).transpose(1, 2)  # (B, g*g, C)
        x = torch.cat([self.class_embedding.to(x.dtype).expand(B, 1, C), x], 1)
        return x + self.positions(g).to(x.dtype)


class SelfAttention(nn.Module):
    def __init__(self, dim, heads):
        super().__init__()
        self.heads = heads
        self.qkv_proj = nn.Linear(dim, 3 * dim)
        self.out_proj = nn.Linear(dim, dim)

    def forward(self, x):
        B, N, C = x.shape
        q, k, v = self.qkv_proj(x).view(B, N, 3, self.heads, C // self.heads).permute(2, 0, 3, 1, 4)
        y = F.scaled_dot_product_attention(q, k, v)
        return self.out_proj(y.transpose(1, 2).reshape(B, N, C))


class MLP(nn.Module):
    def __init__(self, dim, hidden):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x):
        return self.fc2(quick_gelu(self.fc1(x)))


class Layer(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        self.layer_norm1 = nn.LayerNorm(cfg.dim, eps=1e-5)
        self.self_attn = SelfAttention(cfg.dim, cfg.heads)
        self.layer_norm2 = nn.LayerNorm(cfg.dim, eps=1e-5)
        self.mlp = MLP(cfg.dim, cfg.mlp_dim)

    def forward(self, x):
        x = x + self.self_attn(self.layer_norm1(x))
        return x + self.mlp(self.layer_norm2(x))


class Transformer(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        self.layers = nn.ModuleList([Layer(cfg) for _ in range(cfg.depth)])

    def forward(self, x):
        for layer in self.layers:
            x = layer(x)
        return x


class ClipTrunk(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        self.embeddings = Embeddings(cfg)
        self.pre_layrnorm = nn.LayerNorm(cfg.dim, eps=1e-5)
        self.transformer = Transformer(cfg)
        # DeepEncoder never runs the pixel conv: frozen so DDP never waits for its gradient
        self.embeddings.patch_embedding.requires_grad_(False)

    def forward(self, pixels=None, patch_embeds=None):
        """SAM map (B, dim, g, g) or pixels (B, 3, S, S) -> (B, 1 + g*g, dim), CLS first."""
        x = self.embeddings(pixels, patch_embeds)
        return self.transformer(self.pre_layrnorm(x))
