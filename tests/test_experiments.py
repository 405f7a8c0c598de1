"""experiments/run.py: the comparison harness, end to end in --smoke mode (tiny model and data, 2 steps), its
resume, its statistics and its error lines."""
from __future__ import annotations

import importlib.util
import json
import math
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def harness():
    spec = importlib.util.spec_from_file_location("experiments_run", REPO / "experiments" / "run.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up
    spec.loader.exec_module(module)
    yield module
    sys.modules.pop(spec.name, None)


@pytest.fixture(scope="module")
def shared(tmp_path_factory) -> Path:
    """One runs folder for the module: comparisons that train the same stage share it, as real runs do."""
    return tmp_path_factory.mktemp("experiments")


def smoke(harness, tmp: Path, *args: str) -> dict:
    return harness.main([*args, "--smoke", "--runs", str(tmp / "runs"), "--clips", str(tmp / "no-clips")])


def test_mean_std_and_difference_on_known_numbers(harness):
    a = harness.mean_std([1.0, 2.0, 3.0])
    assert a["mean"] == 2.0 and a["std"] == 1.0 and a["per_seed"] == [1.0, 2.0, 3.0]  # sample std (n - 1)
    b = harness.mean_std([0.5, 0.0, 1.0])
    d = harness.difference(a, b, higher_is_better=True)
    assert d["delta"] == pytest.approx(1.5) and d["spread"] == pytest.approx(1.5)
    assert not d["exceeds_spread"]  # 1.5 is not more than 1 + 0.5
    assert d["paired"] == [0.5, 2.0, 2.0] and d["same_sign_every_seed"] and d["better"] == "a"
    assert harness.difference(a, b, higher_is_better=False)["better"] == "b"
    assert harness.mean_std([4.0])["std"] is None


def test_3d_vs_2d_smoke_writes_json_and_figure_with_equal_token_counts_then_resumes(harness, shared, monkeypatch):
    tmp_path = shared
    report = smoke(harness, tmp_path, "3d_vs_2d", "--seeds", "0", "1")
    results = tmp_path / "runs" / "results"
    assert json.loads((results / "3d_vs_2d.json").read_text()) == report
    assert (results / "3d_vs_2d.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert report["seeds"] == [0, 1] and report["smoke"] and report["skipped"]  # no real clips here: said so
    tokens = {}
    for name, arm in report["arms"].items():
        psnr = arm["metrics"]["dead_leaves_test"]["psnr"]
        assert len(psnr["per_seed"]) == 2 and psnr["mean"] == pytest.approx(sum(psnr["per_seed"]) / 2)
        assert psnr["std"] == pytest.approx(abs(psnr["per_seed"][0] - psnr["per_seed"][1]) / math.sqrt(2))
        assert 0 < psnr["mean"] < 60 and "psnr" in arm["baselines"]["dead_leaves_test"]
        dt, dh, dw = arm["info"]["dead_leaves_test"]["grid"]
        tokens[name] = (8 // dt) * (32 // dh) * (32 // dw)
        fit = arm["commands"]["seed1"][0]
        assert fit.startswith("python cli.py fit --config configs/tokenizer.yaml") and "--seed_everything 1" in fit
    assert report["arms"]["2d"]["info"]["dead_leaves_test"]["grid"] == [1, 8, 8]
    assert report["arms"]["3d"]["info"]["dead_leaves_test"]["grid"] == [4, 4, 4]
    assert tokens == {"3d": 128, "2d": 128}
    assert "configs/paper/tokenizer_2d.yaml" in report["arms"]["2d"]["commands"]["seed0"][0]
    diff = report["difference"]["evals"]["dead_leaves_test"]["psnr"]
    assert diff["delta"] == pytest.approx(report["arms"]["3d"]["metrics"]["dead_leaves_test"]["psnr"]["mean"]
                                          - report["arms"]["2d"]["metrics"]["dead_leaves_test"]["psnr"]["mean"])

    # a second run executes nothing and reports the same numbers
    ran = []
    monkeypatch.setattr(harness.Runner, "execute", lambda self, cmd, log: ran.append(cmd))
    again = smoke(harness, tmp_path, "3d_vs_2d", "--seeds", "0", "1")
    assert ran == [] and again["arms"] == report["arms"]

    # a stage stopped after its checkpoint resumes from it; its evaluations are redone
    stage = tmp_path / "runs" / "tok2d_s8-2" / "seed1"
    (stage / harness.DONE).unlink()
    (stage / "eval-dead_leaves_test.json").unlink()
    monkeypatch.undo()
    calls = []
    real_execute = harness.Runner.execute
    monkeypatch.setattr(harness.Runner, "execute", lambda self, cmd, log: calls.append(cmd) or real_execute(self, cmd, log))
    smoke(harness, tmp_path, "3d_vs_2d", "--seeds", "0", "1")
    assert len(calls) == 2 and calls[0][2] == "fit" and calls[0][-2:] == ["--ckpt_path", str(stage / "checkpoints" / "last.ckpt")]
    assert json.loads((stage / harness.DONE).read_text())["resumed"] is True


def test_inflation_arm_initialises_its_3d_stage_from_the_2d_stage(harness, shared):
    tmp_path = shared
    report = smoke(harness, tmp_path, "inflation_vs_scratch", "--seeds", "0", "--rfvd")
    assert "real_clips_16f_rfvd" in report["skipped"]  # added by --rfvd; no real clips in this test
    inflated = report["arms"]["inflated"]["commands"]["seed0"]
    assert "--model.init_args.init_from" in inflated[1] and "tok2d_s4-2/seed0/checkpoints/last.ckpt" in inflated[1]
    assert "--model.init_args.init_from" not in report["arms"]["scratch"]["commands"]["seed0"][0]
    assert set(report["arms"]["inflated"]["metrics"]["dead_leaves_test"]) >= {"psnr", "ssim"}


def test_mtm_comparisons_plan_their_arms_and_score_through_cli_test(harness, tmp_path):
    report = smoke(harness, tmp_path, "multi_vs_single_task", "--seeds", "0")
    single = report["arms"]["single"]["commands"]["seed0"]
    assert "--model.tasks.names [frame_prediction]" in single[1] and "--model.init_args.tokenizer_ckpt" in single[1]
    assert single[2].startswith("python cli.py test") and "--task frame_prediction" in single[2]
    assert single[3].startswith("python benchmarks/generation.py") and "--task frame_prediction" in single[3]
    for arm in report["arms"].values():
        values = arm["metrics"]["frame_prediction"]
        assert 0 <= values["cond_token_agreement"]["mean"] <= 1 and values["psnr_given"]["mean"] > 0
        samples = arm["metrics"]["frame_prediction_samples"]
        assert 0 <= samples["cond_agree"]["mean"] <= 1 and 0 <= samples["token_acc"]["mean"] <= 1
        assert samples["gen_psnr"]["mean"] > 0 and samples["given_psnr"]["mean"] > samples["gen_psnr"]["mean"] - 30
        assert arm["baselines"]["frame_prediction_samples"]["gen_psnr"] > 0  # the padded condition
    # the other MTM comparisons: their commands, without running them
    runner = lambda name: harness.Runner(harness.COMPARISONS[name], [0], 1500, tmp_path / "r", tmp_path / "res", None,  # noqa: E731
                                         tmp_path, False, False, log=lambda _: None)
    naive = harness.COMPARISONS["commit_vs_naive"].arms[1]
    cmd = runner("commit_vs_naive").fit_command(naive.stages[1], 2, tmp_path / "x", tmp_path / "tok")
    assert cmd[cmd.index("--model.commit.mode") + 1] == "naive" and cmd[cmd.index("--trainer.max_steps") + 1] == "1500"
    for stage in (naive.stages[1], harness.COMPARISONS["commit_vs_naive"].arms[0].stages[1]):  # the paper's decoding, both arms
        cmd = runner("commit_vs_naive").fit_command(stage, 2, tmp_path / "x", tmp_path / "tok")
        assert cmd[cmd.index("--model.sampling.keep_condition") + 1] == "false"
    steps = [a.eval_args[-1] for a in harness.COMPARISONS["decoding_steps"].arms]
    assert steps == ["4", "8", "12", "16", "24"]
    r = runner("decoding_steps")
    arm = harness.COMPARISONS["decoding_steps"].arms[0]
    assert r.stage_dirs(arm, 1)[0].parent.name == "tok_demo-1500@s0" and r.stage_dirs(arm, 1)[0].name == "seed0"
    test = r.eval_command(harness.COMPARISONS["decoding_steps"].evals[0], arm, tmp_path / "run")
    assert test[-2:] == ["--model.sampling.steps", "4"] and "test-frame_prediction-steps4" in " ".join(test)
    samples = r.eval_command(harness.COMPARISONS["decoding_steps"].evals[1], arm, tmp_path / "run")
    assert samples[1] == "benchmarks/generation.py" and samples[-2:] == ["--steps", "4"]
    assert harness.tag(arm) == "-steps4"  # each arm's evaluations of the shared model are cached apart


@pytest.mark.parametrize("args, message", [
    (["nope"], "comparison 'nope': choose one of 3d_vs_2d"),
    (["3d_vs_2d", "--steps", "1"], "--steps 1: must be >= 2"),
    (["3d_vs_2d", "--data", "/no/such/folder"], "--data /no/such/folder: not a folder"),
    (["decoding_steps", "--rfvd"], "--rfvd: decoding_steps scores transformers"),
])
def test_mistakes_are_one_error_line(harness, args, message):
    with pytest.raises(harness.UsageError, match=message.replace("(", r"\(")):
        harness.main(args)


def test_a_generation_evaluation_of_an_untrained_task_is_one_error_line(harness):
    ev = harness.Eval(name="gen_fp", kind="generation", task="frame_interpolation")
    out = {"results": {"frame_interpolation · padded condition": {"gen_psnr": 14.0}}, "clips": 2, "seeds": [0],
           "source": "x", "num_frames": 8, "resolution": 32}  # what the benchmark reports when it skipped the task
    with pytest.raises(harness.CommandError, match="not trained on frame_interpolation"):
        harness.flatten(ev, out, 1.0)
