"""
NanoDeepseekOCR: views -> SAM -> compressor -> CLIP -> [CLIP tokens | SAM tokens] -> linear projector
-> 2D layout (a newline vector after each grid row, one separator per image) -> written into the
decoder's input embeddings at the <|image|> positions -> nanochat GPT.
"""

from contextlib import nullcontext

import torch
import torch.nn as nn

from nanoocr.clip import ClipTrunk
from nanoocr.gpt import GPT, norm
from nanoocr.sam import SamEncoder

# parameter groups by name prefix: what freeze policies, checkpoints and reports talk about
PARTS = {
    "sam": ("sam_model.patch_embed", "sam_model.pos_embed", "sam_model.blocks", "sam_model.neck"),
    "compressor": ("sam_model.net_2", "sam_model.net_3"),
    "clip": ("vision_model.",),
    "projector": ("projector.", "image_newline", "view_separator"),
    "gpt": ("gpt.",),
}


def part_of(name):
    for part, prefixes in PARTS.items():
        if name.startswith(prefixes):
            return part
    raise KeyError(f"parameter {name!r} belongs to no part")


def _trains(params):
    return any(p.requires_grad for p in params)


class Projector(nn.Module):
    def __init__(self, in_dim, out_dim):
        super().__init__()
        self.layers = nn.Linear(in_dim, out_dim)  # DeepSeek's projector_type="linear"

    def forward(self, x):
        return self.layers(x)


