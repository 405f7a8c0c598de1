"""Print and save evaluation results: one rich table per task plus the family mean, and results.json."""
from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from magvit_pl.run.files import write_json


def write_results(results: dict[str, dict[str, float]], label: str, run_dir: str | Path, protocol: dict[str, Any] | None = None) -> Path:
    """Print ``results`` (task → metric → value) and write ``run_dir/results.json``; returns its path."""
    from rich.console import Console
    from rich.table import Table

    keys = sorted({k for values in results.values() for k in values})
    mean = {k: sum(v[k] for v in results.values() if k in v) / max(1, sum(k in v for v in results.values())) for k in keys}
    table = Table(title=f"test --task {label}")
    table.add_column("task", no_wrap=True)
    for k in keys:
        table.add_column(k, justify="right")
    for name, values in results.items():
        table.add_row(name, *(f"{values[k]:.4f}" if k in values else "–" for k in keys))
    if len(results) > 1:
        table.add_row("[bold]mean[/bold]", *(f"{mean[k]:.4f}" for k in keys))
    Console().print(table)
    path = Path(run_dir) / "results.json"
    write_json(path, {"task": label, "results": results, "mean": mean, "protocol": protocol or {}, "time": time.strftime("%Y-%m-%d %H:%M:%S")})
    return path
