"""Tables, goal ratios and plots for bench/http.py.

Kept apart from the runner so the runner stays about processes and wrk. Results are
keyed by ``(variant name, mode)``; each value is the dict ``http.py`` measured (or has
an ``error``). Variants are anything with ``name``, ``kind`` and ``family`` attributes.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Protocol

from _common import RESULTS_DIR, format_cell, format_table

MODES = ("keep-alive", "close")  # measured by wrk
FRESH = "fresh"  # the fresh-connection split, measured by http.py's own client
ALL_MODES = (*MODES, FRESH)
Results = dict[tuple[str, str], dict[str, Any]]

# The goals (see goal_rows for which runs each one compares).
GOAL_CLOSE_VS_NODE = 2.0  # round robin, Connection: close, over Node's round robin
GOAL_CLOSE_VS_SHARED = 0.85  # round robin, Connection: close, over our shared policy
GOAL_KEEPALIVE_VS_SHARED = 0.95  # round robin over shared, keep-alive
GOAL_BUSIEST_SHARE = 0.55  # busiest of the workers, 50 keep-alive connections, both policies
# Fresh connections under round robin: "split within 2 %" read as every worker's share
# within 2 percentage points of an even split (48-52 % of 2,000 with two workers).
GOAL_FRESH_DEVIATION = 0.02
GOAL_SERVE_VS_PEER = 1.0  # serve ASGI over uvicorn, serve WSGI over gunicorn sync
# Each serve interface, its goal's peer and the stretch anchor (no goal).
SERVE_PEERS = {
    "pyc-serve-asgi": ("uvicorn", "granian-asgi"),
    "pyc-serve-wsgi": ("gunicorn-sync", "granian-wsgi"),
}
# The pycluster server whose handler the hand-off floor's workers run (bench/floor/).
FLOOR_TWIN = "pyc-aio"
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
    if r.get("missing_counts"):
        notes.append(f"{r['missing_counts']} worker(s) wrote no count: shares incomplete")
    if r.get("stale"):
        notes.append(f"from {r['stale']}")
    return "; ".join(notes)


def conns_text(r: dict[str, Any]) -> str:
    """Keep-alive connections per worker, largest first (e.g. ``25/25``), if sampled."""
    placed = r.get("connections_per_worker")
    return "/".join(str(n) for n in placed) if placed else ""


def busiest_share(r: dict[str, Any]) -> float | None:
    """The largest worker's fraction of a run's requests, or None without every count."""
    shares = r.get("shares") or {}
    total = sum(shares.values())
    if r.get("missing_counts"):
        return None
    return max(shares.values()) / total if total else None


def results_table(results: Results, variants: Sequence[VariantInfo]) -> str:
    """One table per wrk mode: throughput, latency, shares, CPU (100% = one core)."""
    out = []
    for mode in MODES:
        rows: list[list[object]] = []
        for v in variants:
            r = results.get((v.name, mode))
            if r is None:
                continue
            if "error" in r:
                rows.append([v.name, *[""] * 10, "FAILED: " + r["error"].splitlines()[0]])
                continue
            lat, cpu = r["latency_ms"], r["cpu_pct"]
            busiest = busiest_share(r)
            rows.append(
                [
                    v.name,
                    round(r["rps"]),
                    lat["p50"],
                    lat["p99"],
                    r["error_total"],
                    share_text(r["shares"]),
                    "" if busiest is None else round(100 * busiest),
                    conns_text(r),
                    round(cpu["primary"]),
                    round(cpu["workers"]),
                    round(cpu["wrk"]),
                    _notes(r, mode),
                ]
            )
        if rows:
            headers = ["variant", "req/s", "p50 ms", "p99 ms", "errors", "shares %", "busiest %"]
            headers += ["conns", "cpu% primary", "cpu% workers", "cpu% wrk", "notes"]
            out.append(f"== {mode} ==\n" + format_table(headers, rows))
    return "\n\n".join(out)


def fresh_table(results: Results, variants: Sequence[VariantInfo]) -> str:
    """The fresh-connection split: each worker's count of the new connections."""
    rows: list[list[object]] = []
    for v in variants:
        r = results.get((v.name, FRESH))
        if r is None:
            continue
        if "error" in r:
            rows.append([v.name, "", "", "", "", "", "FAILED: " + r["error"].splitlines()[0]])
            continue
        counts = "/".join(f"{r['shares'][k]:,}" for k in sorted(r["shares"])) or "-"
        dev = r["max_deviation"]
        notes = _notes(r, FRESH)
        if r["counted"] != r["connections"]:
            notes = "; ".join(
                x for x in (f"workers counted {r['counted']:,} of {r['connections']:,}", notes) if x
            )
        rows.append(
            [
                v.name,
                r["connections"],
                r["answered"],
                round(r["rps"]),
                counts,
                None if dev is None else 100 * dev,
                notes,
            ]
        )
    if not rows:
        return ""
    headers = ["variant", "connections", "answered", "conn/s", "per worker"]
    headers += ["max points from even", "notes"]
    return "== fresh connections, one request each ==\n" + format_table(headers, rows)