class NanoDeepseekOCR(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        self.config = cfg.validate()
        self.sam_model = SamEncoder(cfg.sam)
        self.vision_model = ClipTrunk(cfg.clip)
        n_embd = cfg.gpt.n_embd
        self.projector = Projector(cfg.clip.dim + cfg.sam.out_dim, n_embd)
        self.image_newline = nn.Parameter(torch.zeros(n_embd))
        self.view_separator = nn.Parameter(torch.zeros(n_embd))
        self.gpt = GPT(cfg.gpt)
        self.image_token_id = None  # set from the tokenizer; None means text-only use

    @torch.no_grad()
    def init_weights(self):
        for m in list(self.sam_model.modules()) + list(self.vision_model.modules()) + [self.projector.layers]:
            if isinstance(m, (nn.Linear, nn.Conv2d)):
                nn.init.trunc_normal_(m.weight, std=0.02)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Embedding):
                nn.init.normal_(m.weight, std=0.02)
        nn.init.trunc_normal_(self.sam_model.pos_embed, std=0.02)
        nn.init.normal_(self.vision_model.embeddings.class_embedding, std=0.02)
        std = self.config.gpt.n_embd ** -0.5
        nn.init.normal_(self.image_newline, std=std)
        nn.init.normal_(self.view_separator, std=std)
        self.gpt.init_weights()
        return self

    def encode_stages(self, x):
        """(N, 3, S, S) views -> each stage's tokens: SAM (N, g*g, C_sam) after the compressor, CLIP
        (N, g*g, C_clip) without its class token, and the projected vision tokens (N, g, g, n_embd)."""
        # frozen stages run without autograd until the first stage that trains
        sam_model = self.sam_model
        grad = torch.is_grad_enabled() and _trains(sam_model.trunk_parameters())
        with torch.set_grad_enabled(grad):
            sam = sam_model.trunk(x)
        grad = grad or (torch.is_grad_enabled() and _trains(sam_model.compressor_parameters()))
        with torch.set_grad_enabled(grad):
            sam = sam_model.compress(sam)  # (N, C, g, g)
        grad = grad or (torch.is_grad_enabled() and _trains(self.vision_model.parameters()))
        with torch.set_grad_enabled(grad):
            clip = self.vision_model(patch_embeds=sam)[:, 1:]  # (N, g*g, C)
        N, C, g, _ = sam.shape
        sam = sam.flatten(2).transpose(1, 2)  # (N, g*g, C)
        return sam, clip, self.projector(torch.cat([clip, sam], -1)).view(N, g, g, -1)

    def encode_views(self, x):
        """(N, 3, S, S) views -> (N, g, g, n_embd) projected vision tokens."""
        return self.encode_stages(x)[2]

    def _with_newlines(self, grid):
        # (..., rows, cols, D) -> (..., rows * (cols + 1), D)
        nl = self.image_newline.to(grid.dtype).expand(*grid.shape[:-2], 1, grid.shape[-1])
        x = torch.cat([grid, nl], -2)
        return x.flatten(-3, -2)

    def check_views(self, views):
        sizes = self.config.sizes
        g, c = views.global_views.shape, views.crops.shape
        if len(g) != 4 or g[1] != 3 or g[2] != g[3] or g[3] not in sizes.values():
            raise ValueError(f"global views have shape {tuple(g)}; expected (N, 3, S, S) with S one of "
                             f"{sorted(set(sizes.values()))}")
        n_crops = sum(w * h for w, h in views.tiles if w * h > 1)
        if c[0] != n_crops or (n_crops and tuple(c[1:]) != (3, sizes["small"], sizes["small"])):
            raise ValueError(f"crops have shape {tuple(c)}; the tiles {views.tiles} need "
                             f"({n_crops}, 3, {sizes['small']}, {sizes['small']})")
        if g[0] != len(views.tiles):
            raise ValueError(f"{g[0]} global views but tiles for {len(views.tiles)} images")

    def encode_images(self, views):
        """ViewBatch -> list of (n_tokens_i, n_embd), one per image, in the 2D layout."""
        self.check_views(views)
        glob = self._with_newlines(self.encode_views(views.global_views))  # (N, gg*(gg+1), D)
        sep = self.view_separator.to(glob.dtype)[None]
        local = self.encode_views(views.crops) if views.crops.shape[0] else None
        out, c0 = [], 0
        for i, (w, h) in enumerate(views.tiles):
            parts = []
            if w * h > 1:
                tiles = local[c0:c0 + w * h]  # (h*w, gc, gc, D), row-major tiles
                c0 += w * h
                gc, D = tiles.shape[1], tiles.shape[-1]
                grid = tiles.view(h, w, gc, gc, D).permute(0, 2, 1, 3, 4).reshape(h * gc, w * gc, D)
                parts.append(self._with_newlines(grid))
            parts += [glob[i], sep]
            out.append(torch.cat(parts))
        return out

    def embed(self, idx, vision=None):
        """Decoder input embeddings with the vision tokens written over the <|image|> positions."""
        x = self.gpt.transformer.wte(idx)
        if vision is None:
            return x
        vision = torch.cat(vision) if isinstance(vision, (list, tuple)) else vision
        mask = idx == self.image_token_id
        # the count check costs a host sync (and a graph break under torch.compile), so compiled code skips it
        if not torch.compiler.is_compiling():
            n_slots = int(mask.sum())
            if n_slots != vision.shape[0]:
                raise ValueError(f"the batch has {n_slots} <|image|> placeholders but the images produced "
                                 f"{vision.shape[0]} vision tokens")
        return x.masked_scatter(mask[..., None], vision.to(x.dtype))

    def decoder_ids(self, idx, vision=None):
        """The ids that go beside the embeddings into the decoder: -1 where a vision token sits, since it
        is no vocabulary id (the 2026 decoder then gives it no value embedding and no smear)."""
        if vision is None or self.image_token_id is None:
            return idx
        return idx.masked_fill(idx == self.image_token_id, -1)

    def forward(self, idx, targets=None, views=None, kv_cache=None, loss_reduction="mean", glyphs=None,
                align=None, decode=True):
        """idx (B, T); views: a ViewBatch for the images of all rows in order (None for text-only).
        Training aids from synthetic data, each -1 where unknown; with either, returns (out, {name: summed loss}):
          glyphs (n_vision_tokens, slots): the characters in each vision token's cell (glyph_loss);
          align (2, B, T): the sequence position of the vision token holding the character each position
            reads (row 0: its input character, row 1: the one it predicts), for head 0 of layers 0 and 1.
        decode=False skips the decoder (a glyph-only warm-up of the encoder): the decoder loss is a zero."""
        vision = self.encode_images(views) if views is not None else None
        if not decode:
            return self._zero_loss(), {"glyph": self.glyph_loss(vision, glyphs, loss_reduction)}
        embeds = self.embed(idx, vision)
        out = self.gpt(self.decoder_ids(idx, vision), targets, embeds=embeds, kv_cache=kv_cache,
                       loss_reduction=loss_reduction, align=align)
        if glyphs is None and align is None:
            return out
        aux = {}
        if align is not None:
            out, aux["align"] = out
        if glyphs is not None:
            aux["glyph"] = self.glyph_loss(vision, glyphs, loss_reduction)
        return out, aux

    def _zero_loss(self):
        return self.projector.layers.weight.sum() * 0.0  # a zero in the graph: DDP's every-parameter-has-a-grad rule

    def glyph_loss(self, vision, glyphs, reduction="sum"):
        """Each vision token, read through the decoder's own head, must name the characters drawn in its cell:
        glyphs (n_tokens, slots), slot k read from the token with its channels rolled by k * n_embd / slots (no
        parameters, and slot 0 is the token as it is). A from-scratch encoder gets a label per character instead
        of one per page, and the characters arrive in the decoder already in the directions its head reads out."""
        if vision is None or not len(glyphs):
            return self._zero_loss()
        x, slots = torch.cat(vision), glyphs.shape[1]  # (n_tokens, n_embd)
        return sum(self.gpt.loss(self.glyph_features(x, k, slots), glyphs[:, k], reduction) for k in range(slots))

    def glyph_features(self, x, slot, slots):
        """(n_tokens, n_embd) vision tokens -> what the decoder's head reads (gpt.logits / gpt.loss) to name the
        character in `slot` of their cells."""
        return norm(torch.roll(x, slot * x.shape[-1] // slots, -1))

    def set_trainable(self, parts):
        """requires_grad by part (PARTS); CLIP's pixel conv stays frozen whatever the parts, since DeepEncoder
        never runs it. -> the names of the parameters that train."""
        pixel_conv = self.vision_model.embeddings.patch_embedding.weight
        for name, p in self.named_parameters():
            p.requires_grad_(part_of(name) in parts and p is not pixel_conv)
        return sorted(n for n, p in self.named_parameters() if p.requires_grad)

    def param_counts(self):
        counts = dict.fromkeys(PARTS, 0)
        for name, p in self.named_parameters():
            counts[part_of(name)] += p.numel()
        return counts


def build_model(cfg, tokenizer=None, seed=None, device=None):
    """The one place a fresh model is made: NanoDeepseekOCR of `cfg`, initialised (after torch.manual_seed(seed)
    when a seed is given), built directly on `device` when given (d20 is 962M parameters), and its
    image_token_id taken from the tokenizer (None without one: text-only until a tokenizer is attached)."""
    if seed is not None:
        torch.manual_seed(seed)
    with torch.device(device) if device is not None else nullcontext():
        model = NanoDeepseekOCR(cfg).init_weights()
    model.image_token_id = tokenizer.image_id if tokenizer is not None else None
    return model
