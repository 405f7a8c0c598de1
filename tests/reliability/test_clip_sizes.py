"""A checkpoint trained on other clip sizes than the data gives: one line, before anything is built.

The data's ``num_frames``/``resolution`` are linked into the MTM, so without this check the model would be
sized after the data and its weights would not fit (a traceback from ``load_state_dict``)."""
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def test_test_with_a_checkpoint_of_other_clip_sizes_is_one_line(checkpoints, cli_error, tmp_path, data_args):
    ckpt = checkpoints.mtm(num_frames=8)
    line = cli_error(["test", "--config", str(REPO / "configs" / "mtm.yaml"), "--ckpt_path", str(ckpt), *data_args,
                      "--runs_root", str(tmp_path / "runs"), "--data.init_args.num_frames", "4"])
    assert line == (f"error: --ckpt_path {ckpt}: the model was trained with num_frames=8, but data.num_frames=4; "
                    f"pass --data.num_frames 8")
    assert not (tmp_path / "runs").exists()
