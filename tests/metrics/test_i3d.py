"""I3D: TF "SAME" padding, -inf max-pool padding, BatchNorm folding, and the real Kinetics-400 network."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from magvit_pl.run.errors import UserError
from magvit_pl.metrics.i3d import I3D, MaxPoolSame, Unit3D, same_pad


@pytest.mark.parametrize(
    "n, k, s, expected",
    [
        (224, 7, 2, [2, 3]),  # out 112: total (111·2 + 7 − 224) = 5, the odd one at the end
        (16, 7, 2, [2, 3]),
        (9, 3, 2, [1, 1]),
        (8, 2, 2, [0, 0]),
        (7, 3, 1, [1, 1]),
        (10, 3, 2, [0, 1]),  # out 5: total 1 → all of it at the end
    ],
)
def test_same_pad_matches_tf(n, k, s, expected):
    assert same_pad((n,), (k,), (s,)) == expected
    assert -(-n // s) == (n + sum(expected) - k) // s + 1  # output size ceil(n / s), as in TF


def test_same_pad_orders_dims_like_f_pad():
    # (T, H, W) = (9, 224, 10) → F.pad order: W first, then H, then T
    assert same_pad((9, 224, 10), (3, 7, 3), (2, 2, 2)) == [0, 1, 2, 3, 1, 1]


def test_max_pool_pads_with_minus_inf():
    x = -1 - torch.rand(1, 2, 3, 4, 4)  # all values below -1
    y = MaxPoolSame((3, 3, 3), (1, 1, 1))(x)
    assert y.shape == x.shape
    assert y.max() < -1  # zero padding would have produced 0 at the borders
    assert torch.equal(y[0, 0, 0, 0, 0], x[0, 0, :2, :2, :2].max())


def _fake_tree(model: I3D, seed: int = 0) -> dict:
    """A Sonnet-style tree with random values and the real names/shapes, built from the module."""
    rng = np.random.default_rng(seed)
    params: dict = {}
    stats: dict = {}

    def put(table: dict, key: str, value: np.ndarray) -> None:
        *scopes, leaf = key.split("/")
        for s in scopes:
            table = table.setdefault(s, {})
        table[leaf] = value.astype(np.float32)

    def unit(u: Unit3D, scope: str, bn: bool = True) -> None:
        o, i, t, h, w = u.conv.weight.shape
        put(params, f"{scope}/Conv_0/kernel", rng.normal(0, 0.1, (t, h, w, i, o)))
        if bn:
            put(params, f"{scope}/BatchNorm_0/bias", rng.normal(0, 0.1, o))
            put(stats, f"{scope}/BatchNorm_0/mean", rng.normal(0, 0.1, (1, 1, 1, 1, o)))
            put(stats, f"{scope}/BatchNorm_0/var", rng.uniform(0.5, 2, (1, 1, 1, 1, o)))
        else:
            put(params, f"{scope}/Conv_0/bias", rng.normal(0, 0.1, o))

    for name, layer in zip(model.names, model.features):
        if isinstance(layer, Unit3D):
            unit(layer, name)
        elif hasattr(layer, "b0"):
            for attr, b in [("b0", "Branch_0/Conv3d_0a_1x1"), ("b1a", "Branch_1/Conv3d_0a_1x1"),
                            ("b1b", "Branch_1/Conv3d_0b_3x3"), ("b2a", "Branch_2/Conv3d_0a_1x1"),
                            ("b2b", "Branch_2/Conv3d_0b_3x3"), ("b3", "Branch_3/Conv3d_0b_1x1")]:
                unit(getattr(layer, attr), f"{name}/{b}")
    unit(model.logits, "Logits/Conv3d_0c_1x1", bn=False)
    return {"params": params, "batch_stats": stats}


def test_batchnorm_folding_matches_conv_then_bn():
    torch.manual_seed(0)
    model = I3D()
    tree = _fake_tree(model)
    model.load_sonnet(tree)
    p, s = tree["params"]["Conv3d_2c_3x3"], tree["batch_stats"]["Conv3d_2c_3x3"]
    x = torch.randn(1, 64, 3, 5, 6)
    kernel = torch.from_numpy(p["Conv_0"]["kernel"]).permute(4, 3, 0, 1, 2)
    ref = F.conv3d(F.pad(x, [1, 1, 1, 1, 1, 1]), kernel)  # stride 1, k 3: SAME = 1 each side
    mean = torch.from_numpy(s["BatchNorm_0"]["mean"]).flatten()
    var = torch.from_numpy(s["BatchNorm_0"]["var"]).flatten()
    beta = torch.from_numpy(p["BatchNorm_0"]["bias"])
    ref = F.relu(F.batch_norm(ref, mean, var, None, beta, training=False, eps=1e-3))
    unit = model.features[model.names.index("Conv3d_2c_3x3")]
    torch.testing.assert_close(unit(x), ref, rtol=1e-4, atol=1e-5)
    # the logits layer has a bias and no BatchNorm
    torch.testing.assert_close(model.logits.conv.bias, torch.from_numpy(tree["params"]["Logits"]["Conv3d_0c_1x1"]["Conv_0"]["bias"]))


def test_load_rejects_wrong_trees():
    model = I3D()
    tree = _fake_tree(model)
    del tree["params"]["Mixed_4c"]["Branch_2"]
    with pytest.raises(UserError, match="Mixed_4c/Branch_2"):
        model.load_sonnet(tree)
    tree = _fake_tree(model)
    tree["params"]["Extra"] = {"Conv_0": {"kernel": np.zeros(1, np.float32)}}
    with pytest.raises(UserError, match="unexpected"):
        model.load_sonnet(tree)
    with pytest.raises(UserError, match="params"):
        model.load_sonnet({"params": {}})


def test_too_few_frames_is_refused():
    with pytest.raises(UserError, match="at least 9 frames"):
        I3D()(torch.zeros(1, 3, 8, 224, 224))


def test_kinetics_arm_wrestling_top1(md):
    """The real network on a real Kinetics clip: 16 frames, centre 224² crop of the 340×256 video."""
    torch.set_num_threads(1)
    classes = md.DATA / "kinetics400_classes.txt"
    if not classes.is_file():
        pytest.skip("kinetics400_classes.txt not available")
    md.clip_path("kinetics_arm_wrestling.mp4")
    model = I3D.from_pretrained(md.weights_or_skip("i3d"))
    frames = md.read_frames("kinetics_arm_wrestling.mp4", 16, start=0, step=2)  # (16, 256, 340, 3)
    x = md.to_video(frames[:, 16:240, 58:282])[None]  # (1, 3, 16, 224, 224)
    with torch.no_grad():
        probs = model(x).softmax(-1)[0]
    names = classes.read_text().splitlines()
    assert len(names) == 400
    assert names[int(probs.argmax())] == "arm wrestling"
    assert probs.max() > 0.9
    print(f"arm wrestling top-1 probability {probs.max():.4f}")
