"""The peer benchmark's table and chart, from the raw results run.py writes.

`python bench/peers/report.py bench/peers/results/<stamp>.json [--chart docs/img/peers.png]`
prints the Markdown table again and redraws the chart (in bench/peers/.venv: matplotlib).
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path
from typing import Any

NAMES = {
    "maestro": "Maestro",
    "procrastinate": "Procrastinate",
    "pgqueuer": "pgqueuer",
    "celery": "Celery (Redis)",
    "prefect": "Prefect 3",
}


def pct(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(p / 100 * (len(ordered) - 1)))]


def _rows(raw: dict[str, Any], system: str, workload: str) -> list[dict[str, Any]]:
    return [m for m in raw["measurements"] if m["system"] == system and m["workload"] == workload]


def per_round(raw: dict[str, Any], system: str, workload: str, metric: str) -> dict[int, float]:
    """The metric of each round that produced one: round → value."""
    out: dict[int, float] = {}
    for m in _rows(raw, system, workload):
        r = m["result"]
        if "unsupported" in r or "error" in r:
            continue
        if metric == "jobs_per_s":
            out[m["round"]] = float(r["jobs_per_s"])
        elif metric.startswith("p"):
            out[m["round"]] = pct(r["samples_ms"], float(metric[1:]))
        elif metric == "chain_s":
            out[m["round"]] = statistics.median(r["seconds"])
    return out


def why_not(raw: dict[str, Any], system: str, workload: str) -> str | None:
    for m in _rows(raw, system, workload):
        if "unsupported" in m["result"]:
            return str(m["result"]["unsupported"])
        if "error" in m["result"]:
            return f"failed: {m['result']['error']}"
    return None


def backlog_ratio(raw: dict[str, Any], system: str) -> dict[int, float]:
    base = per_round(raw, system, "throughput", "jobs_per_s")
    loaded = per_round(raw, system, "backlog", "jobs_per_s")
    return {r: loaded[r] / base[r] for r in loaded if r in base}


def summary(values: dict[int, float]) -> tuple[float, float, float] | None:
    if not values:
        return None
    v = list(values.values())
    return statistics.median(v), min(v), max(v)


def _fmt(x: float, unit: str) -> str:
    if unit == "%":
        return f"{x * 100:.0f}%"
    if unit == "s":
        return f"{x:.3g} s" if x < 10 else f"{x:.1f} s"
    if unit == "ms":
        return f"{x:.2f} ms" if x < 10 else f"{x:.1f} ms"
    return f"{x:,.0f}"


def cell(values: dict[int, float], unit: str, missing: str | None, notes: list[str]) -> str:
    s = summary(values)
    if s is None:
        if not missing:
            return "n/a"
        if missing not in notes:
            notes.append(missing)
        return f"n/a [{notes.index(missing) + 1}]"
    med, lo, hi = s
    if len(values) == 1:
        return _fmt(med, unit)
    return f"{_fmt(med, unit)} ({_fmt(lo, unit)}–{_fmt(hi, unit)})"


def ratio_cell(ours: dict[int, float], theirs: dict[int, float], higher_is_better: bool) -> str:
    """Maestro's advantage, round by round: ×median (min–max); > 1 means Maestro is better."""
    rounds = sorted(set(ours) & set(theirs))
    if not rounds:
        return "—"
    ratios = [(ours[r] / theirs[r]) if higher_is_better else (theirs[r] / ours[r]) for r in rounds]
    med = statistics.median(ratios)
    if len(ratios) == 1:
        return f"{med:.2f}×"
    return f"{med:.2f}× ({min(ratios):.2f}–{max(ratios):.2f})"


METRICS: list[tuple[str, str, str, str, bool]] = [
    # (label, workload, metric, unit, higher is better)
    ("(1) throughput, jobs/s", "throughput", "jobs_per_s", "", True),
    ("(2) enqueue→start p50", "latency", "p50", "ms", False),
    ("(2) enqueue→start p95", "latency", "p95", "ms", False),
    ("(2) enqueue→start p99", "latency", "p99", "ms", False),
    ("(3) 40-step chain, wall time", "chain", "chain_s", "s", False),
    ("(4) throughput with the backlog, jobs/s", "backlog", "jobs_per_s", "", True),
]


def systems_of(raw: dict[str, Any]) -> list[str]:
    seen: list[str] = []
    for m in raw["measurements"]:
        if m["system"] not in seen:
            seen.append(m["system"])
    return sorted(seen, key=lambda s: list(NAMES).index(s) if s in NAMES else 99)