def goal_rows(results: Results, variants: Sequence[VariantInfo]) -> list[dict[str, Any]]:
    """Every figure the issue sets a goal on, plus a few for context (``target`` None).

    Each row: ``goal`` (which of the issue's goals), ``figure`` (what was compared),
    ``value`` and ``unit`` (``x`` a ratio of requests/s, ``%`` a share, ``points`` a
    distance from an even split), ``target`` (``(">=" or "<=", number)`` or None),
    ``pass`` (None: no goal, or a run behind it failed) and ``disturbed``.
    """
    rows: list[dict[str, Any]] = []
    names = {v.name for v in variants}

    def row(
        goal: str,
        figure: str,
        value: float | None,
        unit: str,
        target: tuple[str, float] | None,
        runs: list[dict[str, Any] | None],
        note: str = "",
    ) -> None:
        passed = None
        if target is not None and value is not None:
            op, bound = target
            # A hair of slack for float error: 1,040 of 2,000 is exactly 2 points off.
            passed = value >= bound - 1e-9 if op == ">=" else value <= bound + 1e-9
        rows.append(
            {
                "goal": goal,
                "figure": figure,
                "value": value,
                "unit": unit,
                "target": target,
                "pass": passed,
                "disturbed": any(r is not None and _disturbed(r) for r in runs),
                "note": note,
            }
        )

    def ratio(
        goal: str, num: str, den: str, mode: str, target: float | None, note: str = ""
    ) -> None:
        a, b = results.get((num, mode)), results.get((den, mode))
        if a is None or b is None:
            return  # not run: nothing to say
        # A failed run still gets a row, so a goal that could not be checked shows.
        value = a["rps"] / b["rps"] if _ok(a) and _ok(b) and b["rps"] else None
        target_ = None if target is None else (">=", target)
        row(goal, f"{num} / {den}, {mode}", value, "x", target_, [a, b], note)

    def ceiling(fam: str) -> str:
        """Why a server's round robin cannot reach the goal against Node, if it cannot:
        the same server without any hand-off (its shared policy) is below the bound."""
        shared, node = results.get((f"{fam}-none", "close")), results.get(("node-rr", "close"))
        if shared is None or node is None or not (_ok(shared) and _ok(node) and node["rps"]):
            return ""
        top = shared["rps"] / node["rps"]
        if top < GOAL_CLOSE_VS_NODE:
            return f"out of reach: the same server without a hand-off ({fam}-none) is {top:.2f}x"
        return floor_below(fam, "node-rr", GOAL_CLOSE_VS_NODE)

    def floor_below(fam: str, den: str, bound: float) -> str:
        """Why a goal is out of reach for ``fam`` if the hand-off floor, which runs the
        same handler with a primary that only accepts, passes and closes, misses it too.
        """
        if fam != FLOOR_TWIN:
            return ""
        floor, base = results.get(("floor-rr", "close")), results.get((den, "close"))
        if floor is None or base is None or not (_ok(floor) and _ok(base) and base["rps"]):
            return ""
        top = floor["rps"] / base["rps"]
        if top >= bound:
            return ""
        return f"out of reach: the hand-off floor (floor-rr, same handler) is {top:.2f}x"

    families: list[str] = []
    for v in variants:
        if v.kind == "pycluster" and v.family not in families:
            families.append(v.family)

    for fam in families:
        ratio(
            "rr close >= 2x Node rr",
            f"{fam}-rr",
            "node-rr",
            "close",
            GOAL_CLOSE_VS_NODE,
            ceiling(fam),
        )
    for fam in families:
        goal = f"rr close >= {GOAL_CLOSE_VS_SHARED:g}x shared"
        note = floor_below(fam, "floor-none", GOAL_CLOSE_VS_SHARED)
        ratio(goal, f"{fam}-rr", f"{fam}-none", "close", GOAL_CLOSE_VS_SHARED, note)
    for fam in families:
        goal = f"rr keep-alive >= {GOAL_KEEPALIVE_VS_SHARED:g}x shared"
        ratio(goal, f"{fam}-rr", f"{fam}-none", "keep-alive", GOAL_KEEPALIVE_VS_SHARED)

    share_goal = f"busiest worker <= {100 * GOAL_BUSIEST_SHARE:g} %, keep-alive"
    for fam in [*families, "node"]:
        for policy in ("rr", "none"):
            name = f"{fam}-{policy}"
            r = results.get((name, "keep-alive"))
            if r is None:
                continue
            busiest = busiest_share(r) if _ok(r) else None
            target = None if fam == "node" else ("<=", 100 * GOAL_BUSIEST_SHARE)
            value = None if busiest is None else 100 * busiest
            placed = f"; conns {conns_text(r)}" if conns_text(r) else ""
            figure = f"{name} ({share_text(r.get('shares', {}))}{placed})"
            row(share_goal, figure, value, "%", target, [r])

    fresh_goal = f"fresh connections within {100 * GOAL_FRESH_DEVIATION:g} points of even, rr"
    for v in variants:
        r = results.get((v.name, FRESH))
        if r is None:
            continue
        dev = r.get("max_deviation") if _ok(r) else None
        note = ""
        if _ok(r) and r["counted"] != r["connections"]:
            # Connections the workers never counted: the split is not of all of them.
            note = f"only {r['counted']:,} of {r['connections']:,} counted"
            dev = None if dev is None else max(dev, 1.0)
        target = None if v.kind != "pycluster" else ("<=", 100 * GOAL_FRESH_DEVIATION)
        counts = "/".join(str(n) for _, n in sorted(r.get("shares", {}).items()))
        figure = f"{v.name}: {counts or '-'} of {r.get('connections', '?')}"
        row(fresh_goal, figure, None if dev is None else 100 * dev, "points", target, [r], note)

    for fam, (peer, _anchor) in SERVE_PEERS.items():
        goal = f"serve >= {GOAL_SERVE_VS_PEER:g}x peer (ASGI: uvicorn, WSGI: gunicorn sync)"
        for policy in ("rr", "none"):
            for mode in MODES:
                ratio(goal, f"{fam}-{policy}", peer, mode, GOAL_SERVE_VS_PEER)

    # Context, no goal: the kernel's SO_REUSEPORT balancing, Node's own two policies.
    for fam in families:
        if f"{fam}-reuseport" in names:
            for mode in MODES:
                ratio("context", f"{fam}-rr", f"{fam}-reuseport", mode, None)
    for mode in MODES:
        ratio("context", "node-rr", "node-none", mode, None)
    # Context, no goal: the hand-off floor (bench/floor/hop.c), a primary that does
    # nothing but hand over, beside asyncio workers without pycluster: what a hand-off
    # costs on this machine, to set against pyc-aio's own rr / none. The same primary
    # in Python (bench/floor/hop.py) splits pycluster's hop into what Python costs
    # (floor-py-rr against floor-rr) and what the guarantees cost (pyc-aio-rr against
    # floor-py-rr: window, acknowledgements, no connection lost, busy and lagging
    # workers passed over).
    for mode in MODES:
        ratio("context", "floor-rr", "floor-none", mode, None)
        ratio("context", "floor-py-rr", "floor-none", mode, None)
    ratio("context", "floor-rr", "node-rr", "close", None)
    ratio("context", "floor-py-rr", "floor-rr", "close", None)
    ratio("context", "pyc-aio-rr", "floor-py-rr", "close", None)
    return rows


