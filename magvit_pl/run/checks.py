"""One-line checks of numeric constructor arguments: ``check_args(owner, values, rules)``.

A rule table maps an argument name to one of the rules in :data:`RULES` (``"> 0"``, ``">= 1"``, ``"[0, 1)"`` …).
The first value that breaks its rule raises a :class:`~magvit_pl.run.errors.UserError` naming it, its value and the
rule, e.g. ``model.lr=-1.0: must be > 0``. ``None`` passes (optional arguments); a list or tuple is checked
element by element; booleans and non-finite numbers are refused. Imports nothing but the errors module, so the
``nn.Module``\\ s in :mod:`magvit_pl.models` use it too.
"""
from __future__ import annotations

import math
from typing import Any, Callable, Mapping

from magvit_pl.run.errors import UserError

RULES: dict[str, Callable[[float], bool]] = {
    "> 0": lambda v: v > 0,
    ">= -1": lambda v: v >= -1,
    ">= 0": lambda v: v >= 0,
    ">= 1": lambda v: v >= 1,
    ">= 2": lambda v: v >= 2,
    "[0, 1]": lambda v: 0 <= v <= 1,
    "[0, 1)": lambda v: 0 <= v < 1,
}


def check_args(owner: str, values: Mapping[str, Any], rules: Mapping[str, str]) -> None:
    """Raise a one-line :class:`UserError` for the first ``values[name]`` that breaks ``rules[name]``.

    Args:
        owner: what the arguments belong to, as the user's config names it (``model``, ``tokenizer`` …).
        values: the arguments (``locals()`` of a constructor, ``self.hparams`` …); names absent here are skipped.
        rules: argument name → a key of :data:`RULES`.
    """
    for name, rule in rules.items():
        if name not in values or values[name] is None:
            continue
        value = values[name]
        for item in value if isinstance(value, (list, tuple)) else (value,):
            number = isinstance(item, (int, float)) and not isinstance(item, bool)
            if not (number and math.isfinite(item) and RULES[rule](item)):
                each = "each entry " if isinstance(value, (list, tuple)) else ""
                bound = rule if rule.startswith(">") else f"in {rule}"
                raise UserError(f"{owner}.{name}={_show(value)}: {each}must be a finite number {bound}")


def _show(value: Any) -> str:
    return f"[{', '.join(map(str, value))}]" if isinstance(value, (list, tuple)) else str(value)
