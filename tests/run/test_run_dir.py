"""magvit_pl.run.run_dir.resolve_run_dir: the run folder policy, rule by rule, without a Trainer or a file."""
import os
from pathlib import Path

import pytest

from magvit_pl.run.errors import UserError
from magvit_pl.run.run_dir import RunDir, resolve_run_dir, run_kind

STAMP = "20250102-030405"


def resolve(subcommand="fit", **kwargs) -> RunDir:
    return resolve_run_dir(subcommand, "mtm", runs_root="runs", stamp=STAMP, **kwargs)


def test_a_new_fit_gets_a_stamped_folder_and_moves_latest():
    assert resolve() == RunDir(Path("runs/mtm") / STAMP, Path("runs/mtm"), point_latest=True, fresh=True)


@pytest.mark.parametrize("subcommand", ["test", "validate", "predict"])
def test_an_evaluation_gets_its_own_suffixed_folder_and_leaves_latest(subcommand):
    assert resolve(subcommand) == RunDir(Path(f"runs/mtm/{STAMP}-{subcommand}"), Path("runs/mtm"), point_latest=False, fresh=True)


def test_run_dir_wins_and_latest_follows_only_a_folder_directly_in_the_kind_folder():
    assert resolve(run_dir="elsewhere/r1") == RunDir(Path("elsewhere/r1"), Path("runs/mtm"), point_latest=False)
    assert resolve(run_dir="runs/mtm/mine").point_latest
    assert not resolve("test", run_dir="runs/mtm/mine").point_latest


def test_a_ddp_child_inherits_its_parents_folder_over_everything():
    asked = []
    got = resolve(inherited="runs/mtm/parent", run_dir="other", ckpt_path="last", num_nodes=4,
                  latest=lambda: asked.append(1))
    assert got.path == Path("runs/mtm/parent") and asked == []


def test_resume_last_continues_in_the_latest_run_or_says_there_is_none():
    assert resolve(ckpt_path="last", latest=lambda: Path("runs/mtm/old")).path == Path("runs/mtm/old")
    with pytest.raises(UserError, match=r"^--ckpt_path last: no earlier run under runs/mtm; start one without --ckpt_path$"):
        resolve(ckpt_path="last")
    assert resolve("test", ckpt_path="last").path == Path(f"runs/mtm/{STAMP}-test")  # only fit resumes in place
    assert resolve(ckpt_path="other.ckpt", latest=lambda: pytest.fail("latest read")).path == Path(f"runs/mtm/{STAMP}")


def test_several_nodes_need_one_folder_they_all_name():
    assert resolve(num_nodes=2, slurm_job_id="4242").path == Path("runs/mtm/slurm-4242")
    assert resolve(num_nodes=2, run_dir="shared/r").path == Path("shared/r")
    with pytest.raises(UserError, match=r"^--trainer.num_nodes 2: pass --run_dir on a filesystem all nodes share"):
        resolve(num_nodes=2)


def test_the_kind_comes_from_the_model_class():
    assert run_kind("magvit_pl.lit.tokenizer.TokenizerModule") == "tokenizer"
    assert run_kind("magvit_pl.lit.mtm.MTMModule") == "mtm"
    assert run_kind("my_pkg.MyModule") == "mymodule" and run_kind(None) == "run"


def test_new_run_folders_are_made_exclusively(tmp_path):
    from magvit_pl.run.run_dir import make_unique_dir

    (tmp_path / STAMP).mkdir()
    (tmp_path / STAMP / "config.yaml").write_text("theirs")
    first = make_unique_dir(tmp_path / STAMP, "--runs_root x")
    second = make_unique_dir(tmp_path / STAMP, "--runs_root x")
    assert (first.name, second.name) == (f"{STAMP}-2", f"{STAMP}-3")
    assert os.listdir(tmp_path / STAMP) == ["config.yaml"] and os.listdir(first) == []


def test_the_runs_root_follows_default_root_dir_unless_runs_root_is_given():
    from magvit_pl.run.run_dir import runs_root_of

    assert runs_root_of(None, None) == "runs" and runs_root_of(None, "/data/exp") == "/data/exp"
    assert runs_root_of("mine", None) == "mine" and runs_root_of("mine", "/data/exp") == "mine"
