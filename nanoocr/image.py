"""
Resolution modes: how an image becomes views, and how many vision tokens it yields.
This is the one place the token geometry lives (token_grids; the counts and the glyph labels derive from
it); the model's output is tested against it.

  tiny / small : resized to a square view (aspect not kept)
  base / large : padded to a square view (aspect kept, grey padding = the normalisation mean)
  gundam       : local crops of the `small` size on an aspect-matched grid + one padded `base` global view
"""

import math
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image, ImageOps

MODES = ("tiny", "small", "base", "large", "gundam")
PAD_COLOR = (127, 127, 127)  # DeepSeek pads with the mean (0.5) in uint8


def check_mode(mode):
    if mode not in MODES:
        raise ValueError(f"unknown mode {mode!r}; choose one of {', '.join(MODES)}")


COMPRESSION = 4  # the compressor's two 3x3 stride-2 convs: 16x fewer tokens than SAM's patches


def grid_side(size, patch_size):
    # patch conv (stride = patch) then two 3x3 stride-2 pad-1 convs: each halves, rounding up
    return math.ceil((size // patch_size) / COMPRESSION)


def cell_px(cfg):
    """Pixels of a view per vision token, along each side."""
    return COMPRESSION * cfg.sam.patch_size


def choose_tiles(width, height, crop_size, min_crops=2, max_crops=6):
    """Crop grid (w_tiles, h_tiles) whose aspect ratio is closest to the image's (DeepSeek's rule).
    Images that fit in one crop get (1, 1): no local views at all."""
    if width <= crop_size and height <= crop_size:
        return (1, 1)
    aspect = width / height
    grids = sorted({(i, j) for i in range(1, max_crops + 1) for j in range(1, max_crops + 1)
                    if min_crops <= i * j <= max_crops}, key=lambda r: (r[0] * r[1], r))
    best, best_diff = (1, 1), float("inf")
    for w, h in grids:
        diff = abs(aspect - w / h)
        if diff < best_diff:
            best, best_diff = (w, h), diff
        elif diff == best_diff and width * height > 0.5 * crop_size * crop_size * w * h:
            best = (w, h)  # a tie goes to the larger grid when the image has the pixels to fill it
    return best


def token_grids(width, height, mode, cfg):
    """(rows, cols) of each vision-token grid of a width x height image, in the order they are laid out:
    the local crops stitched into one grid (gundam, when the image needs more than one crop), then the
    global view."""
    check_mode(mode)
    patch = cfg.sam.patch_size
    if mode != "gundam":
        g = grid_side(cfg.sizes[mode], patch)
        return [(g, g)]
    gg = grid_side(cfg.sizes["base"], patch)
    w, h = choose_tiles(width, height, cfg.sizes["small"], cfg.min_crops, cfg.max_crops)
    if w * h == 1:
        return [(gg, gg)]
    gc = grid_side(cfg.sizes["small"], patch)
    return [(h * gc, w * gc), (gg, gg)]


def num_image_tokens(width, height, mode, cfg):
    """Vision tokens (incl. row newlines and the view separator) for a width x height image."""
    return sum(rows * (cols + 1) for rows, cols in token_grids(width, height, mode, cfg)) + 1


def vision_grid_tokens(width, height, mode, cfg):
    """Vision tokens that carry pixels (grid cells; no newlines/separator), as the paper counts them."""
    return sum(rows * cols for rows, cols in token_grids(width, height, mode, cfg))


def view_geometry(width, height, mode, cfg):
    """(sx, sy, ox, oy): image pixel (x, y) lands at (x * sx + ox, y * sy + oy) in the global view."""
    check_mode(mode)
    if mode in ("tiny", "small"):
        s = cfg.sizes[mode]
        return s / width, s / height, 0, 0
    s = cfg.sizes["base" if mode == "gundam" else mode]
    # ImageOps.pad: fit the longer side, round the other, centre it
    w, h = (s, round(height / width * s)) if width >= height else (round(width / height * s), s)
    return w / width, h / height, round((s - w) / 2), round((s - h) / 2)


def to_tensor(img):
    # uint8 HWC -> float CHW in [-1, 1] (mean = std = 0.5)
    x = torch.from_numpy(np.asarray(img, dtype=np.uint8).copy()).permute(2, 0, 1)
    return x.float().div_(127.5).sub_(1.0)


@dataclass
class ImageViews:
    global_view: torch.Tensor  # (3, S, S)
    crops: torch.Tensor  # (w_tiles * h_tiles, 3, C, C), empty (0, 3, C, C) without local views
    tiles: tuple  # (w_tiles, h_tiles); (1, 1) means no local views

    @property
    def num_crops(self):
        return self.crops.shape[0]


def make_views(image, mode, cfg):
    """PIL image -> ImageViews for `mode` under config `cfg`."""
    check_mode(mode)
    image = image.convert("RGB")
    if mode in ("tiny", "small"):
        s = cfg.sizes[mode]
        view = image.resize((s, s), Image.BICUBIC)
    else:
        s = cfg.sizes["base" if mode == "gundam" else mode]
        view = ImageOps.pad(image, (s, s), method=Image.BICUBIC, color=PAD_COLOR)
    c = cfg.sizes["small"]
    tiles = (1, 1)
    crops = torch.empty(0, 3, c, c)
    if mode == "gundam":
        tiles = choose_tiles(image.width, image.height, c, cfg.min_crops, cfg.max_crops)
        if tiles[0] * tiles[1] > 1:
            w, h = tiles
            big = to_tensor(image.resize((w * c, h * c), Image.BICUBIC))  # (3, h*c, w*c)
            # row-major tiles: (3, h, c, w, c) -> (h, w, 3, c, c)
            crops = big.view(3, h, c, w, c).permute(1, 3, 0, 2, 4).reshape(h * w, 3, c, c)
    return ImageViews(to_tensor(view), crops, tiles)


@dataclass
class ViewBatch:
    """All views of a batch of images, stacked so each view size is encoded in one pass."""
    global_views: torch.Tensor  # (N, 3, S, S)
    crops: torch.Tensor  # (M, 3, C, C), M = total crops over the batch (may be 0)
    tiles: list  # per image (w_tiles, h_tiles)

    def to(self, device, dtype=None):
        kw = {"non_blocking": True}
        return ViewBatch(self.global_views.to(device, dtype, **kw), self.crops.to(device, dtype, **kw), self.tiles)

    def __len__(self):
        return len(self.tiles)


def collate_views(views):
    if not views:
        return None
    return ViewBatch(torch.stack([v.global_view for v in views]),
                     torch.cat([v.crops for v in views]), [v.tiles for v in views])
