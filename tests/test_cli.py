"""The command line: help, one-line errors with non-zero exits, and every shipped YAML parses."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from magvit_pl.run.cli import LIGHTNING_COMMANDS, MODEL_FREE_COMMANDS, main

REPO = Path(__file__).resolve().parents[1]
CONFIGS = sorted((REPO / "configs").rglob("*.yaml"))
HARDWARE = sorted(p for p in CONFIGS if p.parent.name == "hardware")
DATA = sorted(p for p in CONFIGS if p.parent.name == "data")
FULL = [p for p in CONFIGS if p not in HARDWARE and p not in DATA]
# paper overlays (no class_path of their own): each is parsed composed after the file(s) it names
OVERLAYS = {"mtm_L.yaml": ["mtm_B.yaml"], "mtm_bair.yaml": ["mtm_B.yaml"], "mtm_ucf_cg.yaml": ["mtm_B.yaml"],
            "mtm_bair_fp.yaml": ["mtm_B.yaml", "mtm_bair.yaml"], "mtm_bair_mt.yaml": ["mtm_B.yaml", "mtm_bair.yaml"],
            "mtm_bair_fp_L.yaml": ["mtm_B.yaml", "mtm_L.yaml", "mtm_bair.yaml", "mtm_bair_fp.yaml"],
            "mtm_bair_mt_L.yaml": ["mtm_B.yaml", "mtm_L.yaml", "mtm_bair.yaml", "mtm_bair_mt.yaml"],
            "mtm_k600_fp.yaml": ["mtm_B.yaml"],
            "tokenizer_L.yaml": ["tokenizer_B.yaml"], "tokenizer_bair.yaml": ["tokenizer_B.yaml"],
            "tokenizer_bair_L.yaml": ["tokenizer_B.yaml", "tokenizer_L.yaml", "tokenizer_bair.yaml"],
            "tokenizer_2d.yaml": ["tokenizer_B.yaml"]}


def data_config_for(name: str) -> Path:
    """The data config a paper recipe is composed with."""
    kind = "bair" if "bair" in name else "kinetics600" if "k600" in name else "ucf101"
    return REPO / "configs" / "data" / f"{kind}.yaml"


def run_cli(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(REPO / "cli.py"), *args], capture_output=True, text=True, cwd=cwd or REPO, timeout=300)


def test_help_lists_every_command(capsys):
    main(["--help"])
    out = capsys.readouterr().out
    for name in [*LIGHTNING_COMMANDS, *MODEL_FREE_COMMANDS]:
        assert name in out


@pytest.mark.parametrize(
    "args, expected",
    [
        (["frob"], "unknown command 'frob'"),
        (["fit", "--config", "configs/does_not_exist.yaml"], "does_not_exist.yaml"),
        (["fit", "--config", "configs/tokenizer.yaml", "--trainer.max_steps", "many"], "max_steps"),
        (["fit", "--config", "configs/tokenizer.yaml", "--model.init_args.lr", "fast"], "lr"),
        (["fit", "--config", "configs/tokenizer.yaml", "--no_such_option", "1"], "--no_such_option"),
        (["fit", "--config", "configs/tokenizer.yaml", "--save_every_n_steps", "-1"], "--save_every_n_steps -1"),
        (["prepare", "--input", "/no/such/videos", "--output", "/tmp/x"], "/no/such/videos"),
        (["prepare", "--input", ".", "--output", "/tmp/x", "--layout", "zip"], "layout"),
        (["fetch-weights", "alexnet"], "alexnet"),
        # no model and data, or a paper recipe without its data config: which --config to add (issue 16, item 10)
        (["fit"], "no model and data given: start from a shipped config, e.g. --config configs/tokenizer.yaml"),
        (["fit", "--config", "configs/paper/tokenizer_B.yaml"], "no data given: add a data config after the model's, e.g. --config configs/data/ucf101.yaml"),
        # no optimiser options: they would replace the modules' own (issue 16, item 8)
        (["fit", "--config", "configs/tokenizer.yaml", "--optimizer", "Adam"], "--optimizer"),
        # a bare boolean flag is `true` (issue 16, item 9): the command gets past its options to the missing file
        (["export", "--ckpt_path", "/no/such.ckpt", "--output", "/tmp/x.safetensors", "--overwrite"], "/no/such.ckpt"),
        (["generate", "--task", "frame_prediction", "--input", "x.mp4", "--ckpt_path", "/no/such.ckpt"], "/no/such.ckpt"),
    ],
)
def test_user_mistakes_give_one_line_and_nonzero_exit(args, expected):
    result = run_cli(*args)
    assert result.returncode != 0
    assert "Traceback" not in result.stderr
    lines = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(lines) == 1, result.stderr
    assert expected in lines[0]


def test_test_without_a_checkpoint_says_what_to_run(tmp_path):
    result = run_cli("test", "--task", "outpainting", "--runs_root", str(tmp_path))
    assert result.returncode == 2
    assert "python cli.py fit --config configs/mtm.yaml" in result.stderr
    assert "Traceback" not in result.stderr


def test_tasks_lists_the_ten_builtins(capsys):
    main(["tasks"])
    out = capsys.readouterr().out
    for name in ("frame_prediction", "frame_interpolation", "outpainting_central", "outpainting_dynamic",
                 "inpainting_central", "inpainting_dynamic", "class_generation", "class_frame_prediction"):
        assert name in out


def print_config(*configs: Path, args: list[str] = ()) -> str:
    """The resolved config of ``fit --config C... ARGS --print_config`` (without import chatter such as deepspeed's)."""
    import io
    from contextlib import redirect_stdout

    buf = io.StringIO()
    with pytest.raises(SystemExit) as exit_info, redirect_stdout(buf):
        main(["fit", *[a for c in configs for a in ("--config", str(c))], *args, "--print_config"])
    assert exit_info.value.code == 0, args
    return "\n".join(line for line in buf.getvalue().splitlines() if not line.startswith("["))


def test_configs_are_found():
    assert len(FULL) >= 8 and len(DATA) >= 4 and len(HARDWARE) >= 3


@pytest.mark.parametrize("config", FULL, ids=lambda p: str(p.relative_to(REPO)))
def test_every_shipped_model_yaml_parses(config):
    # paper recipes hold model + schedule only: compose them with a data config, as the README does
    data = [] if config.parent.name == "configs" else [data_config_for(config.stem)]
    bases = [config.parent / name for name in OVERLAYS.get(config.name, [])]
    assert bases or "class_path: magvit_pl.lit." in config.read_text(), f"{config.name}: an overlay missing from OVERLAYS"
    out = print_config(*bases, config, *data)
    assert "class_path: magvit_pl.lit." in out and "class_path: magvit_pl.data.VideoDataModule" in out


def _model_of(*names: str) -> dict:
    """The model's init_args, with the clip sizes it takes from the data (linked: print_config shows them there)."""
    import yaml

    data = data_config_for(" ".join(names))
    config = yaml.safe_load(print_config(*(REPO / "configs" / "paper" / n for n in names), data))
    model, sizes = config["model"]["init_args"], {k: config["data"]["init_args"][k] for k in ("num_frames", "resolution")}
    if isinstance(model.get("discriminator"), dict):
        model["discriminator"]["init_args"].update(sizes)
    return {**model, **sizes} if "transformer" in model else model


@pytest.mark.parametrize("names, size", [(["mtm_B.yaml"], "B"), (["mtm_B.yaml", "mtm_L.yaml"], "L"),
                                         (["mtm_B.yaml", "mtm_L.yaml", "mtm_bair.yaml"], "L")])
def test_paper_mtm_overlays_compose_to_the_named_sizes(names, size):
    from magvit_pl.models.transformer import PRESETS

    model = _model_of(*names)
    assert {k: model["transformer"][k] for k in PRESETS[size]} == PRESETS[size]
    assert (model["resolution"], model["num_classes"]) == ((64, 0) if "mtm_bair.yaml" in names else (128, 101))


@pytest.mark.parametrize("names, size", [(["tokenizer_B.yaml"], "B"), (["tokenizer_B.yaml", "tokenizer_L.yaml"], "L"),
                                         (["tokenizer_B.yaml", "tokenizer_bair.yaml"], "bair_B"),
                                         (["tokenizer_B.yaml", "tokenizer_L.yaml", "tokenizer_bair.yaml"], "bair_L")])
def test_paper_tokenizer_overlays_compose_to_the_named_sizes(names, size):
    from magvit_pl.models.tokenizer import PRESETS

    model = _model_of(*names)
    tok, disc = model["tokenizer"]["init_args"], model["discriminator"]["init_args"]
    want = dict(PRESETS[size])
    assert tok["quantizer"]["init_args"]["codebook_size"] == want.pop("codebook_size")
    assert {k: tuple(v) if isinstance(v, list) else v for k, v in tok.items() if k in want} == want
    assert disc["base_channels"] == want["base_channels"] and disc["resolution"] == (64 if "bair" in size else 128)


@pytest.mark.parametrize("config", DATA, ids=lambda p: p.name)
def test_every_data_yaml_composes_with_a_paper_config(config):
    out = print_config(REPO / "configs" / "paper" / "tokenizer_B.yaml", config)
    assert f"data_dir: data/shards/{config.stem}" in out


@pytest.mark.parametrize("config", HARDWARE, ids=lambda p: p.name)
def test_every_hardware_yaml_composes_with_a_model_config(config):
    out = print_config(REPO / "configs" / "mtm.yaml", config)
    import yaml

    trainer = yaml.safe_load(out)["trainer"]
    assert trainer["accelerator"] == yaml.safe_load(config.read_text())["trainer"]["accelerator"]


def test_readme_scale_out_commands_parse():
    """Every `cli.py fit` line of README's "Scaling up" block resolves to a full config (before any GPU is needed)."""
    import shlex

    import yaml

    text = (REPO / "README.md").read_text()
    block = text[text.index("## Scaling up"):text.index("### Exporting a checkpoint")]
    block = block.replace("\\\n", " ")
    commands = [line[line.index("cli.py fit") + len("cli.py fit"):] for line in block.splitlines() if "cli.py fit" in line]
    assert len(commands) == 4
    for command in commands:
        out = print_config(args=[a for a in shlex.split(command) if "$" not in a])
        trainer = yaml.safe_load(out)["trainer"]
        assert trainer["accelerator"] == "gpu" and trainer["precision"] == "bf16-mixed"
        if "num_nodes" in command:
            assert trainer["num_nodes"] == 4 and str(trainer["devices"]) == "8"


def test_console_script_entry_exits_zero_on_success():
    # the `magvit` script runs sys.exit(main()): main must return None, not a value
    code = "import sys; from magvit_pl.run.cli import main; sys.exit(main(['tasks']))"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "frame_prediction" in result.stdout


@pytest.mark.parametrize("args, moved", [
    (["--model.init_args.hidden_dim", "32"], "--model.transformer.hidden_dim"),
    (["--model.init_args.sample_steps", "4"], "--model.sampling.steps"),
    (["--model.init_args.tasks", "[frame_prediction]"], None),  # a group now: it lists its fields
])
def test_an_mtm_option_of_the_flat_layout_says_where_it_moved(capsys, args, moved):
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", "--config", str(REPO / "configs" / "mtm.yaml"), *args, "--print_config"])
    assert exit_info.value.code == 2
    err = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
    assert len(err) == 1 and args[0].split(".")[-1] in err[0]
    if moved:
        assert f"MTM options are grouped now: {moved}" in err[0]
    else:
        assert err[0] == ("error: model.tasks takes its fields (names, num_cond_frames, latent_rule, task_token, shared_task_tokens, weights, schedule), not a single value; "
                          "e.g. --model.tasks.names VALUE, or in YAML tasks: {names: ...}")


def test_fit_help_shows_the_model_and_data_options_with_their_short_forms():
    """Issue 16, items 7 and 8: LightningCLI alone shows only `--model CLASS_PATH`; and no optimiser options."""
    with_config = run_cli("fit", "--config", "configs/tokenizer.yaml", "--help")
    assert with_config.returncode == 0, with_config.stderr[-2000:]
    out = with_config.stdout
    assert "model options of magvit_pl.lit.tokenizer.TokenizerModule" in out and "--model.lr LR" in out
    assert "data options of magvit_pl.data.VideoDataModule" in out and "--data.data_dir DATA_DIR" in out
    assert "magvit_pl.lit.mtm.MTMModule" not in out and "--optimizer" not in out and "--lr_scheduler" not in out
    bare = run_cli("fit", "--help").stdout
    assert "model options of magvit_pl.lit.tokenizer.TokenizerModule" in bare and "model options of magvit_pl.lit.mtm.MTMModule" in bare
    assert "--model.optim OPTIM" in bare and "--model.optim.help" in bare and "--model.lr LR" in bare


def test_the_readme_short_forms_and_bare_trainer_flags_parse():
    """`--model.lr`, `--data.data_dir` (README) and a bare `--trainer.enable_progress_bar` reach the config."""
    import yaml

    config = yaml.safe_load(print_config(REPO / "configs" / "tokenizer.yaml", args=[
        "--model.lr", "0.5", "--data.data_dir", "somewhere", "--trainer.enable_progress_bar", "--trainer.max_steps", "7"]))
    assert config["model"]["init_args"]["lr"] == 0.5 and config["data"]["init_args"]["data_dir"] == "somewhere"
    assert config["trainer"]["enable_progress_bar"] is True and config["trainer"]["max_steps"] == 7


def test_prepare_guarantees_a_val_split_and_prints_the_next_fit(tmp_path, pattern, write_raw):
    """Issue 16, item 10: two videos and the default val_fraction (5 %) used to make no val split; one video says so."""
    src = tmp_path / "videos"
    for i in range(2):
        write_raw(src / "cls" / f"clip{i}.mp4", pattern(20, 16, 16, seed=i))
    result = run_cli("prepare", "--input", str(src), "--output", str(tmp_path / "two"), "--resolution", "16", "--workers", "1")
    assert result.returncode == 0, result.stderr[-2000:]
    manifest = json.loads((tmp_path / "two" / "manifest.json").read_text())
    assert {k: v["count"] for k, v in manifest["splits"].items()} == {"train": 1, "val": 1}
    assert f"next: python cli.py fit --config configs/tokenizer.yaml --data.data_dir {tmp_path / 'two'}\n" in result.stdout
    one = run_cli("prepare", "--input", str(src / "cls" / "clip0.mp4"), "--output", str(tmp_path / "one"), "--resolution", "16")
    assert one.returncode == 0, one.stderr[-2000:]
    text = " ".join(one.stdout.split())
    assert "no 'val' split (1 usable video(s)): fit validates on 'train' instead" in text
    assert f"next: python cli.py fit --config configs/tokenizer.yaml --data.data_dir {tmp_path / 'one'} --data.val_split train" in text
