import math

import pytest
import torch
import torch.nn.functional as F

from magvit_pl.commit import (
    Vocab,
    build_inputs,
    build_prefix,
    commit_loss,
    corrupt,
    mask_ratio_schedule,
    masked_accuracy,
    sample_mask,
)
from magvit_pl.run.errors import UserError

VOCAB = Vocab(codebook_size=8, num_classes=3, task_names=("fp", "opc"))
M = VOCAB.mask  # 12

# hand-made grid, N = 8
Z = torch.tensor([[1, 2, 3, 4, 5, 6, 7, 0]])
ZC = torch.tensor([[5, 5, 5, 5, 6, 6, 6, 6]])
COND = torch.tensor([[1, 1, 0, 0, 1, 0, 0, 0]], dtype=torch.bool)
MASK = torch.tensor([[1, 0, 1, 0, 0, 1, 1, 0]], dtype=torch.bool)


def test_vocab_layout():
    v = VOCAB
    assert (v.uncond, v.mask, v.task_id("fp"), v.task_id("opc"), v.size) == (11, 12, 13, 14, 15)
    assert v.class_token(torch.tensor([0, 2])).tolist() == [8, 10]
    assert v.class_token(None, batch_size=3).tolist() == [11, 11, 11]
    assert Vocab.from_dict(v.to_dict()) == v
    with pytest.raises(UserError, match="known: fp, opc"):
        v.task_id("inpainting")
    with pytest.raises(UserError, match=r"\[0, 3\)"):
        v.class_token(torch.tensor([3]))
    with pytest.raises(UserError, match="repeated: fp"):
        Vocab(8, 3, ("fp", "fp"))


def test_schedules():
    f = mask_ratio_schedule
    assert f(0.0).item() == 1.0
    assert f(0.5).item() == pytest.approx(math.cos(math.pi / 4))
    assert f(1.0).item() == pytest.approx(1e-6)  # clamped
    assert f(0.25, "linear").item() == pytest.approx(0.75)
    assert f(0.5, "pow2").item() == pytest.approx(0.75)
    assert f(0.0, "exp", total=16).item() == pytest.approx(1 - 1 / 16)
    assert f(0.5, "log", total=4).item() == pytest.approx(0.5)
    with pytest.raises(UserError, match="cosine"):
        f(0.5, "sigmoid")


def test_sample_mask_counts_and_determinism():
    m = sample_mask(4, 8, r=0.5)  # γ = 0.7071 → ⌊5.66⌋ = 5 per sample
    assert m.sum(1).tolist() == [5, 5, 5, 5]
    assert sample_mask(2, 8, r=0.0).all()
    assert sample_mask(2, 8, r=0.999).sum(1).tolist() == [1, 1]  # at least one
    a = sample_mask(3, 16, torch.Generator().manual_seed(7))
    b = sample_mask(3, 16, torch.Generator().manual_seed(7))
    assert torch.equal(a, b)
    assert len(set(a.sum(1).tolist())) == 1  # one ratio per step
    assert not torch.equal(a[0], a[1])  # positions drawn per sample


def test_sample_mask_ratio_distribution():
    g = torch.Generator().manual_seed(0)
    frac = torch.stack([sample_mask(1, 1000, g).float().mean() for _ in range(400)])
    assert frac.mean().item() == pytest.approx(2 / math.pi, abs=0.03)  # E[cos(π/2·U)] = 2/π


def test_sample_mask_maskable():
    maskable = ~COND.repeat(2, 1)  # 5 maskable positions per sample
    m = sample_mask(2, 8, r=0.5, maskable=maskable)
    assert m.sum(1).tolist() == [3, 3]  # ⌊5·0.707⌋
    assert not (m & COND).any()


def test_corrupt_commit_golden():
    out = corrupt(Z, ZC, COND, MASK, VOCAB)
    # pos: 0 masked∩cond→z̃=5 | 1 cond unmasked→z=2 | 2 masked→MASK | 3 →4 | 4 cond unmasked→5
    #      5 masked→MASK | 6 masked→MASK | 7 → 0
    assert out.tolist() == [[5, 2, M, 4, 5, M, M, 0]]
    # (B, t, h, w) inputs are flattened row-major
    out4 = corrupt(Z.view(1, 2, 2, 2), ZC.view(1, 2, 2, 2), COND.view(1, 2, 2, 2), MASK, VOCAB)
    assert torch.equal(out4, out)


def test_corrupt_naive_golden():
    out = corrupt(Z, ZC, COND, MASK, VOCAB, mode="naive")
    # condition region is always ground truth; masked elsewhere → MASK; no z̃ anywhere
    assert out.tolist() == [[1, 2, M, 4, 5, M, M, 0]]
    with pytest.raises(UserError, match="commit, naive"):
        corrupt(Z, ZC, COND, MASK, VOCAB, mode="prefix")


def _ce(logits, targets, ls=0.0):
    logp = torch.log_softmax(logits, -1)
    nll = -logp.gather(-1, targets[..., None])[..., 0]
    return (1 - ls) * nll + ls * (-logp.mean(-1))


