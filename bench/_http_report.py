"""Tables, goal ratios and plots for bench/http.py.

Kept apart from the runner so the runner stays about processes and wrk. Results are
keyed by ``(variant name, mode)``; each value is the dict ``http.py`` measured (or has
an ``error``). Variants are anything with ``name``, ``kind`` and ``family`` attributes.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Protocol

from _common import RESULTS_DIR, format_table

MODES = ("keep-alive", "close")
Results = dict[tuple[str, str], dict[str, Any]]

# The goals: ratios of requests/s (see ratio_rows for which runs).
GOAL_CLOSE_VS_NODE = 2.0
GOAL_CLOSE_VS_SHARED = 0.9
GOAL_KEEPALIVE_VS_SHARED = 0.95
# Another process using more CPU than this during a run makes its numbers doubtful.
BUSY_WARNING_PCT = 15.0


class VariantInfo(Protocol):
    """What the report needs to know about a variant."""

    @property
    def name(self) -> str: ...

    @property
    def kind(self) -> str: ...

    @property
    def family(self) -> str: ...


def _disturbed(r: dict[str, Any]) -> bool:
    """Whether other processes took enough CPU during the run to doubt its numbers."""
    return bool(r.get("cpu_pct", {}).get("other", 0.0) > BUSY_WARNING_PCT)


def _ok(r: dict[str, Any] | None) -> bool:
    """Whether a run exists and produced numbers."""
    return r is not None and "error" not in r


def share_text(shares: dict[str, int]) -> str:
    """Worker shares as percentages, e.g. ``50/50``: by worker id when known, else largest first."""
    total = sum(shares.values())
    if not total:
        return "-"
    if all(k.startswith(("pyc-w", "node-w")) for k in shares):
        keys = sorted(shares, key=lambda k: int(k.rsplit("w", 1)[1]))
    else:
        keys = sorted(shares, key=lambda k: -shares[k])  # keyed by pid: no natural order
    return "/".join(f"{100 * shares[k] / total:.0f}" for k in keys)


def _notes(r: dict[str, Any], mode: str) -> str:
    """Caveats for one run: a server that ignores the mode, a busy machine, old data."""
    notes = []
    checks = r.get("checks", {})
    if mode == "close" and not checks.get("closes", True):
        notes.append("server keeps the connection")
    if mode == "keep-alive" and not checks.get("keeps_alive", True):
        notes.append("server closes every connection")
    if _disturbed(r):
        other = r["cpu_pct"]["other"]
        top = ", ".join(r.get("other_processes", [])[:2])
        notes.append(f"busy machine: others used {other:.0f}% CPU ({top})")
    if r.get("stale"):
        notes.append(f"from {r['stale']}")
    return "; ".join(notes)


def results_table(results: Results, variants: Sequence[VariantInfo]) -> str:
    """One table per mode: throughput, latency, shares, CPU (100% = one core)."""
    out = []
    for mode in MODES:
        rows: list[list[object]] = []
        for v in variants:
            r = results.get((v.name, mode))
            if r is None:
                continue
            if "error" in r:
                rows.append([v.name, "", "", "", "", "", "", "", "", "FAILED: " + r["error"]])
                rows[-1][-1] = str(rows[-1][-1]).splitlines()[0]
                continue
            lat, cpu = r["latency_ms"], r["cpu_pct"]
            rows.append(
                [
                    v.name,
                    round(r["rps"]),
                    lat["p50"],
                    lat["p99"],
                    r["error_total"],
                    share_text(r["shares"]),
                    round(cpu["primary"]),
                    round(cpu["workers"]),
                    round(cpu["wrk"]),
                    _notes(r, mode),
                ]
            )
        if rows:
            headers = ["variant", "req/s", "p50 ms", "p99 ms", "errors", "shares %"]
            headers += ["cpu% primary", "cpu% workers", "cpu% wrk", "notes"]
            out.append(f"== {mode} ==\n" + format_table(headers, rows))
    return "\n\n".join(out)


def ratio_rows(results: Results, variants: Sequence[VariantInfo]) -> list[dict[str, Any]]:
    """The goal ratios for every pycluster server family, and Node's own rr/none for context."""
    rows: list[dict[str, Any]] = []

    def add(num: str, num_mode: str, den: str, den_mode: str, goal: float | None) -> None:
        a, b = results.get((num, num_mode)), results.get((den, den_mode))
        if a is None or b is None:
            return  # not run: nothing to say
        # A failed run still gets a row, so a goal that could not be checked shows.
        value = a["rps"] / b["rps"] if _ok(a) and _ok(b) and b["rps"] else None
        rows.append(
            {
                "numerator": f"{num} {num_mode}",
                "denominator": f"{den} {den_mode}",
                "ratio": value,
                "goal": goal,
                "pass": None if goal is None or value is None else value >= goal,
                "disturbed": _disturbed(a) or _disturbed(b),
            }
        )

    families: list[str] = []
    for v in variants:
        if v.kind == "pycluster" and v.family not in families:
            families.append(v.family)
    for fam in families:
        rr, none = f"{fam}-rr", f"{fam}-none"
        add(rr, "close", "node-rr", "close", GOAL_CLOSE_VS_NODE)
        add(rr, "close", none, "close", GOAL_CLOSE_VS_SHARED)
        add(rr, "keep-alive", none, "keep-alive", GOAL_KEEPALIVE_VS_SHARED)
        # For context: the kernel's SO_REUSEPORT balancing, where a family has it.
        add(rr, "close", f"{fam}-reuseport", "close", None)
        add(rr, "keep-alive", f"{fam}-reuseport", "keep-alive", None)
    add("node-rr", "close", "node-none", "close", None)
    add("node-rr", "keep-alive", "node-none", "keep-alive", None)
    return rows


