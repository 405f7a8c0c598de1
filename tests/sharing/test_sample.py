"""``python cli.py sample``: N clips per task (per class for class generation) written losslessly as PNG frame folders,
FFV1 .mkv or .npz; every file reads back as exactly the clip the model generates with the seed ``samples.json``
records; the real clips of conditional tasks go next to them under the same names (paired sets for ``fvd``)."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from magvit_pl.run.clipsets import ClipSet, ClipSpec
from magvit_pl.data.transforms import tensor_to_frames
from magvit_pl.pretrained import from_pretrained


def read_set(path, frames: int = 8) -> dict[str, np.ndarray]:
    return {c.name: c.frames for c in ClipSet(path, "--test").clips(ClipSpec(num_frames=frames))}


def test_class_generation_writes_n_per_class_bit_exact_with_recorded_seeds(folders, tmp_path, run_cli):
    out = tmp_path / "samples"
    code, err = run_cli(["sample", "--task", "class_generation", "--num", "2", "--class_ids", "[1, 4]", "--output", out,
                         "--ckpt_path", folders["mtm"], "--batch_size", "3", "--seed", "11"])
    assert code == 0, err
    written = read_set(out / "class_generation" / "generated")
    assert sorted(written) == ["class001_00000", "class001_00001", "class004_00000", "class004_00001"]
    assert len(list((out / "class_generation" / "generated" / "class004_00001").glob("*.png"))) == 8
    record = json.loads((out / "samples.json").read_text())["tasks"]["class_generation"]
    assert [(c["name"], c["class_id"], c["seed"], c["batch"]) for c in record["clips"]] == [
        ("class001_00000", 1, 11, 0), ("class001_00001", 1, 11, 0), ("class004_00000", 4, 11, 0), ("class004_00001", 4, 12, 1)]
    assert record["command"].startswith("python cli.py sample --task class_generation --num 2") and record["steps"] == 4

    model = from_pretrained(folders["mtm"])
    for labels, seed, names in (([1, 1, 4], 11, ["class001_00000", "class001_00001", "class004_00000"]), ([4], 12, ["class004_00001"])):
        batch = {"video": torch.zeros(len(labels), 3, 8, 32, 32), "label": torch.tensor(labels)}
        generated = tensor_to_frames(model.generate(batch, "class_generation", seed=seed, steps=4).generated)
        for name, clip in zip(names, generated):
            assert np.array_equal(written[name], clip), name  # lossless, and the seed reproduces it

    code, err = run_cli(["sample", "--task", "class_generation", "--num", "1", "--output", out, "--ckpt_path", folders["mtm"]])
    assert code == 2 and len(err) == 1 and "exists; pass --overwrite true" in err[0], err
    for args, message in ((["--num", "0"], "--num 0: must be >= 1"), (["--class_ids", "[8]"], "each must be in 0..7"),
                          (["--task", "nope"], "nope")):
        code, err = run_cli(["sample", "--task", "class_generation", "--num", "1", "--output", tmp_path / "x",
                             "--ckpt_path", folders["mtm"], *args])
        assert code == 2 and len(err) == 1 and err[0].startswith("error: ") and message in err[0], err


@pytest.mark.parametrize("fmt", ["mkv", "npz"])
def test_conditional_tasks_write_generated_and_real_clips_as_paired_sets(fmt, tiny_models, folders, tmp_path, run_cli):
    from magvit_pl.run.evaluate import compare_sets

    out = tmp_path / "samples"
    code, err = run_cli(["sample", "--task", "frame_prediction", "--num", "3", "--output", out, "--ckpt_path", folders["mtm"],
                         "--format", fmt, "--batch_size", "2"])  # conditions: the test split the model was trained on
    assert code == 0, err
    task = out / "frame_prediction"
    generated, real = (read_set(task / (f"{side}.npz" if fmt == "npz" else side)) for side in ("generated", "real"))
    assert sorted(generated) == sorted(real) == ["00000", "00001", "00002"]
    conditions = list(ClipSet(tiny_models.data, "--input", "test").clips(ClipSpec(8, resolution=32), limit=3))
    assert all(np.array_equal(real[f"{i:05d}"], c.frames) for i, c in enumerate(conditions))
    record = json.loads((out / "samples.json").read_text())["tasks"]["frame_prediction"]
    assert [c["source"] for c in record["clips"]] == [c.name for c in conditions] and record["condition"]["split"] == "test"

    model = from_pretrained(folders["mtm"])
    videos = torch.stack([torch.from_numpy(c.frames).permute(3, 0, 1, 2).float() / 127.5 - 1 for c in conditions])
    for start, seed in ((0, 0), (2, 1)):
        batch = {"video": videos[start : start + 2], "label": torch.zeros(len(videos[start : start + 2]), dtype=torch.long)}
        for j, clip in enumerate(tensor_to_frames(model.generate(batch, "frame_prediction", seed=seed, steps=4).generated)):
            assert np.array_equal(generated[f"{start + j:05d}"], clip)
    assert np.array_equal(np.asarray([c["seed"] for c in record["clips"]]), [0, 0, 1])

    # the two folders are a paired set for `fvd` (stand-in features: no weights needed here)
    sides = [str(task / (f"{s}.npz" if fmt == "npz" else s)) for s in ("real", "generated")]
    result = compare_sets(*sides, ClipSpec(num_frames=8), fvd_kwargs={"extractor": lambda x: x.mean((2, 3, 4)), "resize": 8, "min_frames": 8})
    assert result["protocol"]["num_real"] == result["protocol"]["num_fake"] == 3 and result["fvd"] >= 0