def serve_table(
    results: Results, variants: Sequence[VariantInfo]
) -> tuple[list[str], list[list[object]]]:
    """``pycluster serve`` next to its goal's peer and granian (the stretch anchor)."""
    headers = ["variant", "mode", "req/s", "peer", "peer req/s", "x peer", "goal", "verdict"]
    headers += ["granian req/s", "x granian"]
    rows: list[list[object]] = []
    names = {v.name for v in variants}
    for fam, (peer, anchor) in SERVE_PEERS.items():
        for policy in ("rr", "none"):
            name = f"{fam}-{policy}"
            if name not in names:
                continue
            for mode in MODES:
                r = results.get((name, mode))
                if r is None:
                    continue
                p, g = results.get((peer, mode)), results.get((anchor, mode))
                rps = r["rps"] if _ok(r) else None
                p_rps = p["rps"] if p is not None and _ok(p) else None
                g_rps = g["rps"] if g is not None and _ok(g) else None
                x_peer = rps / p_rps if rps and p_rps else None
                x_anchor = rps / g_rps if rps and g_rps else None
                verdict = (
                    "no data"
                    if x_peer is None
                    else _pass_text(
                        x_peer >= GOAL_SERVE_VS_PEER,
                        _disturbed(r) or (p is not None and _disturbed(p)),
                    )
                )
                rows.append(
                    [
                        name,
                        mode,
                        None if rps is None else round(rps),
                        peer,
                        None if p_rps is None else round(p_rps),
                        x_peer,
                        f">= {GOAL_SERVE_VS_PEER:g}x",
                        verdict,
                        None if g_rps is None else round(g_rps),
                        x_anchor,
                    ]
                )
    return headers, rows


