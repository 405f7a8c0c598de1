"""Procedural video with the statistics of natural video: dead leaves seen by a moving camera.

Why: a tokenizer trained on a few kinds of flat shapes learns those shapes and their colours and turns
real video into colour noise. Natural images are close to a *dead-leaves* process (Lee, Mumford &
Huang 2001; used for pre-training by Baradad et al., NeurIPS 2021, "Learning to See by Looking at
Noise"): opaque objects of random shape and a power-law size distribution (p(r) ∝ r⁻³, which gives the
1/f² power spectrum of natural images) occlude each other in a random depth order. Each object here is
a disk, ellipse, rectangle, blob or triangle with a soft edge (some out of focus), filled with a flat
shaded colour, a 1/f noise texture, stripes or a two-tone pattern that moves with it; colours are
drawn with natural statistics (spread in luminance, mostly small chroma); about a third of the
objects move on their own.

The **class is the camera motion** (:data:`CLASSES`): pan left/right/up/down, zoom in/out, rotate, or a
still camera (objects still move), with a little hand-held drift on top. So class-conditional
generation and frame prediction stay meaningful: the class says where the world goes next.

Rendering is vectorised numpy over (T, H, W): the camera maps each pixel of each frame to world
coordinates, and every object is evaluated there (no resampling of a rendered canvas), so motion is
sub-pixel exact. A clip depends only on its generator; 16×32² takes ~50 ms.
"""
from __future__ import annotations

import numpy as np

CLASSES = ("pan_left", "pan_right", "pan_up", "pan_down", "zoom_in", "zoom_out", "rotate", "still_camera")

NOISE_SIZE = 64  # texels of the periodic noise fields the textures are cut from
SIZE_RANGE = (0.05, 1.0)  # object radius, as a fraction of the frame width (p(r) ∝ r^-3 in between)
OBJECTS = (60, 120)  # objects per clip (enough to cover the view several times)
MOVING_FRACTION = 0.3  # objects that move on their own


def _noise_field(rng: np.random.Generator, alpha: float, n: int = NOISE_SIZE) -> np.ndarray:
    """A periodic (n, n) noise image, zero mean and unit std, with amplitude spectrum ∝ 1/f^alpha."""
    f = np.fft.fftfreq(n)
    radius = np.hypot(*np.meshgrid(f, f))
    radius[0, 0] = 1.0
    spectrum = (rng.standard_normal((n, n)) + 1j * rng.standard_normal((n, n))) / radius**alpha
    spectrum[0, 0] = 0.0
    img = np.real(np.fft.ifft2(spectrum))
    return (img / (img.std() + 1e-8)).astype(np.float32)


