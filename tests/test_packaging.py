"""Packaging: the plugins' import name, the optional extras, the CPU install notes, LICENSE and CITATION.cff."""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

tomllib = pytest.importorskip("tomllib")  # Python >= 3.11 (requires-python is 3.10: skips there)

REPO = Path(__file__).resolve().parents[1]
BUILTIN_TASKS = ["class_frame_prediction", "class_generation", "frame_interpolation", "frame_prediction",
                 "inpainting_central", "inpainting_dynamic", "outpainting_central", "outpainting_dynamic",
                 "outpainting_horizontal", "outpainting_vertical"]


def pyproject() -> dict:
    return tomllib.loads((REPO / "pyproject.toml").read_text())


def readme() -> str:
    return (REPO / "README.md").read_text()


# ---- 13: the built-in plugins install as magvit_pl_tasks, never as a top-level `tasks`

def test_plugins_install_under_their_own_import_name():
    project = pyproject()
    setuptools = project["tool"]["setuptools"]
    assert setuptools["package-dir"] == {"magvit_pl_tasks": "tasks"}
    # every folder with an __init__.py is listed (the list is explicit because package-dir renames tasks/)
    folders = {".".join(p.parent.relative_to(REPO).parts) for p in (REPO / "magvit_pl").rglob("__init__.py")}
    folders |= {"magvit_pl_tasks" + ".".join(("",) + p.parent.relative_to(REPO / "tasks").parts)
                for p in (REPO / "tasks").rglob("__init__.py")}
    assert sorted(setuptools["packages"]) == sorted(folders)
    assert not any(p == "tasks" or p.startswith("tasks.") for p in setuptools["packages"])
    targets = project["project"]["entry-points"]["magvit_pl.tasks"]
    assert sorted(targets) == BUILTIN_TASKS
    for name, target in targets.items():
        module, _, attr = target.partition(":")
        assert module.startswith("magvit_pl_tasks.") and attr, (name, target)
        assert (REPO / "tasks" / (module.split(".", 1)[1] + ".py")).is_file(), target