def reference_matrix(
    results: Results, variants: Sequence[VariantInfo]
) -> tuple[list[str], list[list[object]]]:
    """Each pycluster variant's req/s over each reference's (Node, uvicorn, gunicorn), per mode."""
    refs = [v.name for v in variants if v.kind in ("node", "reference")]
    short = {"keep-alive": "ka", "close": "close"}
    headers = ["variant"] + [f"/{ref} {short[m]}" for ref in refs for m in MODES]
    rows: list[list[object]] = []
    for v in variants:
        if v.kind != "pycluster":
            continue
        row: list[object] = [v.name]
        for ref in refs:
            for mode in MODES:
                a, b = results.get((v.name, mode)), results.get((ref, mode))
                both = _ok(a) and _ok(b) and b["rps"]  # type: ignore[index]
                row.append(a["rps"] / b["rps"] if both else None)  # type: ignore[index]
        if any(x is not None for x in row[1:]):
            rows.append(row)
    return headers, rows


def _verdict(row: dict[str, Any]) -> str:
    """PASS / FAIL for a goal, ``no data`` when a run behind it failed, blank without goal."""
    if row["goal"] is None:
        return ""
    if row["pass"] is None:
        return "no data"
    verdict = "PASS" if row["pass"] else "FAIL"
    return f"{verdict} (busy machine)" if row.get("disturbed") else verdict


def print_report(
    results: Results, variants: Sequence[VariantInfo], skipped: dict[str, str]
) -> list[dict[str, Any]]:
    """Print the tables and the ratios; returns the ratio rows for the JSON record."""
    print(results_table(results, variants))
    ratios = ratio_rows(results, variants)
    if ratios:
        print("\n== ratios of requests/s (goals from the issue) ==")
        rows = [
            [
                r["numerator"],
                r["denominator"],
                "n/a" if r["ratio"] is None else r["ratio"],
                "" if r["goal"] is None else f">= {r['goal']:g}",
                _verdict(r),
            ]
            for r in ratios
        ]
        print(format_table(["numerator", "denominator", "ratio", "goal", "verdict"], rows))
    headers, matrix = reference_matrix(results, variants)
    if matrix:
        print("\n== pycluster / references (ratio of requests/s) ==")
        print(format_table(headers, matrix))
    for name, reason in skipped.items():
        print(f"skipped {name}: {reason}")
    return ratios