def test_commit_loss_golden():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(1, 8, 8, generator=g)
    ce = _ce(logits, Z)[0]
    refine, masked, recon = [0], [2, 5, 6], [1, 3, 4, 7]
    loss, parts = commit_loss(logits, Z, MASK, COND, label_smoothing=0.0)
    assert loss.item() == pytest.approx(ce.mean().item(), rel=1e-5)  # equal weights: all 8 positions
    assert parts["refine"].item() == pytest.approx(ce[refine].mean().item(), rel=1e-5)
    assert parts["mask"].item() == pytest.approx(ce[masked].mean().item(), rel=1e-5)
    assert parts["recon"].item() == pytest.approx(ce[recon].mean().item(), rel=1e-5)
    assert parts["mask_ratio"].item() == 0.5
    loss, _ = commit_loss(logits, Z, MASK, COND, weights=(2.0, 1.0, 0.0), label_smoothing=0.0)
    expected = (2 * ce[refine].sum() + ce[masked].sum()) / 5
    assert loss.item() == pytest.approx(expected.item(), rel=1e-5)


def test_commit_loss_label_smoothing_prefix_and_batch_mean():
    g = torch.Generator().manual_seed(1)
    z = torch.cat([Z, Z.flip(1)])
    cond, mask = COND.repeat(2, 1), torch.cat([MASK, ~MASK])
    logits = torch.randn(2, 8, 8, generator=g)
    ce = _ce(logits, z, ls=0.1)
    loss, parts = commit_loss(logits, z, mask, cond, weights=(0.0, 1.0, 0.0), label_smoothing=0.1)
    per_sample = [ce[b][mask[b] & ~cond[b]].mean() for b in range(2)]
    assert loss.item() == pytest.approx(((per_sample[0] + per_sample[1]) / 2).item(), rel=1e-5)
    assert parts["mask"].item() == pytest.approx(ce[mask & ~cond].mean().item(), rel=1e-5)
    # a prefix in front of the logits is dropped (prefix positions carry no loss)
    prefixed = torch.cat([torch.randn(2, 2, 8, generator=g) * 100, logits], 1)
    loss2, _ = commit_loss(prefixed, z, mask, cond, weights=(0.0, 1.0, 0.0), label_smoothing=0.1)
    assert loss2.item() == pytest.approx(loss.item(), rel=1e-6)
    # the same as torch's label smoothing
    ref = F.cross_entropy(logits.transpose(1, 2), z, reduction="none", label_smoothing=0.1)
    torch.testing.assert_close(ref, ce)


def test_commit_loss_naive_excludes_condition():
    logits = torch.randn(1, 8, 8, generator=torch.Generator().manual_seed(2))
    ce = _ce(logits, Z)[0]
    naive_mask = MASK & ~COND
    loss, parts = commit_loss(logits, Z, naive_mask, COND, label_smoothing=0.0, mode="naive")
    assert loss.item() == pytest.approx(ce[[2, 3, 5, 6, 7]].mean().item(), rel=1e-5)
    assert parts["refine"].item() == 0.0


def test_loss_backpropagates_only_through_weighted_positions():
    logits = torch.randn(1, 8, 8, requires_grad=True)
    loss, _ = commit_loss(logits, Z, MASK, COND, weights=(0.0, 1.0, 0.0))
    loss.backward()
    touched = logits.grad.abs().sum(-1)[0] > 0
    assert touched.tolist() == [False, False, True, False, False, True, True, False]


def test_build_inputs_and_class_dropout():
    video = corrupt(Z, ZC, COND, MASK, VOCAB)
    seq = build_inputs(video, VOCAB, "opc", labels=torch.tensor([1]))
    assert seq.tolist() == [[14, 9, 5, 2, M, 4, 5, M, M, 0]]
    assert build_inputs(video, VOCAB, "fp")[0, :2].tolist() == [13, 11]  # no label → UNCOND
    labels = torch.zeros(1000, dtype=torch.long)
    assert (build_prefix(VOCAB, "fp", 1000, labels, class_dropout_prob=1.0)[:, 1] == 11).all()
    assert (build_prefix(VOCAB, "fp", 1000, labels, class_dropout_prob=0.0)[:, 1] == 8).all()
    p = build_prefix(VOCAB, "fp", 1000, labels, class_dropout_prob=0.3, generator=torch.Generator().manual_seed(0))
    assert (p[:, 1] == 11).float().mean().item() == pytest.approx(0.3, abs=0.05)
    ids = build_prefix(VOCAB, torch.tensor([13, 14]), 2)
    assert ids.tolist() == [[13, 11], [14, 11]]


def test_masked_accuracy():
    logits = F.one_hot(torch.tensor([[1, 0, 3, 0, 0, 1, 7, 0]]), 8).float()
    # masked positions 0, 2, 5, 6: predictions 1, 3, 1, 7 vs targets 1, 3, 6, 7 → 3/4
    assert masked_accuracy(logits, Z, MASK).item() == 0.75
    assert masked_accuracy(logits, Z, torch.zeros_like(MASK)).item() == 0.0