def markdown(raw: dict[str, Any]) -> str:
    systems = systems_of(raw)
    peers = [s for s in systems if s != "maestro"]
    m = raw["machine"]
    c = raw["config"]
    lines = [
        f"{raw['started']} · {m['host']}, {m['cores']} cores, Linux {m['kernel']} · "
        f"PostgreSQL {m.get('postgresql')}, Redis {m.get('redis-server')} · Python {m['python']}",
        "",
        "Versions: Maestro "
        + m.get("maestro", "?")
        + ", "
        + ", ".join(f"{NAMES[s]} {m.get(s, '?')}" for s in peers if s in NAMES)
        + f". {c['rounds']} rounds, interleaved; {c['workers']} worker processes × "
        f"concurrency {c['concurrency']}; medians of the rounds with (min–max).",
        "",
        "| measure | " + " | ".join(NAMES.get(s, s) for s in systems) + " |",
        "|---|" + "---|" * len(systems),
    ]
    notes: list[str] = []
    for label, workload, metric, unit, _ in METRICS:
        cells = [
            cell(per_round(raw, s, workload, metric), unit, why_not(raw, s, workload), notes)
            for s in systems
        ]
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    ratio_cells = [
        cell(backlog_ratio(raw, s), "%", why_not(raw, s, "backlog"), notes) for s in systems
    ]
    lines.append("| (4) backlog ÷ (1) | " + " | ".join(ratio_cells) + " |")
    if notes:
        lines.append("")
        lines += [f"[{i}] {text}" for i, text in enumerate(notes, 1)]
    lines += [
        "",
        "Maestro's advantage over each peer, round by round (× median (min–max); above 1 "
        "means Maestro is better: more jobs/s, or less time):",
        "",
        "| measure | " + " | ".join(NAMES.get(s, s) for s in peers) + " |",
        "|---|" + "---|" * len(peers),
    ]
    for label, workload, metric, _, higher in METRICS:
        ours = per_round(raw, "maestro", workload, metric)
        row = [
            ratio_cell(ours, per_round(raw, s, workload, metric), higher)
            if not why_not(raw, s, workload)
            else "n/a"
            for s in peers
        ]
        lines.append(f"| {label} | " + " | ".join(row) + " |")
    return "\n".join(lines)


def chart(raw: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    systems = systems_of(raw)
    panels = [
        ("Throughput (jobs/s, higher is better)", "throughput", "jobs_per_s", False),
        ("Enqueue → start, p50 (ms, lower is better)", "latency", "p50", False),
        ("40-step chain (s, lower is better)", "chain", "chain_s", True),
        ("Throughput with 100k queued (% of empty-queue)", "backlog", "ratio", False),
    ]
    fig, axes = plt.subplots(2, 2, figsize=(12, 8))
    colors = ["#d1495b" if s == "maestro" else "#8d99ae" for s in systems]
    for ax, (title, workload, metric, log) in zip(axes.flat, panels, strict=True):
        meds, errs_lo, errs_hi = [], [], []
        for s in systems:
            values = (
                backlog_ratio(raw, s) if metric == "ratio" else per_round(raw, s, workload, metric)
            )
            if metric == "ratio":
                values = {k: v * 100 for k, v in values.items()}
            sm = summary(values)
            if sm is None:
                meds.append(0.0)
                errs_lo.append(0.0)
                errs_hi.append(0.0)
            else:
                meds.append(sm[0])
                errs_lo.append(sm[0] - sm[1])
                errs_hi.append(sm[2] - sm[0])
        x = range(len(systems))
        ax.bar(x, meds, color=colors, yerr=[errs_lo, errs_hi], capsize=4)
        ax.set_xticks(list(x), [NAMES.get(s, s) for s in systems], rotation=15)
        ax.set_title(title, fontsize=11)
        if log and any(meds):
            ax.set_yscale("log")
        floor = ax.get_ylim()[0]
        for i, (s, v) in enumerate(zip(systems, meds, strict=True)):
            if v == 0:
                ax.text(i, floor, "n/a", ha="center", va="bottom", fontsize=9, color="#555")
            else:
                label = f"{v:,.0f}" if v >= 100 else (f"{v:.1f}" if v >= 1 else f"{v:.2f}")
                ax.text(i, v, label, ha="center", va="bottom", fontsize=9)
            del s
        ax.grid(axis="y", alpha=0.3)
    c = raw["config"]
    fig.suptitle(
        f"Maestro vs peers — {raw['started']}, {raw['machine']['cores']} cores, "
        f"{c['rounds']} interleaved rounds (bars: median, whiskers: min–max)",
        fontsize=12,
    )
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("results", type=Path)
    parser.add_argument("--chart", type=Path, default=None)
    args = parser.parse_args()
    raw = json.loads(args.results.read_text())
    print(markdown(raw))
    if args.chart:
        chart(raw, args.chart)


if __name__ == "__main__":
    main()
