"""docs/paper_fidelity.md against the shipped paper configs: every table row's value is the one the composed YAML
resolves to, or the test the row names exists (issue 14)."""
from __future__ import annotations

import functools
import io
import re
from contextlib import redirect_stdout
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
DOC = REPO / "docs" / "paper_fidelity.md"
COLUMNS = ["setting", "official (file:line)", "ours", "recipe", "key"]


def table_rows() -> list[dict[str, str]]:
    """The rows of every table of the document whose header is COLUMNS."""
    rows, header = [], None
    for line in DOC.read_text().splitlines():
        if not line.startswith("|"):
            header = None
            continue
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if header is None:
            header = cells
            continue
        if set(line) <= set("|-: "):
            continue
        if header == COLUMNS:
            assert len(cells) == len(COLUMNS), line
            rows.append(dict(zip(COLUMNS, cells)))
    return rows


ROWS = table_rows()


def data_config_for(names: list[str]) -> Path:
    joined = " ".join(names)
    kind = "bair" if "bair" in joined else "kinetics600" if "k600" in joined else "ucf101"
    return REPO / "configs" / "data" / f"{kind}.yaml"


@functools.lru_cache(maxsize=None)
def resolved(recipe: str) -> dict:
    """The config ``fit --config …  --print_config`` resolves ``recipe`` ("a + b + data + c") to."""
    from magvit_pl.run.cli import main

    names = [n.strip() for n in recipe.split("+")]
    if "data" not in names:
        names.append("data")
    files = [data_config_for(names) if n == "data" else REPO / "configs" / "paper" / f"{n}.yaml" for n in names]
    buf = io.StringIO()
    with pytest.raises(SystemExit) as exit_info, redirect_stdout(buf):
        main(["fit", *[a for f in files for a in ("--config", str(f))], "--print_config"])
    assert exit_info.value.code == 0, recipe
    return yaml.safe_load("\n".join(ln for ln in buf.getvalue().splitlines() if not ln.startswith("[")))


def lookup(config: dict, key: str):
    node = config
    for part in key.split("."):
        assert isinstance(node, dict) and part in node, f"{key}: no {part!r}"
        node = node[part]
    return node


def test_the_document_has_the_tables():
    assert len(ROWS) > 80
    recipes = {r["recipe"] for r in ROWS}
    for setting in ("mtm_ucf_cg", "mtm_bair_fp", "mtm_bair_mt", "mtm_k600_fp", "tokenizer_2d"):
        assert any(setting in r for r in recipes), setting
    unsourced = [r["setting"] for r in ROWS if not re.search(r"\.py:\d", r["official (file:line)"]) and "paper" not in r["official (file:line)"]]
    assert unsourced == [], "every official value needs its file:line (or 'the paper')"


@pytest.mark.parametrize("row", [r for r in ROWS if r["recipe"] not in ("test", "–")], ids=lambda r: f"{r['recipe']}:{r['key']}")
def test_yaml_value_equals_the_documented_one(row):
    want = yaml.safe_load(row["ours"].replace("`", ""))
    got = lookup(resolved(row["recipe"]), row["key"])
    if isinstance(want, float) or isinstance(got, float):
        assert got == pytest.approx(want), row["setting"]
    else:
        assert got == want, row["setting"]


@pytest.mark.parametrize("row", [r for r in ROWS if r["recipe"] == "test"], ids=lambda r: r["key"])
def test_the_named_test_exists(row):
    path, _, name = row["key"].partition("::")
    assert (REPO / path).is_file(), path
    assert re.search(rf"^def {re.escape(name)}\(", (REPO / path).read_text(), re.M), row["key"]