def test_single_task_layout_has_no_task_token():
    """Official: without multi_task the sequence is [class] + N (maskgvt_train_lib.py:172-195), one special token."""
    from magvit_pl.commit import build_prefix, uncond_prefix

    v = Vocab(codebook_size=8, num_classes=3, task_names=("cg",), task_token=False)
    assert (v.prefix_len, v.uncond, v.mask, v.size) == (1, 11, 12, 13)  # codes, 3 classes, UNCOND, MASK: no task token
    seq = build_inputs(torch.tensor([[1, 2, 3]]), v, "cg", labels=torch.tensor([2]))
    assert seq.tolist() == [[10, 1, 2, 3]]
    assert build_prefix(v, None, 2).tolist() == [[11], [11]]
    assert uncond_prefix(torch.tensor([[10]]), v, "cg").tolist() == [[11]]
    p = build_prefix(v, "cg", 500, torch.zeros(500, dtype=torch.long), class_dropout_prob=1.0)
    assert p.shape == (500, 1) and (p == 11).all()
    with pytest.raises(UserError, match="no task token"):
        v.task_id("cg")
    with pytest.raises(UserError, match="one task only"):
        Vocab(8, 3, ("fp", "cg"), task_token=False)
    assert Vocab.from_dict(v.to_dict()) == v
    old = {"codebook_size": 8, "num_classes": 3, "task_names": ["cg"]}  # written before the layout options
    assert Vocab.from_dict(old).task_token and Vocab.from_dict(old).size == 14


def test_shared_task_tokens_follow_the_official_out_inpainting_sharing():
    from magvit_pl.commit import official_token_keys

    names = ("frame_prediction", "outpainting_central", "inpainting_dynamic", "outpainting_dynamic", "class_generation")
    families = ("prediction", "outpainting", "inpainting", "outpainting", "generation")
    keys = official_token_keys(names, families)
    shared = Vocab(8, 0, names, token_keys=keys)
    own = Vocab(8, 0, names)
    ids = {n: shared.task_id(n) for n in names}
    # MASK = 9; tokens: frame_prediction 10, out/inpainting 11, class_generation 12
    assert ids == {"frame_prediction": 10, "outpainting_central": 11, "inpainting_dynamic": 11, "outpainting_dynamic": 11,
                   "class_generation": 12}
    assert shared.size == 8 + 0 + 2 + 3 and own.size == 8 + 0 + 2 + 5
    assert len({own.task_id(n) for n in names}) == 5  # off: every task its own token
    assert Vocab.from_dict(shared.to_dict()) == shared


def test_official_task_schedule_is_a_fixed_permutation_indexed_by_step():
    from magvit_pl.commit import TaskSchedule, task_counts

    assert task_counts([1, 1, 1]) == [100, 100, 100]  # maskgvt_train_lib.py:332-334
    assert task_counts([2, 1]) == [200, 100] and task_counts([0.5, 1]) == [100, 200]
    with pytest.raises(UserError, match="positive"):
        task_counts([1, 0])
    names = ["a", "b", "c"]
    s = TaskSchedule(names, kind="official", seed=3)
    assert sorted(s.sequence) == sorted(["a"] * 100 + ["b"] * 100 + ["c"] * 100)
    assert [s.task_at(i) for i in range(6)] == s.sequence[1:7]  # the official loop counts steps from 1
    assert s.task_at(299) == s.sequence[0] and s.task_at(5) == s.task_at(5)  # stateless, wraps around
    assert TaskSchedule(names, kind="official", seed=3).sequence == s.sequence  # the seed fixes it
    assert TaskSchedule(names, kind="official", seed=4).sequence != s.sequence
    weighted = TaskSchedule(names, [2.0, 1.0, 1.0], kind="official", seed=0)
    assert weighted.sequence.count("a") == 200 and len(weighted.sequence) == 400


def test_cycle_schedule_keeps_the_weights_and_resumes_exactly():
    import random

    from magvit_pl.commit import TaskSchedule

    names = ["a", "b", "c"]
    s = TaskSchedule(names, seed=0)
    first = [s.task_at(i) for i in range(3)]
    assert sorted(first) == names  # one of each per pass with equal weights
    rng = random.Random(0)  # equal weights reproduce the previous cycle exactly: a shuffled list, popped
    old = list(names)
    rng.shuffle(old)
    assert first == old[::-1]
    w = TaskSchedule(names, [3.0, 1.0, 1.0], seed=1)
    picks = [w.task_at(i) for i in range(50)]  # 10 passes of [a, a, a, b, c]
    assert picks.count("a") == 30 and picks.count("b") == 10
    state = w.state()
    again = TaskSchedule(names, [3.0, 1.0, 1.0], seed=99)
    again.load_state(state)
    assert [again.task_at(0) for _ in range(7)] == [w.task_at(0) for _ in range(7)]
    with pytest.raises(UserError, match="one of cycle, official"):
        TaskSchedule(names, kind="random")