def test_a_users_tasks_package_neither_shadows_nor_is_trusted(tmp_path):
    """A user's own `tasks` package (with a `prediction` module, as the built-ins had) first on the path:
    the plugins still load from magvit_pl_tasks, no class named in it is allow-listed, none of its code runs.
    Before the rename the entry points imported it (a plain `tasks.py` gave "No module named 'tasks.prediction'")."""
    user = tmp_path / "project"
    (user / "tasks").mkdir(parents=True)
    ran = tmp_path / "user_code_ran"
    hostile = f"import pathlib\npathlib.Path({str(ran)!r}).write_text(__name__)\n"
    (user / "tasks" / "__init__.py").write_text(hostile)
    (user / "tasks" / "prediction.py").write_text(hostile + "class FramePrediction:\n    name = 'frame_prediction'\n")
    probe = (
        "import json\n"
        "from magvit_pl.tasks import discover_tasks, get_task\n"
        "from magvit_pl.models.config import allowed_class\n"
        "loaded = {n: s.load() for n, s in discover_tasks().items()}\n"
        "fp = get_task('frame_prediction', num_cond_frames=1)\n"
        "named = ['tasks.prediction.FramePrediction', 'tasks.FramePrediction', 'magvit_pl_tasks.prediction.FramePrediction']\n"
        "print(json.dumps({'names': sorted(loaded), 'modules': sorted({c.__module__ for c in loaded.values()}),\n"
        "                  'frame_prediction': type(fp).__module__, 'allowed': [n for n in named if allowed_class(n)]}))\n"
    )
    env = {**os.environ, "PYTHONPATH": str(user), "OMP_NUM_THREADS": "1"}
    result = subprocess.run([sys.executable, "-c", probe], cwd=user, env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    out = json.loads(result.stdout.strip().splitlines()[-1])
    assert out["names"] == BUILTIN_TASKS
    assert out["modules"] == ["magvit_pl_tasks.generation", "magvit_pl_tasks.inpainting", "magvit_pl_tasks.interpolation",
                              "magvit_pl_tasks.outpainting", "magvit_pl_tasks.prediction"]
    assert out["frame_prediction"] == "magvit_pl_tasks.prediction"
    assert out["allowed"] == []  # task classes are not buildable modules, and a module prefix trusts nothing
    assert not ran.exists(), f"the user's {ran.read_text()} ran"


# ---- 14: DeepSpeed and xformers are separate extras; neither pins torch itself

def test_gpu_extras_are_split():
    extras = pyproject()["project"]["optional-dependencies"]
    assert [re.split(r"[<>=!~ \[]", r)[0] for r in extras["deepspeed"]] == ["deepspeed"]
    assert [re.split(r"[<>=!~ \[]", r)[0] for r in extras["xformers"]] == ["xformers"]
    assert extras["gpu"] == ["magvit-pl[deepspeed,xformers]"]  # the old name still means both
    assert not any(r.startswith("torch") for reqs in extras.values() for r in reqs)
    text = readme()
    for extra in ("deepspeed", "xformers"):
        assert f'.[{extra}]' in text, extra
    assert "xformers" in text and "matching your torch" in text


# ---- 15: the two README commands stay exactly as they are; the CPU index names the constraint's torch

TWO_COMMANDS = (
    'python3 -m venv .venv && .venv/bin/pip install -c requirements/cpu-constraints.txt -e . && .venv/bin/python cli.py fit --config configs/tokenizer.yaml',
    'python3 -m venv .venv && .venv/bin/pip install -c requirements/cpu-constraints.txt -e ".[dev]" && (.venv/bin/python cli.py fetch-weights all || echo "weights not fetched: the tests that need them will skip") && .venv/bin/python -m pytest -q --durations=15',
)


def test_readme_cpu_install_names_the_cpu_index_and_the_pinned_torch():
    text = readme()
    for command in TWO_COMMANDS:
        assert f"```bash\n{command}\n```" in text
    pins = [line.strip() for line in (REPO / "requirements" / "cpu-constraints.txt").read_text().splitlines()
            if line.strip().startswith("torch==")]
    assert len(pins) == 1
    cpu_index = "--index-url https://download.pytorch.org/whl/cpu"
    lines = [line for line in text.splitlines() if cpu_index in line]
    assert lines and all(pins[0] in line for line in lines), (pins, lines)


# ---- 16: LICENSE, CITATION.cff and pyproject agree

def test_license_file_is_the_declared_apache_2_license():
    project = pyproject()["project"]
    assert project["license"] == "Apache-2.0"
    assert project["license-files"] == ["LICENSE"]
    text = (REPO / "LICENSE").read_text()
    assert "Apache License\n                           Version 2.0, January 2004" in text
    assert "TERMS AND CONDITIONS FOR USE, REPRODUCTION, AND DISTRIBUTION" in text
    sections = re.findall(r"^   (\d)\. ([A-Z][\w ]+)\.", text, flags=re.M)
    assert [int(n) for n, _ in sections] == list(range(1, 10))
    assert sections[-1][1] == "Accepting Warranty or Additional Liability"
    assert "END OF TERMS AND CONDITIONS" in text
    build = pyproject()["build-system"]["requires"]
    assert build == ["setuptools>=77"]  # the first setuptools that reads an SPDX license and license-files


def test_citation_cff_cites_this_project_and_the_paper():
    cff = yaml.safe_load((REPO / "CITATION.cff").read_text(encoding="utf-8"))
    assert cff["cff-version"] == "1.2.0" and cff["type"] == "software"
    assert cff["title"].startswith("magvit-pl") and cff["message"] and cff["authors"]
    assert cff["license"] == pyproject()["project"]["license"]
    assert str(cff["version"]) == pyproject()["project"]["version"]
    paper = cff["preferred-citation"]
    assert paper["type"] == "conference-paper"
    assert paper["title"] == "MAGVIT: Masked Generative Video Transformer"
    assert paper["year"] == 2023 and "CVPR" in paper["conference"]["name"]
    authors = [f"{a['given-names']} {a['family-names']}" for a in paper["authors"]]
    assert authors == ["Lijun Yu", "Yong Cheng", "Kihyuk Sohn", "José Lezama", "Han Zhang", "Huiwen Chang",
                       "Alexander G. Hauptmann", "Ming-Hsuan Yang", "Yuan Hao", "Irfan Essa", "Lu Jiang"]
    ids = {i["type"]: str(i["value"]) for i in paper["identifiers"]}
    assert ids == {"other": "arXiv:2212.05199", "doi": "10.48550/arXiv.2212.05199"}
    assert paper["url"] == "https://arxiv.org/abs/2212.05199"
