"""The PNG chart (matplotlib, headless). Kept apart so a missing matplotlib is one clear
message at start-up rather than an ImportError after minutes of measuring."""

from __future__ import annotations

from pathlib import Path

HINT = "pip install -r bench/requirements.txt (or run with --no-chart)"


def missing() -> str | None:
    """None if matplotlib can be imported, else the message to print."""
    try:
        import matplotlib  # noqa: F401
    except ImportError as exc:
        return f"matplotlib is not installed ({exc}): {HINT}"
    return None


def draw(
    cells: list[dict[str, object]], path: Path, title: str, notes: list[str] | None = None
) -> None:
    """Throughput bars, published latency bars, and the sustained RSS line if present.

    ``notes`` are printed under the throughput bars (the DoH ratio line, for one).
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    def ok(workload: str) -> list[dict[str, object]]:
        return [c for c in cells if c["workload"] == workload and c["ok"]]

    tp, pub = ok("throughput"), ok("published")
    sus = [
        c
        for c in ok("sustained")
        if isinstance(c["detail"], dict) and c["detail"].get("rss_samples")
    ]
    panels = 2 + (1 if sus else 0)
    fig, axes = plt.subplots(
        1,
        panels,
        figsize=(6 * panels + 3, 5.5),
        gridspec_kw={"width_ratios": [1.6] + [1] * (panels - 1)},
    )
    colours = {"udp": "#4C72B0", "tcp": "#DD8452", "dot": "#55A868", "doh": "#8172B2"}

    ax = axes[0]
    labels = list(dict.fromkeys(str(c["label"]) for c in tp))
    width = 0.38
    for i, transport in enumerate(("udp", "tcp", "dot", "doh")):
        xs, ys = [], []
        for j, label in enumerate(labels):
            for c in tp:
                if c["label"] == label and c["transport"] == transport:
                    xs.append(j + (i - 0.5) * width if transport in ("udp", "tcp") else j)
                    ys.append(c["metrics"]["qps"])  # type: ignore[index]
        if xs:
            ax.bar(xs, ys, width, label=transport, color=colours[transport])
    ax.set_xticks(range(len(labels)), labels, rotation=30, ha="right")
    ax.set_ylabel("queries/s")
    ax.legend()
    if notes:
        ax.set_title("max throughput (higher is better)", pad=8 + 11 * len(notes))
        ax.text(
            0.5,
            1.01,
            "\n".join(notes),
            transform=ax.transAxes,
            ha="center",
            va="bottom",
            fontsize=8,
        )
    else:
        ax.set_title("max throughput (higher is better)")

    ax = axes[1]
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

    if sus:
        ax = axes[2]
        samples = sus[0]["detail"]["rss_samples"]  # type: ignore[index]
        ax.plot([t for t, _ in samples], [k / 1024 for _, k in samples], marker=".")
        ax.set_xlabel("seconds")
        ax.set_ylabel("dns2dot RSS, MiB")
        ax.set_title("sustained UDP: RSS over time")
        ax.set_ylim(bottom=0)

    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
