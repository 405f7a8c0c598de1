"""MagvitCLI's links: the clip size is set once on the data and reaches the models; --task reaches eval_task.

Through the real parser and instantiation; the Trainer is never built (the probe stops there).
"""
from pathlib import Path

import pytest

from magvit_pl.run import lightning_cli
from magvit_pl.run.lightning_cli import MagvitCLI, run_lightning

REPO = Path(__file__).resolve().parents[2]


class Built(Exception):
    pass


@pytest.fixture
def built(monkeypatch, tmp_path):
    """``built(*args) -> (model, datamodule)`` as MagvitCLI instantiated them for ``fit ARGS``."""
    def probe(self, **kwargs):
        raise Built(self.model, self.datamodule)

    monkeypatch.setattr(MagvitCLI, "instantiate_trainer", probe)

    def build(*args):
        with pytest.raises(Built) as info:
            run_lightning(["fit", *[str(a) for a in args], "--runs_root", str(tmp_path / "runs")])
        return info.value.args

    return build


def test_the_data_clip_size_reaches_the_mtm(built):
    model, data = built("--config", REPO / "configs" / "mtm.yaml", "--data.init_args.num_frames", "12",
                        "--data.init_args.resolution", "48", "--task", "frame_prediction")
    assert (model.hparams.num_frames, model.hparams.resolution, model.hparams.eval_task) == (12, 48, "frame_prediction")
    assert (data.num_frames, data.resolution) == (12, 48)


def test_a_size_given_for_the_model_is_replaced_by_the_datas(built):
    model, data = built("--config", REPO / "configs" / "mtm.yaml", "--model.init_args.num_frames", "4")
    assert model.hparams.num_frames == data.num_frames == 8


def test_the_data_clip_size_reaches_the_tokenizers_discriminator(built):
    model, _ = built("--config", REPO / "configs" / "tokenizer.yaml", "--data.init_args.num_frames", "6",
                     "--data.init_args.resolution", "24", "--model.init_args.discriminator.init_args.base_channels", "4")
    assert model.discriminator.input_shape == (3, 6, 24, 24)


def test_a_per_frame_tokenizers_discriminator_sees_one_frame_clips(built):
    # the 2D stage of the paper recipe (tokenizer_2d.yaml): every frame is a clip, so the discriminator is 2D-sized
    model, data = built("--config", REPO / "configs" / "tokenizer.yaml", "--model.init_args.per_frame", "true",
                        "--data.init_args.resolution", "24", "--model.init_args.discriminator.init_args.base_channels", "4")
    assert data.num_frames == 8 and model.discriminator.input_shape == (3, 1, 24, 24)


def test_without_task_the_mtm_evaluates_every_trained_task(built):
    model, _ = built("--config", REPO / "configs" / "mtm.yaml")
    assert model.hparams.eval_task is None


def test_the_pre_parser_reads_only_its_options():
    options = lightning_cli._preparse(["--trainer.max_steps", "-1", "-c", "a.yaml", "--config=b.yaml", "--ckpt_path", "x.ckpt",
                                       "--model.init_args.lr", "1", "--kind", "tokenizer", "--seed_everything", "3"])
    assert options.config == ["a.yaml", "b.yaml"] and options.ckpt_path == "x.ckpt" and options.kind == "tokenizer"
    assert options.runs_root is None and options.model is None and options.asks is None
    assert lightning_cli._preparse(["--print_config=skip_null"]).asks == "skip_null"


def test_task_for_a_tokenizer_is_one_line_and_makes_no_run(tmp_path, capsys):
    from magvit_pl.run.cli import main

    with pytest.raises(SystemExit) as exit_info:
        main(["fit", "--config", str(REPO / "configs" / "tokenizer.yaml"), "--task", "frame_prediction",
              "--runs_root", str(tmp_path)])
    err = capsys.readouterr().err.strip()
    assert exit_info.value.code == 2 and err == ("error: --task frame_prediction: only an MTM model "
                                                 "(magvit_pl.lit.mtm.MTMModule) evaluates tasks")
    assert list(tmp_path.iterdir()) == []