def _sample(field: np.ndarray, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Bilinear lookup of the periodic ``field`` at texel coordinates (u, v) (any shape)."""
    n = field.shape[0]
    u0, v0 = np.floor(u), np.floor(v)
    fu, fv = (u - u0).astype(np.float32), (v - v0).astype(np.float32)
    i0, j0 = u0.astype(np.int64) % n, v0.astype(np.int64) % n
    i1, j1 = (i0 + 1) % n, (j0 + 1) % n
    top = field[j0, i0] * (1 - fu) + field[j0, i1] * fu
    bottom = field[j1, i0] * (1 - fu) + field[j1, i1] * fu
    return top * (1 - fv) + bottom * fv


def _colours(rng: np.random.Generator, k: int, chroma: float) -> np.ndarray:
    """``k`` RGB colours in [0, 1], shape (k, 3): luminance spread over the range, chroma ~ N(0, chroma)."""
    y = rng.beta(1.6, 1.6, size=k)
    cb, cr = rng.normal(0, chroma, size=(2, k))
    rgb = np.stack([y + 1.402 * cr, y - 0.344 * cb - 0.714 * cr, y + 1.772 * cb], -1)  # YCbCr -> RGB
    return np.clip(rgb, 0, 1).astype(np.float32)


def camera_path(label: int, t: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, ...]:
    """Centre (cx, cy), zoom (world units per frame width) and rotation (radians) at times ``t`` in [0, 1]."""
    n = len(t)
    cx, cy, zoom, rot = np.zeros(n), np.zeros(n), np.ones(n), np.zeros(n)
    speed = rng.uniform(0.25, 0.6)  # frame widths over the clip
    name = CLASSES[label]
    if name.startswith("pan_"):
        dx, dy = {"pan_left": (-1, 0), "pan_right": (1, 0), "pan_up": (0, -1), "pan_down": (0, 1)}[name]
        cx, cy = dx * speed * t, dy * speed * t
    elif name.startswith("zoom_"):
        factor = np.log(rng.uniform(1.3, 1.9))
        zoom = np.exp((-factor if name == "zoom_in" else factor) * t)
    elif name == "rotate":
        rot = rng.choice([-1.0, 1.0]) * rng.uniform(0.3, 0.7) * t
    drift = rng.normal(0, 0.04, size=2)  # a hand-held camera is never quite still
    return cx + drift[0] * t, cy + drift[1] * t, zoom, rot


def _shape_sdf(kind: int, u: np.ndarray, v: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Signed distance (negative inside, unit size) of shape ``kind`` in object coordinates (u, v)."""
    aspect = rng.uniform(0.4, 1.0)
    if kind == 0:  # disk / ellipse
        return np.sqrt(u * u + (v / aspect) ** 2) - 1.0
    if kind == 1:  # rectangle
        return np.maximum(np.abs(u), np.abs(v) / aspect) - 1.0
    if kind == 2:  # blob: the radius wobbles with the angle
        lobes, amp, phase = rng.integers(2, 6), rng.uniform(0.1, 0.3), rng.uniform(0, 2 * np.pi)
        return np.sqrt(u * u + v * v) - (1.0 + amp * np.sin(lobes * np.arctan2(v, u) + phase))
    return np.maximum(np.abs(u) * 0.866 - v * 0.5, v / aspect) - 0.5  # a triangle


def _fill(base: np.ndarray, u: np.ndarray, v: np.ndarray, fields: list[np.ndarray], chroma: float,
          rng: np.random.Generator) -> np.ndarray:
    """The object's colour (3, T, H, W) at object coordinates (u, v): shaded, textured or striped."""
    base = base[:, None, None, None]
    kind = rng.integers(0, 4)
    if kind == 0:  # flat, with a gentle shading gradient
        g = rng.normal(size=2)
        return base * (1 + 0.12 * (g[0] * u + g[1] * v))[None]
    if kind == 1:  # 1/f texture
        scale = rng.uniform(4, 20)
        noise = _sample(fields[rng.integers(0, 3)], u * scale + rng.uniform(0, NOISE_SIZE), v * scale + rng.uniform(0, NOISE_SIZE))
        return base + rng.uniform(0.05, 0.2) * noise[None]
    other = _colours(rng, 1, chroma)[0][:, None, None, None]
    if kind == 2:  # stripes
        stripes = np.sin(rng.uniform(2, 8) * np.pi * (u + rng.uniform(-0.5, 0.5) * v))
        return base + (other - base) * (0.5 + 0.5 * stripes)[None]
    scale = rng.uniform(3, 10)  # two-tone: thresholded noise
    noise = _sample(fields[rng.integers(0, 2)], u * scale + rng.uniform(0, NOISE_SIZE), v * scale + rng.uniform(0, NOISE_SIZE))
    return base + (other - base) * (np.clip(2 * noise, -1, 1) * 0.5 + 0.5)[None]


def render_clip(label: int, rng: np.random.Generator, num_frames: int = 16, size: int = 64) -> np.ndarray:
    """One clip of class ``label`` (camera motion, see :data:`CLASSES`) as uint8 (T, H, W, 3)."""
    t = np.linspace(0.0, 1.0, num_frames)
    cx, cy, zoom, rot = camera_path(label, t, rng)
    g = ((np.arange(size) + 0.5) / size - 0.5).astype(np.float32)
    gx, gy = np.meshgrid(g, g)  # (H, W) pixel centres, frame width 1, origin at the centre
    c, s, z = np.cos(rot)[:, None, None], np.sin(rot)[:, None, None], zoom[:, None, None]
    wx = (cx[:, None, None] + z * (c * gx - s * gy)).astype(np.float32)  # (T, H, W) world coordinates
    wy = (cy[:, None, None] + z * (s * gx + c * gy)).astype(np.float32)
    pixel = float(zoom.max()) / size  # world units per pixel (the coarsest frame): the edge width
    chroma = rng.uniform(0.05, 0.3)
    fields = [_noise_field(rng, alpha) for alpha in (1.0, 1.5, 2.0)]
    # the background (rarely visible): a smooth two-colour 1/f^2 field fixed in the world
    lo, hi = _colours(rng, 2, chroma)[:, :, None, None, None]
    w = 0.5 + 0.25 * _sample(fields[2], wx * 40 + 7.0, wy * 40 + 3.0)[None]
    canvas = lo * (1 - w) + hi * w  # (3, T, H, W)
    x_lo, x_hi, y_lo, y_hi = wx.min() - 0.3, wx.max() + 0.3, wy.min() - 0.3, wy.max() + 0.3
    n = int(rng.integers(*OBJECTS))
    rmin, rmax = SIZE_RANGE
    radius = 1 / np.sqrt(1 / rmin**2 - rng.uniform(size=n) * (1 / rmin**2 - 1 / rmax**2))  # inverse CDF of r^-3
    colours = _colours(rng, n, chroma)
    for i in rng.permutation(n):  # a random depth order: later objects occlude earlier ones
        r = radius[i]
        x0, y0 = rng.uniform(x_lo, x_hi), rng.uniform(y_lo, y_hi)
        moving = rng.uniform() < MOVING_FRACTION
        vx, vy = rng.normal(0, 0.35, size=2) if moving else (0.0, 0.0)
        angle0, spin = rng.uniform(0, 2 * np.pi), (rng.normal(0, 0.8) if moving else 0.0)
        if (x0 + min(0, vx) - 1.6 * r > x_hi - 0.3 or x0 + max(0, vx) + 1.6 * r < x_lo + 0.3
                or y0 + min(0, vy) - 1.6 * r > y_hi - 0.3 or y0 + max(0, vy) + 1.6 * r < y_lo + 0.3):
            continue  # never in view
        dx = wx - (x0 + vx * t)[:, None, None]
        dy = wy - (y0 + vy * t)[:, None, None]
        angle = (angle0 + spin * t)[:, None, None]
        ca, sa = np.cos(angle), np.sin(angle)
        u, v = (ca * dx + sa * dy) / r, (-sa * dx + ca * dy) / r  # object coordinates, unit size
        sdf = _shape_sdf(int(rng.integers(0, 4)), u, v, rng)
        blur = 1.0 if rng.uniform() < 0.75 else rng.uniform(2.0, 5.0)  # a quarter are out of focus
        alpha = np.clip(0.5 - sdf * r / (pixel * blur), 0.0, 1.0)
        if not alpha.any():
            continue
        canvas += alpha[None] * (_fill(colours[i], u, v, fields, chroma, rng) - canvas)
    video = np.round(np.clip(canvas, 0, 1) * 255).astype(np.uint8).transpose(1, 2, 3, 0)  # (T, H, W, 3)
    return np.ascontiguousarray(video)
