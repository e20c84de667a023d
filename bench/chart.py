"""The PNG chart (matplotlib, headless). Kept apart so a missing matplotlib is one clear
message at start-up rather than an ImportError after minutes of measuring."""

from __future__ import annotations

from pathlib import Path
from typing import Any

HINT = "pip install -r bench/requirements.txt (or run with --no-chart)"
COLOURS = {"udp": "#4C72B0", "tcp": "#DD8452", "dot": "#55A868", "doh": "#8172B2"}
BAR = 0.38


def missing() -> str | None:
    """None if matplotlib can be imported, else the message to print."""
    try:
        import matplotlib  # noqa: F401
    except ImportError as exc:
        return f"matplotlib is not installed ({exc}): {HINT}"
    return None


def _title(ax: Any, title: str, notes: list[str] | None) -> None:
    """``title`` with ``notes`` (ratio lines) in small print between it and the axes."""
    if not notes:
        ax.set_title(title)
        return
    ax.set_title(title, pad=8 + 11 * len(notes))
    ax.text(
        0.5, 1.01, "\n".join(notes), transform=ax.transAxes, ha="center", va="bottom", fontsize=8
    )


def _qps_bars(ax: Any, cells: list[dict[str, object]], rotation: int) -> None:
    """q/s per server, UDP and TCP side by side (DoT and DoH rows centred)."""
    labels = list(dict.fromkeys(str(c["label"]) for c in cells))
    for i, transport in enumerate(("udp", "tcp", "dot", "doh")):
        xs, ys = [], []
        for j, label in enumerate(labels):
            for c in cells:
                if c["label"] == label and c["transport"] == transport:
                    xs.append(j + (i - 0.5) * BAR if transport in ("udp", "tcp") else j)
                    ys.append(c["metrics"]["qps"])  # type: ignore[index]
        if xs:
            ax.bar(xs, ys, BAR, label=transport, color=COLOURS[transport])
    ax.set_xticks(range(len(labels)), labels, rotation=rotation, ha="right")
    ax.set_ylabel("queries/s")
    ax.legend()


def draw(
    cells: list[dict[str, object]],
    path: Path,
    title: str,
    notes: list[str] | None = None,
    cache_note: str | None = None,
) -> None:
    """One panel per workload with numbers to draw: throughput bars, cache-hit bars,
    published latency bars, the sustained RSS line.

    ``notes`` are printed above the throughput bars (the DoH ratio line, for one),
    ``cache_note`` above the cache bars (dns2dot / unbound, UDP and TCP).
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    def ok(workload: str) -> list[dict[str, object]]:
        return [c for c in cells if c["workload"] == workload and c["ok"]]

    tp, cached, pub = ok("throughput"), ok("cache"), ok("published")
    listening = ok("listeners")
    sus = [
        c
        for c in ok("sustained")
        if isinstance(c["detail"], dict) and c["detail"].get("rss_samples")
    ]
    panels = [
        name
        for name, present in (
            ("throughput", tp),
            ("cache", cached),
            ("published", pub),
            ("sustained", sus),
            ("listeners", listening),
        )
        if present
    ] or ["none"]
    fig, axes = plt.subplots(
        1,
        len(panels),
        figsize=(6 * len(panels) + (3 if "throughput" in panels else 0), 5.5),
        gridspec_kw={"width_ratios": [1.6 if p == "throughput" else 1.0 for p in panels]},
        squeeze=False,
    )
    for ax, panel in zip(axes[0], panels, strict=True):
        if panel == "throughput":
            _qps_bars(ax, tp, rotation=30)
            _title(ax, "max throughput (higher is better)", notes)
        elif panel == "cache":
            _qps_bars(ax, cached, rotation=15)
            note = cache_note.replace("cache hits: ", "") if cache_note else None
            _title(ax, "cache hits, caches warmed (higher is better)", [note] if note else None)
        elif panel == "published":
            names = [str(c["label"]) for c in pub]
            avg = [float(c["metrics"]["avg_ms"]) for c in pub]  # type: ignore[index]
            mx = [float(c["metrics"]["max_ms"]) for c in pub]  # type: ignore[index]
            xs = list(range(len(names)))
            ax.bar([x - 0.2 for x in xs], avg, 0.4, label="avg", color="#4C72B0")
            ax.bar([x + 0.2 for x in xs], mx, 0.4, label="max", color="#C44E52")
            ax.set_xticks(xs, names)
            ax.set_yscale("log")
            ax.set_ylabel("latency, ms (log)")
            ax.set_title("published workload, TCP -c 10 -Q 30 (lower is better)")
            ax.legend()
        elif panel == "listeners":
            _qps_bars(ax, listening, rotation=30)
            _title(ax, "DoT and DoH served to clients (higher is better)", None)
        elif panel == "sustained":
            samples = sus[0]["detail"]["rss_samples"]  # type: ignore[index]
            ax.plot([t for t, _ in samples], [k / 1024 for _, k in samples], marker=".")
            ax.set_xlabel("seconds")
            ax.set_ylabel("dns2dot RSS, MiB")
            ax.set_title("sustained UDP: RSS over time")
            ax.set_ylim(bottom=0)
        else:
            ax.axis("off")
            ax.text(0.5, 0.5, "no throughput, cache, published or sustained numbers", ha="center")

    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