def _pass_text(passed: bool, disturbed: bool) -> str:
    """PASS or FAIL, flagged when another process disturbed a run behind it."""
    verdict = "PASS" if passed else "FAIL"
    return f"{verdict} (busy machine)" if disturbed else verdict


def _verdict(row: dict[str, Any]) -> str:
    """PASS / FAIL for a goal, ``no data`` when a run behind it failed, blank without goal."""
    if row["target"] is None:
        return ""
    if row["pass"] is None:
        return "no data"
    return _pass_text(row["pass"], row.get("disturbed", False))


def _measured(row: dict[str, Any]) -> str:
    """A goal row's value with its unit."""
    value = row["value"]
    if value is None:
        return "n/a"
    if row["unit"] == "x":
        return f"{value:.2f}x"
    if row["unit"] == "%":
        return f"{value:.1f} %"
    return f"{value:.2f} points"


def _target_text(row: dict[str, Any]) -> str:
    """A goal row's target with its unit, blank without a goal."""
    if row["target"] is None:
        return ""
    unit = {"x": "x", "%": " %", "points": " points"}[row["unit"]]
    return f"{row['target'][0]} {row['target'][1]:g}{unit}"


def print_report(
    results: Results, variants: Sequence[VariantInfo], skipped: dict[str, str]
) -> list[dict[str, Any]]:
    """Print the tables and the goals; returns the goal rows for the JSON record."""
    print(results_table(results, variants))
    fresh = fresh_table(results, variants)
    if fresh:
        print("\n" + fresh)
    headers, serve = serve_table(results, variants)
    if serve:
        print("\n== pycluster serve against uvicorn / gunicorn (goal) and granian (anchor) ==")
        print(format_table(headers, serve))
    goals = goal_rows(results, variants)
    if goals:
        print("\n== the issue's goals ==")
        rows = []
        for g in goals:
            verdict = _verdict(g)
            if g["note"]:
                verdict = f"{verdict} ({g['note']})" if verdict else g["note"]
            rows.append([g["goal"], g["figure"], _measured(g), _target_text(g), verdict])
        print(format_table(["goal", "figure", "measured", "target", "verdict"], rows))
        judged = [g for g in goals if g["target"] is not None]
        met = sum(1 for g in judged if g["pass"])
        print(f"\n{met} of {len(judged)} goals met in this run")
    for name, reason in skipped.items():
        print(f"skipped {name}: {reason}")
    return goals


