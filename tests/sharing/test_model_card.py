"""The model card of ``export --format safetensors`` on a run trained through the CLI: what the model was trained on,
its config, the metrics measured on it (the run's last validation values and the ``test`` run of that checkpoint,
found by itself) and the exact commands that made it, with the run's resolved config beside it."""
from __future__ import annotations

import json
import shutil


def test_card_of_a_cli_run_quotes_its_data_metrics_and_commands(tokenizer_run, tmp_path, run_cli):
    run = tmp_path / "runs" / "tokenizer" / tokenizer_run.name
    shutil.copytree(tokenizer_run, run)  # a private copy: the test run below goes next to it
    ckpt = run / "checkpoints" / "last.ckpt"
    code, err = run_cli(["test", "--kind", "tokenizer", "--ckpt_path", ckpt, "--runs_root", tmp_path / "runs",
                         "--trainer.limit_test_batches", "1", "--trainer.enable_progress_bar", "false"])
    assert code == 0, err
    tested = json.loads(next((tmp_path / "runs" / "tokenizer").glob("*-test/results.json")).read_text())

    folder = tmp_path / "shared"
    code, err = run_cli(["export", "--ckpt_path", ckpt, "--output", folder, "--format", "safetensors"])
    assert code == 0, err
    card = (folder / "README.md").read_text()
    assert card.startswith("---\nlibrary_name: magvit-pl\n") and "# magvit-pl tokenizer" in card
    assert "- clips: 8 frames every 1, 32x32" in card and "- training steps: 4" in card
    assert "- classes: pan_left, pan_right" in card and "- videos: train 8, val 8, test 8" in card
    assert '"dim": 6' in card  # the config, as JSON (the tiny LFQ's bits)
    psnr = tested["results"]["tokenizer"]["psnr"]
    assert "**reconstruction (" in card and f"| tokenizer | " in card and f"{psnr:.4g}" in card
    assert "**validation, last logged values (the run's metrics.csv)**" in card and "| val | " in card
    assert "python cli.py fit --config training_config.yaml" in card
    assert f"python cli.py export --ckpt_path {ckpt} --output {folder} --format safetensors" in card
    assert (folder / "training_config.yaml").read_bytes() == (run / "config.yaml").read_bytes()
    config = json.loads((folder / "config.json").read_text())
    assert config["training"]["global_step"] == 4 and config["training"]["source"] == "Lightning checkpoint file last.ckpt"
