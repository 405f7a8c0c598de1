"""Loss curves a person can read: every logged quantity drawn whatever its sign, on labelled axes."""
from __future__ import annotations

import csv
import math
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from magvit_pl.run.callbacks import LossCurves


def write_metrics(path: Path, steps: int = 60, val: bool = True) -> Path:
    """A metrics.csv as Lightning's CSVLogger writes it: a negative train/loss (the entropy term makes the
    tokenizer's total negative), positive terms spanning six decades, validation rows every 20 steps."""
    rng = np.random.default_rng(0)
    rows = []
    for step in range(0, steps):
        rows.append({"epoch": 0, "step": step, "lr": 1e-4 * min(1.0, (step + 1) / 10),
                     "train/loss": -0.3 + 0.1 * math.exp(-step / 20) + 0.01 * rng.standard_normal(),
                     "train/recon": 0.2 * math.exp(-step / 30) + 0.01, "train/lecam": 1e-7 * (1 + step),
                     "train/q_usage": 0.5 + step / 200})
        if val and step % 20 == 19:
            rows.append({"epoch": 0, "step": step, "val/psnr": 15.0 + step / 10, "val/ssim": 0.3 + step / 1000})
    keys = sorted({k for r in rows for k in r})
    with open(path, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=keys)
        writer.writeheader()
        writer.writerows(rows)
    return path


def _trainer(run_dir: Path) -> SimpleNamespace:
    logger = SimpleNamespace(save=lambda: None, log_dir=str(run_dir))
    return SimpleNamespace(is_global_zero=True, sanity_checking=False, logger=logger, default_root_dir=str(run_dir))


def test_a_negative_loss_is_drawn(tmp_path):
    """The old plotter put train/loss on a log axis and dropped every negative value: a blank image."""
    from matplotlib.image import imread

    rng = np.random.default_rng(1)
    with open(tmp_path / "metrics.csv", "w", newline="") as fh:  # only a negative loss has been logged
        fh.write("epoch,step,train/loss\n" + "".join(f"0,{s},{-0.5 + 0.05 * rng.standard_normal():.5f}\n" for s in range(40)))
    LossCurves().on_validation_end(_trainer(tmp_path), None)
    image = imread(tmp_path / "media" / "loss_curves.png")[..., :3]  # (H, W, 3) floats in [0, 1]
    not_white = (image < 0.9).any(-1)
    assert not_white.mean() > 0.02  # ticks, labels, title, legend and the curve
    # the curve itself, in matplotlib's first colour (#1f77b4) or its faint raw points
    blue = (np.abs(image - np.array([0x1F, 0x77, 0xB4]) / 255).max(-1) < 0.1)
    assert blue.sum() > 300


def test_each_group_gets_a_labelled_panel_with_a_scale_that_shows_it(tmp_path):
    from magvit_pl.run.media import plot_curves, read_metrics_csv

    series = read_metrics_csv(write_metrics(tmp_path / "metrics.csv"))
    assert set(series) == {"lr", "train/loss", "train/recon", "train/lecam", "train/q_usage", "val/psnr", "val/ssim"}
    assert series["val/psnr"] == [(19.0, 16.9), (39.0, 18.9), (59.0, 20.9)]
    fig = plot_curves(series)
    panels = {ax.get_title().split(" (")[0]: ax for ax in fig.axes if ax.get_visible()}
    assert list(panels) == ["train losses", "train diagnostics", "val/psnr", "val/ssim", "lr"]
    # the losses cross from 1e-7 to -0.3: symmetric log; a metric within one decade: linear
    assert panels["train losses"].get_yscale() == "symlog"
    assert panels["val/psnr"].get_yscale() == "linear" and panels["lr"].get_yscale() == "linear"
    legend = [t.get_text() for t in panels["train losses"].get_legend().get_texts()]
    assert legend == ["lecam", "loss", "recon"]
    fig.canvas.draw()
    for ax in panels.values():
        assert ax.get_xlabel() == "step" and ax.get_ylabel()
        assert len([t for t in ax.get_yticklabels() if t.get_text()]) >= 2
        assert ax.get_legend() is not None
    # every value of the negative loss lies inside the drawn y range
    low, high = panels["train losses"].get_ylim()
    assert low <= min(v for _, v in series["train/loss"]) and high >= max(v for _, v in series["train/recon"])


def test_nothing_logged_yet_writes_nothing(tmp_path):
    from magvit_pl.run.media import save_loss_curves

    (tmp_path / "metrics.csv").write_text("epoch,step\n")
    assert save_loss_curves(tmp_path / "metrics.csv", tmp_path / "c.png") is None
    assert not (tmp_path / "c.png").exists()


@pytest.mark.parametrize("names, panels", [
    (["val/acc", "val/acc/frame_prediction", "val/acc/outpainting_central", "train/acc/frame_prediction", "train/loss"],
     {"train losses": ["train/loss"], "train/acc": ["train/acc/frame_prediction"],
      "val/acc": ["val/acc", "val/acc/frame_prediction", "val/acc/outpainting_central"]}),
    (["train/d_gan", "train/logits_real", "train/q_perplexity", "val/fvd", "lr-Adam"],
     {"train losses": ["train/d_gan"], "train diagnostics": ["train/logits_real", "train/q_perplexity"],
      "val/fvd": ["val/fvd"], "lr-Adam": ["lr-Adam"]}),
])
def test_panels_group_quantities_of_one_kind(names, panels):
    from magvit_pl.run.media import curve_panels

    assert curve_panels(names) == panels
