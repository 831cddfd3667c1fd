"""
Scanner augmentation of a synthetic page: a small rotation and perspective warp (boxes and glyph centres
move with the page), paper tone, blur and noise, JPEG. A pure function of its random generator.
"""

import io
import math

import numpy as np
from PIL import Image, ImageFilter

# ----------------------------------------------------------------------------- augmentation

def _homography(src, dst):
    a, b = [], []
    for (x, y), (u, v) in zip(src, dst):
        a += [[x, y, 1, 0, 0, 0, -u * x, -u * y], [0, 0, 0, x, y, 1, -v * x, -v * y]]
        b += [u, v]
    return np.append(np.linalg.solve(np.array(a, float), np.array(b, float)), 1.0).reshape(3, 3)


def _warp(img, boxes, glyphs, rng, s, paper, rotate, perspective, shear=0.0):
    """Rotation, corner jitter and/or a horizontal shear (x += shear * height above the centre) as one homography;
    boxes follow (axis-aligned hull of their corners), and so do glyph centres."""
    W, H = img.size
    src = np.array([[0, 0], [W, 0], [W, H], [0, H]], float)
    dst = src - (W / 2, H / 2)
    dst[:, 0] -= shear * dst[:, 1]
    if rotate:
        a = math.radians(rng.uniform(-2, 2) * s)
        dst = dst @ np.array([[math.cos(a), -math.sin(a)], [math.sin(a), math.cos(a)]])
    if perspective:
        j = 0.015 * s * max(W, H)
        dst = dst + np.array([[rng.uniform(-j, j), rng.uniform(-j, j)] for _ in range(4)])
    dst -= dst.min(0)
    size = tuple(int(math.ceil(v)) for v in dst.max(0))
    h = _homography(src, dst)
    inv = np.linalg.inv(h)
    img = img.transform(size, Image.PERSPECTIVE, tuple((inv / inv[2, 2]).flatten()[:8]), Image.BILINEAR,
                        fillcolor=paper)
    out = []
    for label, (x1, y1, x2, y2) in boxes:
        p = np.array([[x1, y1, 1], [x2, y1, 1], [x2, y2, 1], [x1, y2, 1]], float) @ h.T
        p = p[:, :2] / p[:, 2:]
        lo, hi = np.floor(p.min(0)), np.ceil(p.max(0))
        out.append((label, (int(max(0, lo[0])), int(max(0, lo[1])), int(min(size[0], hi[0])),
                            int(min(size[1], hi[1])))))
    if glyphs:
        p = np.array([[x, y, 1] for _, x, y in glyphs], float) @ h.T
        glyphs = [(c, float(u), float(v)) for (c, _, _), (u, v) in zip(glyphs, p[:, :2] / p[:, 2:])]
    return img, out, glyphs


def slant(img, boxes, glyphs, rng, paper):
    """A synthetic oblique: the page sheared right by 6-14 degrees, as an italic or oblique face leans."""
    return _warp(img, boxes, glyphs, rng, 0.0, paper, False, False, shear=math.tan(math.radians(rng.uniform(6, 14))))


def augment(img, boxes, glyphs, rng, strength, paper):
    """Scanner/camera defects scaled by strength in [0, 1]; the text is untouched, boxes and glyph centres
    follow geometry."""
    if strength <= 0:
        return img, boxes, glyphs
    s = strength
    rotate, perspective = rng.random() < 0.5, rng.random() < 0.3
    if rotate or perspective:
        img, boxes, glyphs = _warp(img, boxes, glyphs, rng, s, paper, rotate, perspective)
    if rng.random() < 0.3:
        img = img.filter(ImageFilter.GaussianBlur(rng.uniform(0.2, 0.2 + 0.6 * s)))
    lighting, noise = rng.random() < 0.4, rng.random() < 0.5
    if lighting or noise:
        a = np.asarray(img, dtype=np.float32)
        nrng = np.random.default_rng(rng.getrandbits(63))
        if lighting:  # a linear shadow across the page in a random direction
            H, W = a.shape[:2]
            t = rng.uniform(0, 2 * math.pi)
            g = np.cos(t) * np.linspace(0, 1, W, dtype=np.float32)[None, :] \
                + np.sin(t) * np.linspace(0, 1, H, dtype=np.float32)[:, None]
            g = (g - g.min()) / max(1e-6, float(g.max() - g.min()))
            a *= (1 - rng.uniform(0.05, 0.3) * s * g)[:, :, None]
        if noise:
            a += nrng.normal(0, rng.uniform(2, 2 + 10 * s), a.shape[:2])[:, :, None]
        img = Image.fromarray(np.clip(a, 0, 255).astype(np.uint8))
    if rng.random() < 0.3:
        buf = io.BytesIO()
        img.save(buf, "JPEG", quality=rng.randint(int(90 - 55 * s), 92))
        img = Image.open(io.BytesIO(buf.getvalue())).convert("RGB")
    return img, boxes, glyphs