def plot(results: Results, variants: Sequence[VariantInfo]) -> list[Path]:
    """Save throughput, latency and share plots under bench/results; returns the files."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        from matplotlib.ticker import FormatStrFormatter, NullFormatter
    except ImportError:
        print("matplotlib is not installed (pip install -e '.[bench]'): no plots")
        return []
    names = [v.name for v in variants if any((v.name, m) in results for m in MODES)]
    if not names:
        return []

    def value(name: str, mode: str, get: Callable[[dict[str, Any]], float]) -> float:
        r = results.get((name, mode))
        return get(r) if r is not None and _ok(r) else 0.0

    written: list[Path] = []
    ys = list(range(len(names)))
    bar = 0.4
    mode_color = {"keep-alive": "tab:blue", "close": "tab:orange"}
    tall = 0.45 * len(names) + 1.6

    def save(fig: Any, name: str) -> None:
        fig.tight_layout()
        written.append(RESULTS_DIR / name)
        fig.savefig(written[-1], dpi=120)
        plt.close(fig)

    # Throughput: both modes side by side per variant.
    fig, ax = plt.subplots(figsize=(9, tall))
    for i, mode in enumerate(MODES):
        vals = [value(n, mode, lambda r: r["rps"]) for n in names]
        pos = [y + (i - 0.5) * bar for y in ys]
        ax.barh(pos, vals, height=bar, label=mode, color=mode_color[mode])
        for p, val, name in zip(pos, vals, names, strict=True):
            r = results.get((name, mode))
            if val:
                ax.text(val, p, f" {val:,.0f}", va="center", fontsize=7)
            elif r is not None and "error" in r:
                # A failed run stays visible rather than silently missing.
                ax.text(0, p, " failed (see http.json)", va="center", fontsize=7, color="red")
    ax.set_yticks(ys, names)
    ax.invert_yaxis()
    ax.margins(x=0.12)
    ax.set_xlabel("requests/s, 2 workers (higher is better)")
    ax.set_title("hello world over HTTP/1.1: wrk on 127.0.0.1")
    ax.legend(loc="lower right")
    save(fig, "http_rps.png")

    # Latency: p50 and p99, one panel per mode, log scale (they span two decades).
    fig, axes = plt.subplots(1, 2, figsize=(11, tall), sharey=True)
    for ax, mode in zip(axes, MODES, strict=True):
        p50 = [value(n, mode, lambda r: r["latency_ms"]["p50"]) for n in names]
        p99 = [value(n, mode, lambda r: r["latency_ms"]["p99"]) for n in names]
        ax.barh([y - bar / 2 for y in ys], p50, height=bar, label="p50", color="tab:green")
        ax.barh([y + bar / 2 for y in ys], p99, height=bar, label="p99", color="tab:red")
        ax.set_xscale("log")
        ax.xaxis.set_major_formatter(FormatStrFormatter("%g"))
        ax.xaxis.set_minor_formatter(NullFormatter())
        ax.set_title(f"latency, {mode}")
        ax.set_xlabel("ms, log scale (lower is better)")
    axes[0].set_yticks(ys, names)
    axes[0].invert_yaxis()
    axes[1].legend(loc="upper left", bbox_to_anchor=(1.0, 1.0))
    save(fig, "http_latency.png")

    # Shares: one stacked bar per variant, workers in a fixed colour order.
    fig, axes = plt.subplots(1, 2, figsize=(11, tall), sharey=True)
    worker_colors = ["tab:blue", "tab:orange", "tab:green", "tab:purple", "tab:brown"]
    for ax, mode in zip(axes, MODES, strict=True):
        for y, name in enumerate(names):
            r = results.get((name, mode))
            if r is None or not _ok(r) or not r["shares"]:
                continue
            total = sum(r["shares"].values())
            left = 0.0
            counts = sorted(r["shares"].values(), reverse=True)
            for i, n in enumerate(counts):
                width = n / total
                color = worker_colors[i % len(worker_colors)]
                ax.barh(y, width, left=left, height=0.6, color=color, edgecolor="white")
                ax.text(left + width / 2, y, f"{100 * width:.0f}%", ha="center", va="center")
                left += width
        ax.axvline(0.5, color="black", linewidth=0.8, linestyle="--")
        ax.set_xlim(0, 1)
        ax.set_xlabel("fraction of requests (largest worker first)")
        ax.set_title(f"worker shares, {mode}")
    axes[0].set_yticks(ys, names)
    axes[0].invert_yaxis()
    save(fig, "http_shares.png")
    return written
