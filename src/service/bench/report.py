"""Writing the serving benchmark: results.json, results.md (tables) and results.png (chart),
and the README's copy of the table (between its ``bench:start``/``bench:end`` markers)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from service.bench import peers
from service.bench.limits import FLOOR_TARGET, limit_line

README_START, README_END = "<!-- bench:start -->", "<!-- bench:end -->"
# the chart's left panel: ours and every server sent the same JSON digits
JSON_TARGETS = ("ours", *(t for t, ref in peers.REFERENCE.items() if ref == "ours"))
OURS = "ours"
LIMIT = "limit"  # the HTTP floor: no model, what uvicorn alone answers
FAMILY_ORDER = (OURS, peers.EAGER, peers.SAME_RUNTIME, LIMIT)
# What each family's ratio measures (results.md and the README say it beside the ratios).
RATIO_MEANING = {
    peers.EAGER: "ours over the baselines as the tutorials write them (eager PyTorch): what "
                 "the whole design buys, the runtime chosen at release and the serving stack",
    peers.SAME_RUNTIME: "ours over servers of the very int8 ONNX file ours serves: what the "
                        "serving stack alone buys (batching, event loop, encoding), the model's "
                        "cost being equal; ours-v2 and ours-png are ours on the same bodies",
}


def family(target: str) -> str:
    if target == FLOOR_TARGET:
        return LIMIT
    return peers.family(target) or OURS


def pss_mib(data: dict[str, Any], target: str) -> float | None:
    """PSS of the server behind ``target`` after the load (before it, if the load failed)."""
    from service.bench.harness import TARGETS

    servers = data["context"].get("target_servers") or {t: s for t, (s, _) in TARGETS.items()}
    server = servers.get(target, target)
    entry = data.get("memory", {}).get(server)
    if not entry:
        return None
    measured = entry.get("after_load") or entry.get("after_warmup")
    return measured["pss_bytes"] / 2**20 if measured else None


def _pss_cell(data: dict[str, Any], target: str) -> str:
    value = pss_mib(data, target)
    return "—" if value is None else f"{value:,.0f}"


def _cell(stats: dict[str, float], digits: int = 0) -> str:
    return (f"{stats['median']:,.{digits}f} ({stats['min']:,.{digits}f}–"
            f"{stats['max']:,.{digits}f})")


def summary_table(data: dict[str, Any]) -> str:
    lines = [
        "| target | family | c | req/s median (range) | PSS MiB | p50 ms | p99 ms | errors |"
        " server CPU (cores) | CPU ms/request | cache hits |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    rows = sorted(data["summary"], key=lambda r: (r["concurrency"], _order(r["target"])))
    for row in rows:
        rps = _cell(row["requests_per_s"])
        if row["target"] == "ours-batch":
            rps += f" = {row['items_per_s']['median']:,.0f} digits/s"
        lines.append(
            f"| {row['target']} | {family(row['target'])} | {row['concurrency']} | {rps} | "
            f"{_pss_cell(data, row['target'])} | {_cell(row['p50_ms'], 2)} | "
            f"{_cell(row['p99_ms'], 1)} | {row['errors']} | "
            f"{row['server_cpu_cores']['median']:.2f} | {row['cpu_ms_per_request']['median']:.3f}"
            f" | {int(row['cache_hits']) if row['target'].startswith('ours') else '—'} |"
        )
    return "\n".join(lines)


def _order(target: str) -> tuple[int, int]:
    """Ours first, then the eager family, then the same-runtime family, each in its own order."""
    order = ["ours", "ours-v2", "ours-png", "ours-batch", "ours-hit-memory", "ours-hit-redis",
             "ours-shadow", "floor", *peers.TARGETS]
    return (FAMILY_ORDER.index(family(target)),
            order.index(target) if target in order else len(order))


def readme_table(data: dict[str, Any]) -> str:
    """Median req/s and p50/p99 of every target per concurrency, with its family and the PSS
    of its server."""
    rows = {(r["target"], r["concurrency"]): r for r in data["summary"]}
    concurrencies = sorted({r["concurrency"] for r in data["summary"]})
    lines = ["| target | family | PSS MiB | "
             + " | ".join(f"c={c}: req/s, p50/p99 ms" for c in concurrencies) + " |",
             "|---|---|---:|" + "---:|" * len(concurrencies)]
    for target in sorted({r["target"] for r in data["summary"]}, key=_order):
        cells = []
        for c in concurrencies:
            row = rows.get((target, c))
            cells.append("—" if row is None else
                         f"{row['requests_per_s']['median']:,.0f}, "
                         f"{row['p50_ms']['median']:.1f}/{row['p99_ms']['median']:.0f}")
        lines.append(f"| {target} | {family(target)} | {_pss_cell(data, target)} | "
                     + " | ".join(cells) + " |")
    return "\n".join(lines)


def ratio_lines(data: dict[str, Any], bold: bool = True) -> list[str]:
    """The ratios, one family at a time, each with what it means."""
    mark = "**" if bold else ""
    lines: list[str] = []
    for name in (peers.EAGER, peers.SAME_RUNTIME):
        per_c = {c: {label: value for label, value in ratios.items()
                     if family(label.split(" / ")[1]) == name}
                 for c, ratios in data["ratios"].items()}
        if not any(per_c.values()):
            continue
        title = peers.FAMILY_TITLES[name]
        lines += [f"{mark}{title[0].upper() + title[1:]}{mark}: "
                  f"{RATIO_MEANING[name]}.", ""]
        lines += [f"- {c}: " + ", ".join(f"{k} {mark}{v:.2f}x{mark}" for k, v in r.items())
                  for c, r in per_c.items() if r]
        lines.append("")
    return lines


def targets_table(data: dict[str, Any]) -> str:
    lines = ["| target | measured | required | met |", "|---|---:|---:|:---:|"]
    for check in data["targets"]:
        met = {True: "yes", False: "**no**", None: "not measured"}[check["passed"]]
        measured = "—" if check["measured"] is None else f"{check['measured']}"
        lines.append(f"| {check['target']} | {measured} | {check['required']} | {met} |")
    return "\n".join(lines)


def png_ceiling_line(data: dict[str, Any]) -> str:
    """Why the PNG figure stops where it does: decoding alone, against our whole JSON request."""
    bound = data.get("png_ceiling")
    if not bound:
        return ""
    return (f"- PNG ceiling: decoding an upload (Pillow, same core) costs {bound['decode_ms']:.2f} "
            f"ms of CPU and our whole image path {bound['image_path_ms']:.2f} ms, against "
            f"{bound['json_cpu_ms']:.2f} ms for an entire JSON request at c=64; even if "
            f"everything but decoding were free, PNG could reach at most "
            f"**{bound['ceiling']:.2f}x** our JSON throughput.")


def shadow_line(data: dict[str, Any]) -> str:
    """What the shadowed server did with its copies at the highest concurrency."""
    runs = [r for r in data["runs"] if r["target"] == "ours-shadow"]
    if not runs:
        return ""
    top = max(r["concurrency"] for r in runs)
    counts = {outcome: sum(r["cache"].get(f"shadow:{outcome}", 0.0) for r in runs
                           if r["concurrency"] == top)
              for outcome in ("agree", "disagree", "dropped", "failed")}
    answered = sum(r["requests"] for r in runs if r["concurrency"] == top)
    compared = counts["agree"] + counts["disagree"]
    return (f"- Shadow at c={top} (every request copied to a second version): {compared:,.0f} "
            f"copies answered ({counts['disagree']:,.0f} disagreed), {counts['dropped']:,.0f} "
            f"dropped under load, {counts['failed']:,.0f} failed, for {answered:,} client answers.")


def memory_table(data: dict[str, Any]) -> str:
    lines = ["| process(es) | RSS MiB | PSS MiB | processes | idle CPU (cores) |",
             "|---|---:|---:|---:|---:|"]
    for name, entry in data["memory"].items():
        if name == "workers":
            if "error" in entry:
                lines.append(f"| {entry['processes']} × lab2prod worker | not measured: "
                             f"{entry['error']} | | | |")
                continue
            for part in ("total", "workers_only"):
                m = entry[part]
                label = f"{entry['processes']} × lab2prod worker ({part.replace('_', ' ')})"
                lines.append(f"| {label} | {m['rss_bytes'] / 2**20:,.0f} | "
                             f"{m['pss_bytes'] / 2**20:,.0f} | {m['processes']} | |")
            continue
        m = entry.get("after_load") or entry["after_warmup"]
        idle = entry.get("idle_cpu_cores")
        lines.append(f"| {name} (after the load) | {m['rss_bytes'] / 2**20:,.0f} | "
                     f"{m['pss_bytes'] / 2**20:,.0f} | {m['processes']} | "
                     f"{'' if idle is None else f'{idle:.3f}'} |")
        if "three_versions" in entry:
            m = entry["three_versions"]
            lines.append(f"| {name} with 3 versions loaded | {m['rss_bytes'] / 2**20:,.0f} | "
                         f"{m['pss_bytes'] / 2**20:,.0f} | {m['processes']} | |")
    return "\n".join(lines)


def same_runtime_line(data: dict[str, Any]) -> str:
    """Which file the same-runtime rows served, and whether ours served it too."""
    same = data["context"].get("same_runtime")
    if not same:
        return ""
    ours = same["ours_runtime"]
    return (f"Same-runtime rows serve `{Path(same['file']).name}`, the int8 ONNX file the release "
            f"published with the version ours serves; ours served "
            + ("that very file." if ours == peers.SAME_RUNTIME_VARIANT else
               f"**`{ours}`** here (the release chose it), so the same-runtime ratios compare "
               "different runtimes on this machine."))


def markdown(data: dict[str, Any]) -> str:
    context = data["context"]
    return "\n".join([
        "# Serving benchmark",
        "",
        f"`lab2prod bench`, {context['started']}: servers pinned to CPU {context['server_cpu']}, "
        f"wrk (`-t1 --latency`, one Lua script) pinned to CPU {context['client_cpu']}; "
        f"{context['rounds']} interleaved rounds of {context['seconds_per_point']:.0f} s per "
        f"point; medians with the range over rounds. Miss-path bodies cycle over "
        f"{context['distinct_bodies']:,} distinct digits (our in-process LRU holds "
        f"{context['miss_cache_size']}, so it cannot hit: see the cache hits column). "
        f"Machine: {context['machine']}; load average at the end "
        f"{context['load_average_at_end']}. {context.get('note', '')}",
        "",
        same_runtime_line(data),
        "",
        "## Targets",
        "",
        targets_table(data),
        "",
        png_ceiling_line(data),
        limit_line(data.get("limit")),
        shadow_line(data),
        "",
        "## Our throughput over each baseline and peer (median req/s)",
        "",
        *ratio_lines(data),
        "## All figures",
        "",
        summary_table(data),
        "",
        "## Memory",
        "",
        memory_table(data),
        "",
        "![requests per second](results.png)",
        "",
    ])


def chart(data: dict[str, Any], path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = {(r["target"], r["concurrency"]): r for r in data["summary"]}
    concurrencies = sorted({r["concurrency"] for r in data["summary"]})
    fig, (left, right) = plt.subplots(1, 2, figsize=(13, 4.8), gridspec_kw={"width_ratios": [3, 2]})
    json_targets = [t for t in JSON_TARGETS if any((t, c) in rows for c in concurrencies)]
    width = 0.8 / max(len(json_targets), 1)
    for index, target in enumerate(json_targets):
        xs, medians, low, high = [], [], [], []
        for position, c in enumerate(concurrencies):
            row = rows.get((target, c))
            if row is None:
                continue
            stats = row["requests_per_s"]
            xs.append(position + (index - (len(json_targets) - 1) / 2) * width)
            medians.append(stats["median"])
            low.append(stats["median"] - stats["min"])
            high.append(stats["max"] - stats["median"])
        hatch = "//" if family(target) == peers.SAME_RUNTIME else None
        left.bar(xs, medians, width, yerr=[low, high], capsize=3, label=target, hatch=hatch)
    left.set_xticks(range(len(concurrencies)), [f"c={c}" for c in concurrencies])
    left.set_ylabel("requests/s (median, range over rounds)")
    left.set_title("JSON /predict, distinct digits, server on one core\n"
                   "(hatched: the same int8 ONNX file as ours)", fontsize=10)
    left.legend()
    top = max(concurrencies)
    names = [t for t in ("ours", "ours-v2", "ours-png", "ours-batch", "ours-hit-memory",
                         "ours-hit-redis") if (t, top) in rows]
    values = [rows[(t, top)]["requests_per_s"]["median"] for t in names]
    right.barh(names, values, color="tab:blue")
    for y, (name, value) in enumerate(zip(names, values, strict=True)):
        label = f"{value:,.0f}"
        if name == "ours-batch":
            label += f" ({rows[(name, top)]['items_per_s']['median']:,.0f} digits/s)"
        right.text(value, y, " " + label, va="center", fontsize=8)
    right.set_xlabel("requests/s (median)")
    right.set_title(f"our routes and caches at c={top}")
    right.invert_yaxis()
    right.set_xlim(0, max(values or [1]) * 1.45)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def write(data: dict[str, Any], out_dir: Path, readme: Path | None = None) -> dict[str, Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {"json": out_dir / "results.json", "md": out_dir / "results.md",
             "png": out_dir / "results.png"}
    paths["json"].write_text(json.dumps(data, indent=2) + "\n")
    paths["md"].write_text(markdown(data))
    chart(data, paths["png"])
    if readme is not None and readme.is_file():
        update_readme(readme, data)
    return paths


def update_readme(readme: Path, data: dict[str, Any]) -> bool:
    """Replace the text between the README's bench markers with the targets and ratios."""
    text = readme.read_text()
    if README_START not in text or README_END not in text:
        return False
    head, rest = text.split(README_START, 1)
    _, tail = rest.split(README_END, 1)
    notes = [line for line in (png_ceiling_line(data), limit_line(data.get("limit"))) if line]
    block = "\n".join([
        README_START,
        f"Measured by `lab2prod bench` ({data['context']['started']}, "
        f"{data['context']['machine']}; every figure, memory and the chart in "
        "[docs/benchmarks/results.md](docs/benchmarks/results.md)):",
        "",
        readme_table(data),
        "",
        *ratio_lines(data, bold=False),
        targets_table(data),
        *(["", *notes] if notes else []),
        README_END,
    ])
    readme.write_text(head + block + tail)
    return True
