"""`--plot FILE.png`: speedup per category for every method that is not a baseline."""

from __future__ import annotations

import io
import os
import tempfile
from pathlib import Path

from ..errors import UsageError
from .methods import BASELINES
from .runner import BenchReport


def write_atomic(path: Path, data: bytes) -> None:
    """Write through a temporary file in the same folder: a reader never sees half a report."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def plot_speedups(report: BenchReport, path: Path) -> None:
    """Grouped bars against a dashed 1.0x line: each method's tok/s over llama-server's
    plain decoding when the run had it, else over the method's own family baseline."""
    try:
        import matplotlib
    except ImportError:
        raise UsageError("--plot needs matplotlib: pip install 'specdec[bench]'") from None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    against_server = any(r.vs_server is not None for r in report.rows)
    baselines = set(BASELINES.values())
    rows = [r for r in report.rows if r.method not in baselines
            and (r.vs_server if against_server else r.speedup) is not None]
    if not rows:
        raise UsageError("--plot: no method besides the baselines to plot")
    categories = list(dict.fromkeys(r.category for r in rows))
    methods = list(dict.fromkeys(r.method for r in rows))
    lookup = {(r.method, r.category): (r.vs_server if against_server else r.speedup) for r in rows}
    width = 0.8 / len(methods)
    fig, ax = plt.subplots(figsize=(max(7.0, 1.1 * len(categories) * max(1, len(methods)) * 0.45 + 3), 4.8))
    for i, method in enumerate(methods):
        xs = [c + (i - (len(methods) - 1) / 2) * width for c in range(len(categories))]
        ax.bar(xs, [lookup.get((method, cat), 0.0) for cat in categories], width, label=method)
    ax.axhline(1.0, color="black", linewidth=1, linestyle="--")
    ax.set_xticks(range(len(categories)), categories, rotation=30, ha="right")
    ax.set_ylabel("tok/s vs llama-server, no speculation" if against_server
                  else "speedup vs own plain decoding (median paired ratio)")
    header = report.header
    ax.set_title(f"{header.model}, {header.prompts}, {header.max_tokens} new tokens, {header.engine} engine\n"
                 f"{header.device} ({header.cores})", fontsize=9)
    ax.legend(fontsize=8, ncols=2)
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110)
    plt.close(fig)
    write_atomic(path, buffer.getvalue())
