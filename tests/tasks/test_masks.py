"""Golden tests of the ten built-in tasks: pixel masks, latent masks and paddings.

Expected index ranges are written out by hand from MAGVIT §3 and the official cond_utils.py
(centre = [n//4, 3n//4), dynamic left edge = round(linspace(0, w//2, t))).
"""
import pytest
import torch

from magvit_pl.tasks import pool_mask
from magvit_pl_tasks.generation import ClassGeneration
from magvit_pl_tasks.inpainting import InpaintingCentral, InpaintingDynamic
from magvit_pl_tasks.interpolation import FrameInterpolation
from magvit_pl_tasks.outpainting import OutpaintingCentral, OutpaintingDynamic, OutpaintingHorizontal, OutpaintingVertical
from magvit_pl_tasks.prediction import ClassFramePrediction, FramePrediction

ALL = [FramePrediction, ClassFramePrediction, FrameInterpolation, OutpaintingCentral, OutpaintingVertical,
       OutpaintingHorizontal, OutpaintingDynamic, InpaintingCentral, InpaintingDynamic, ClassGeneration]

CENTRE = {64: (16, 48), 128: (32, 96), 16: (4, 12), 32: (8, 24), 8: (2, 6)}
# left edge of the W/2 stripe per frame, round(k * (W/2) / (T-1)) written out by hand
STARTS = {
    (16, 64): [0, 2, 4, 6, 9, 11, 13, 15, 17, 19, 21, 23, 26, 28, 30, 32],
    (16, 128): [0, 4, 9, 13, 17, 21, 26, 30, 34, 38, 43, 47, 51, 55, 60, 64],
    (4, 16): [0, 3, 5, 8],  # latent 4x16x16: (16x64², ds 4,4,4) and (16x128², ds 4,8,8)
    (4, 32): [0, 5, 11, 16],  # latent of 16x128² with ds (4,4,4)
    (4, 8): [0, 1, 3, 4],  # latent of 16x64² with ds (4,8,8)
}