def _md_table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """A Markdown table, cells formatted as in the printed tables."""
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(format_cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def goal_matrix(
    goals: list[dict[str, Any]], variants: Sequence[VariantInfo]
) -> tuple[list[str], list[list[object]]]:
    """The goals as one row per goal and one column per pycluster server family.

    A cell is the measured value and a mark (ok / FAIL; * for a busy machine); a goal
    with several figures per family (a policy, a mode) gets a row for each.
    """
    families: list[str] = []
    for v in variants:
        if v.kind == "pycluster" and v.family not in families:
            families.append(v.family)
    cells: dict[tuple[str, str], dict[str, str]] = {}
    order: list[tuple[str, str]] = []
    for g in goals:
        if g["target"] is None:
            continue
        figure = g["figure"]
        fam = next(
            (f for f in sorted(families, key=len, reverse=True) if figure.startswith(f + "-")),
            None,
        )
        if fam is None:
            continue
        # What tells this figure apart from its family's other figures of the same goal.
        detail = figure.split(" ", 1)[0].removeprefix(fam + "-").split(":")[0]
        detail = detail.split("/", 1)[0].strip()
        if "," in figure:
            detail += ", " + figure.rsplit(", ", 1)[1]
        key = (g["goal"], detail)
        if key not in cells:
            cells[key] = {}
            order.append(key)
        mark = "n/a" if g["pass"] is None else ("ok" if g["pass"] else "FAIL")
        star = "*" if g.get("disturbed") else ""
        cells[key][fam] = f"{_measured(g)} {mark}{star}"
    headers = ["goal", "which", *families]
    rows: list[list[object]] = [
        [goal, detail, *(cells[(goal, detail)].get(f, "") for f in families)]
        for goal, detail in order
    ]
    return headers, rows


def markdown(
    results: Results, variants: Sequence[VariantInfo], goals: list[dict[str, Any]], intro: str
) -> str:
    """The run as Markdown (bench/results/http.md), ready to quote in the README."""
    parts = [intro]
    rows: list[list[object]] = []
    for v in variants:
        cells: list[object] = [f"`{v.name}`"]
        if not any((v.name, m) in results for m in MODES):
            continue
        for mode in MODES:
            r = results.get((v.name, mode))
            cells.append("failed" if r is not None and "error" in r else r and round(r["rps"]))
        ka = results.get((v.name, "keep-alive"))
        cells.append(share_text(ka["shares"]) if ka is not None and _ok(ka) else "")
        cells.append(conns_text(ka) if ka is not None and _ok(ka) else "")
        busy = [m for m in MODES if (r := results.get((v.name, m))) and _disturbed(r)]
        cells.append(", ".join(busy))
        rows.append(cells)
    parts.append(
        _md_table(
            [
                "variant",
                "keep-alive req/s",
                "close req/s",
                "keep-alive shares %",
                "keep-alive conns",
                "busy machine",
            ],
            rows,
        )
    )
    fresh_rows = []
    for v in variants:
        r = results.get((v.name, FRESH))
        if r is None or not _ok(r):
            continue
        counts = " / ".join(f"{r['shares'][k]:,}" for k in sorted(r["shares"])) or "-"
        dev = r["max_deviation"]
        fresh_rows.append(
            [f"`{v.name}`", r["connections"], r["answered"], counts, dev and 100 * dev]
        )
    if fresh_rows:
        headers = ["fresh connections", "opened", "answered", "per worker", "points from even"]
        parts.append(_md_table(headers, fresh_rows))
    headers, serve = serve_table(results, variants)
    if serve:
        parts.append(_md_table(headers, serve))
    goal_md = []
    for g in goals:
        verdict = _verdict(g) or g["note"]
        goal_md.append([g["goal"], g["figure"], _measured(g), _target_text(g), verdict])
    if goal_md:
        headers, matrix = goal_matrix(goals, variants)
        parts.append(_md_table(headers, matrix))
        parts.append("(ok / FAIL against the goal; * : other processes used over 15 % of a CPU.)")
        parts.append(_md_table(["goal", "figure", "measured", "target", "verdict"], goal_md))
        judged = [g for g in goals if g["target"] is not None]
        met = sum(1 for g in judged if g["pass"])
        parts.append(f"{met} of {len(judged)} goals met in this run.")
    return "\n\n".join(parts) + "\n"


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
    fresh_names = [v.name for v in variants if (v.name, FRESH) in results]
    if not names and not fresh_names:
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

    if not names:
        _plot_fresh(plt, results, fresh_names, save)
        return written

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
        if not any(p50 + p99):
            ax.set_title(f"latency, {mode}: not run")
            continue
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
            if r is None or not _ok(r):
                continue
            total = sum(r["shares"].values())
            if not total:
                ax.text(0.01, y, "no per-worker counts", va="center", fontsize=8, color="gray")
                continue
            left = 0.0
            counts = sorted(r["shares"].values(), reverse=True)
            for i, n in enumerate(counts):
                width = n / total
                color = worker_colors[i % len(worker_colors)]
                ax.barh(y, width, left=left, height=0.6, color=color, edgecolor="white")
                ax.text(left + width / 2, y, f"{100 * width:.0f}%", ha="center", va="center")
                left += width
        ax.axvline(0.5, color="black", linewidth=0.8, linestyle="--")
        if mode == "keep-alive":
            ax.axvline(GOAL_BUSIEST_SHARE, color="red", linewidth=0.8, linestyle=":")
        ax.set_xlim(0, 1)
        ax.set_xlabel("fraction of requests (largest worker first)")
        ax.set_title(f"worker shares, {mode}")
    axes[0].set_yticks(ys, names)
    axes[0].invert_yaxis()
    axes[0].set_title(f"worker shares, keep-alive (goal: busiest <= {100 * GOAL_BUSIEST_SHARE:g}%)")
    save(fig, "http_shares.png")
    _plot_fresh(plt, results, fresh_names, save)
    return written


def _plot_fresh(
    plt: Any, results: Results, names: list[str], save: Callable[[Any, str], None]
) -> None:
    """The fresh-connection split: each worker's count, with the goal's band around even."""
    names = [n for n in names if _ok(results[(n, FRESH)]) and results[(n, FRESH)]["shares"]]
    if not names:
        return
    fig, ax = plt.subplots(figsize=(9, 0.5 * len(names) + 1.8))
    worker_colors = ["tab:blue", "tab:orange", "tab:green", "tab:purple", "tab:brown"]
    for y, name in enumerate(names):
        r = results[(name, FRESH)]
        total = sum(r["shares"].values())
        left = 0.0
        for i, worker in enumerate(sorted(r["shares"])):
            n = r["shares"][worker]
            width = n / total
            color = worker_colors[i % len(worker_colors)]
            ax.barh(y, width, left=left, height=0.6, color=color, edgecolor="white")
            ax.text(left + width / 2, y, f"{worker}: {n:,}", ha="center", va="center", fontsize=8)
            left += width
    even = 1 / max(len(results[(n, FRESH)]["shares"]) for n in names)
    ax.axvspan(even - GOAL_FRESH_DEVIATION, even + GOAL_FRESH_DEVIATION, color="red", alpha=0.15)
    ax.axvline(even, color="black", linewidth=0.8, linestyle="--")
    ax.set_yticks(list(range(len(names))), names)
    ax.invert_yaxis()
    ax.set_xlim(0, 1)
    connections = results[(names[0], FRESH)]["connections"]
    ax.set_xlabel(
        f"fraction of {connections:,} new connections (shaded: the goal, "
        f"even +- {100 * GOAL_FRESH_DEVIATION:g} points)"
    )
    ax.set_title("fresh connections, one request each: split between the workers")
    save(fig, "http_fresh.png")
