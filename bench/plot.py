"""Plot burst deliveries/s and memory per idle connection against N (matplotlib).

python -m bench plot bench/results/all-*.json     # -> docs/performance.png
"""

from __future__ import annotations

import json
from pathlib import Path

from .servers import ROOT

OUT = ROOT / "docs" / "performance.png"
PANELS = (
    ("deliveries_per_s", "burst broadcast deliveries/s (64 B messages)", True),
    ("kb_per_conn", "server RSS per idle connection (KB)", False),
)


def plot(files: list[Path], out: Path = OUT) -> int:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    summary: dict[str, dict] = {}
    for f in files:
        summary.update(json.loads(f.read_text())["summary"])
    servers = sorted({v["server"] for v in summary.values()}, key=lambda s: (s != "im", s))
    fig, axes = plt.subplots(1, len(PANELS), figsize=(11, 4.2))
    for ax, (metric, title, log) in zip(axes, PANELS, strict=True):
        for server in servers:
            points = sorted(
                (v["n"], v[metric])
                for v in summary.values()
                if v["server"] == server and metric in v
            )
            if points:
                xs, ys = zip(*points, strict=True)
                ax.plot(xs, ys, marker="o", label=server, linewidth=2 if server == "im" else 1)
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("idle clients N")
        if log:
            ax.set_yscale("log")
        ax.grid(True, alpha=0.3)
        ax.legend()
    fig.suptitle("im vs peers: one server core, loopback, medians of 3 runs", fontsize=11)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    print(f"wrote {out.relative_to(ROOT)}")
    return 0