def clip(b=1, t=16, s=64, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(b, 3, t, s, s, generator=g) * 2 - 1


def expected(task_cls, t, n):
    """Hand-built bool (t, n, n) given-mask for a square grid of side n with t frames."""
    m = torch.zeros(t, n, n, dtype=torch.bool)
    lo, hi = CENTRE[n]
    if task_cls in (OutpaintingCentral,):
        m[:, lo:hi, lo:hi] = True
    elif task_cls is OutpaintingVertical:
        m[:, :, lo:hi] = True
    elif task_cls is OutpaintingHorizontal:
        m[:, lo:hi, :] = True
    elif task_cls is InpaintingCentral:
        m[:] = True
        m[:, lo:hi, lo:hi] = False
    elif task_cls is OutpaintingDynamic:
        for i, s in enumerate(STARTS[(t, n)]):
            m[i, :, s : s + n // 2] = True
    elif task_cls is InpaintingDynamic:
        m[:] = True
        for i, s in enumerate(STARTS[(t, n)]):
            m[i, lo:hi, s : s + n // 2] = False
    return m


SPATIAL = [OutpaintingCentral, OutpaintingVertical, OutpaintingHorizontal, OutpaintingDynamic,
           InpaintingCentral, InpaintingDynamic]


@pytest.mark.parametrize("size", [64, 128])
@pytest.mark.parametrize("task_cls", SPATIAL)
def test_spatial_pixel_masks(task_cls, size):
    cond = task_cls().build_condition(clip(b=2, s=size))
    assert cond.pixel_mask.shape == (2, 1, 16, size, size) and cond.pixel_mask.dtype == torch.bool
    want = expected(task_cls, 16, size)
    assert torch.equal(cond.pixel_mask[0, 0], want)
    assert torch.equal(cond.pixel_mask[1, 0], want)


def test_outpainting_central_64_exact_rows_cols():
    m = OutpaintingCentral().build_condition(clip()).pixel_mask[0, 0, 5]
    rows = m.any(1).nonzero().flatten().tolist()
    cols = m.any(0).nonzero().flatten().tolist()
    assert rows == list(range(16, 48)) and cols == list(range(16, 48))
    assert m.sum().item() == 32 * 32


def test_dynamic_stripe_moves_from_left_to_right_edge():
    m = OutpaintingDynamic().build_condition(clip(s=128)).pixel_mask[0, 0]  # (T, H, W)
    assert m[0, 0].nonzero().flatten().tolist() == list(range(0, 64))
    assert m[-1, 0].nonzero().flatten().tolist() == list(range(64, 128))
    assert m[7, 0].nonzero().flatten().tolist() == list(range(30, 94))
    hole = ~InpaintingDynamic().build_condition(clip(s=128)).pixel_mask[0, 0]
    assert hole[7].any(1).nonzero().flatten().tolist() == list(range(32, 96))  # rows [H/4, 3H/4)
    assert hole[7].any(0).nonzero().flatten().tolist() == list(range(30, 94))


@pytest.mark.parametrize("size", [64, 128])
def test_frame_masks(size):
    v = clip(s=size)
    fp = FramePrediction().build_condition(v).pixel_mask[0, 0]
    assert fp.flatten(1).all(1).tolist() == [True] + [False] * 15
    assert fp.flatten(1).any(1).tolist() == [True] + [False] * 15
    fp5 = FramePrediction(num_cond_frames=5).build_condition(v).pixel_mask[0, 0]
    assert fp5.flatten(1).all(1).tolist() == [True] * 5 + [False] * 11
    fi = FrameInterpolation().build_condition(v).pixel_mask[0, 0]
    assert fi.flatten(1).all(1).tolist() == [True] + [False] * 14 + [True]
    assert not fi[1:15].any()
    assert not ClassGeneration().build_condition(v).pixel_mask.any()
    assert torch.equal(ClassFramePrediction().build_condition(v).pixel_mask[0, 0], fp)


# ------------------------------------------------------------------------------- latent masks
@pytest.mark.parametrize("size,ds", [(64, (4, 4, 4)), (128, (4, 8, 8)), (64, (4, 8, 8)), (128, (4, 4, 4))])
@pytest.mark.parametrize("task_cls", SPATIAL)
def test_spatial_latent_masks_task_rule(task_cls, size, ds):
    task = task_cls()
    cond = task.build_condition(clip(b=2, s=size))
    lat = task.latent_mask(cond.pixel_mask, ds)
    n = size // ds[1]
    assert lat.shape == (2, 4, n, n)
    assert torch.equal(lat[1], expected(task_cls, 4, n))
    if task_cls not in (OutpaintingDynamic, InpaintingDynamic):
        # patch-aligned static boxes: the official rule, 'any' and 'all' agree
        assert torch.equal(lat, pool_mask(cond.pixel_mask, ds, "any"))
        assert torch.equal(lat, pool_mask(cond.pixel_mask, ds, "all"))


def test_dynamic_latent_rules_differ_from_official():
    task = OutpaintingDynamic()
    pm = task.build_condition(clip()).pixel_mask
    official = task.latent_mask(pm, (4, 4, 4))[0, 0, 0]  # first latent frame, first row
    assert official.nonzero().flatten().tolist() == list(range(0, 8))
    # the stripe starts at 0,2,4,6 in pixel frames 0..3: union cols [0,38), intersection [6,32)
    any_ = OutpaintingDynamic(latent_rule="any").latent_mask(pm, (4, 4, 4))[0, 0, 0]
    all_ = OutpaintingDynamic(latent_rule="all").latent_mask(pm, (4, 4, 4))[0, 0, 0]
    assert any_.nonzero().flatten().tolist() == list(range(0, 10))
    assert all_.nonzero().flatten().tolist() == list(range(2, 8))


@pytest.mark.parametrize("size,ds", [(64, (4, 4, 4)), (128, (4, 8, 8))])
def test_frame_latent_masks(size, ds):
    v = clip(s=size)
    for task, frames in [(FramePrediction(), [1, 0, 0, 0]), (FramePrediction(num_cond_frames=5), [1, 1, 0, 0]),
                         (ClassFramePrediction(), [1, 0, 0, 0]), (FrameInterpolation(), [1, 0, 0, 1])]:
        lat = task.latent_mask(task.build_condition(v).pixel_mask, ds)
        assert lat.shape == (1, 4, 16, 16)
        assert lat.flatten(2).all(2)[0].tolist() == [bool(f) for f in frames]
        assert lat.flatten(2).any(2)[0].tolist() == [bool(f) for f in frames]
    # the whole-patch rule would leave frame prediction from one frame without condition tokens
    fp_all = FramePrediction(latent_rule="all")
    assert not fp_all.latent_mask(fp_all.build_condition(v).pixel_mask, ds).any()
    fp5_all = FramePrediction(num_cond_frames=5, latent_rule="all")
    assert fp5_all.latent_mask(fp5_all.build_condition(v).pixel_mask, ds).flatten(2).all(2)[0].tolist() == [True, False, False, False]
    cg = ClassGeneration()
    assert not cg.latent_mask(cg.build_condition(v).pixel_mask, ds).any()


# ------------------------------------------------------------------------------- paddings
def ramp(t=4, h=8, w=8):
    """(1, 1, T, H, W) with value (100 t + 10 h + w) / 1000: every pixel distinct and readable."""
    tt, hh, ww = torch.meshgrid(torch.arange(t), torch.arange(h), torch.arange(w), indexing="ij")
    return ((100 * tt + 10 * hh + ww).float() / 1000)[None, None]


def val(t, h, w):
    return (100 * t + 10 * h + w) / 1000


def test_frame_prediction_repeats_last_given_frame():
    v = ramp()
    c = FramePrediction().build_condition(v).video[0, 0]
    for t in range(4):
        assert torch.equal(c[t], v[0, 0, 0])
    c2 = FramePrediction(num_cond_frames=2).build_condition(v).video[0, 0]
    assert torch.equal(c2[0], v[0, 0, 0]) and torch.equal(c2[1], v[0, 0, 1])
    assert torch.equal(c2[2], v[0, 0, 1]) and torch.equal(c2[3], v[0, 0, 1])


def test_frame_interpolation_blends_linearly():
    v = torch.zeros(1, 3, 5, 2, 2)
    v[:, :, 0] = -1.0
    v[:, :, 4] = 1.0
    v[:, :, 1:4] = 0.7  # hidden frames must not leak
    c = FrameInterpolation().build_condition(v).video
    assert c[0, :, :, 0, 0].tolist() == [[-1.0, -0.5, 0.0, 0.5, 1.0]] * 3
    # two given frames at each end: blend between frame 1 and frame T-2
    v6 = ramp(t=6, h=2, w=2)
    c6 = FrameInterpolation(num_cond_frames=2).build_condition(v6).video[0, 0, :, 1, 1]
    want = [val(0, 1, 1), val(1, 1, 1), val(1, 1, 1) + (val(4, 1, 1) - val(1, 1, 1)) / 3,
            val(1, 1, 1) + 2 * (val(4, 1, 1) - val(1, 1, 1)) / 3, val(4, 1, 1), val(5, 1, 1)]
    assert torch.allclose(c6, torch.tensor(want), atol=1e-6)


def test_outpainting_edge_replication():
    v = ramp()  # 8x8: centre rows/cols [2, 6)
    c = OutpaintingCentral().build_condition(v).video[0, 0]
    assert c[1, 0, 0].item() == pytest.approx(val(1, 2, 2))
    assert c[1, 7, 7].item() == pytest.approx(val(1, 5, 5))
    assert c[2, 0, 3].item() == pytest.approx(val(2, 2, 3))
    assert c[3, 4, 7].item() == pytest.approx(val(3, 4, 5))
    assert torch.equal(c[:, 2:6, 2:6], v[0, 0, :, 2:6, 2:6])
    want = torch.tensor([[[val(t, min(max(h, 2), 5), min(max(w, 2), 5)) for w in range(8)] for h in range(8)]
                         for t in range(4)])
    assert torch.allclose(c, want)
    cv = OutpaintingVertical().build_condition(v).video[0, 0]
    assert cv[0, 0, 0].item() == pytest.approx(val(0, 0, 2)) and cv[0, 7, 7].item() == pytest.approx(val(0, 7, 5))
    ch = OutpaintingHorizontal().build_condition(v).video[0, 0]
    assert ch[0, 0, 0].item() == pytest.approx(val(0, 2, 0)) and ch[0, 7, 7].item() == pytest.approx(val(0, 5, 7))
    cc = OutpaintingCentral(padding="constant", pad_value=0.0).build_condition(v).video[0, 0]
    assert cc[0, 0, 0].item() == 0.0 and cc[0, 3, 3].item() == pytest.approx(val(0, 3, 3))


def test_zero_padding_is_black_by_default():
    v = ramp(t=4, h=8, w=8)  # dynamic starts on 4 frames of width 8: round(linspace(0, 4, 4)) = 0, 1, 3, 4
    c = OutpaintingDynamic().build_condition(v).video[0, 0]
    assert c[0, 0].tolist() == pytest.approx([val(0, 0, w) for w in range(4)] + [-1.0] * 4)
    assert c[2, 5].tolist() == pytest.approx([-1.0] * 3 + [val(2, 5, w) for w in range(3, 7)] + [-1.0])
    ci = InpaintingCentral().build_condition(v).video[0, 0]
    assert (ci[:, 2:6, 2:6] == -1.0).all()
    assert ci[3, 1, 4].item() == pytest.approx(val(3, 1, 4))
    cd = InpaintingDynamic(pad_value=0.0).build_condition(v).video[0, 0]
    assert cd[3, 2].tolist() == pytest.approx([val(3, 2, w) for w in range(4)] + [0.0] * 4)
    assert cd[3, 1].tolist() == pytest.approx([val(3, 1, w) for w in range(8)])
    cg = ClassGeneration().build_condition(v).video
    assert (cg == -1.0).all()


# ------------------------------------------------------------------------------- batch behaviour
@pytest.mark.parametrize("task_cls", ALL)
def test_vectorised_and_deterministic(task_cls):
    one = clip(b=1, t=8, s=32, seed=3)
    three = one.expand(3, -1, -1, -1, -1).clone()
    task = task_cls()
    a = task.build_condition(three, generator=torch.Generator().manual_seed(1))
    b = task.build_condition(three, generator=torch.Generator().manual_seed(2))
    s = task.build_condition(one)
    assert torch.equal(a.video, b.video) and torch.equal(a.pixel_mask, b.pixel_mask)
    for i in range(3):
        assert torch.equal(a.video[i], s.video[0]) and torch.equal(a.pixel_mask[i], s.pixel_mask[0])
    # given pixels are copied exactly, shapes are kept
    assert a.video.shape == three.shape
    m = a.pixel_mask.expand_as(three)
    assert torch.equal(a.video[m], three[m])
    lat = task.latent_mask(a.pixel_mask, (4, 8, 8))
    assert lat.shape == (3, 2, 4, 4) and lat.dtype == torch.bool
    assert torch.equal(lat[0], lat[2])
