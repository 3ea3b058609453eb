"""Write eval_output/report.md and its charts from per-model, per-variant results.

A result is a dict:

    family              str    model family, e.g. "qwen2_moe" (one table section each)
    variant             str    "stock" or "ours"
    prefill_s           float  seconds of one generate(max_new_tokens=1), measured here
    decode_s_per_token  float  seconds per decode token, measured here
    memory_bytes        int    peak memory in bytes
    memory_source       str    how memory_bytes was read, e.g. "VmHWM (ru_maxrss)"
    pool_peak_bytes, pool_reserved_bytes
                        int    optional: MindSpore's memory pool as the child ended (its peak in use, and
                               what it reserved: on a device, max_memory_reserved; on the CPU backend
                               weights made from host arrays and the kernels' own objects are outside it)
    prefill_ops         float  operator launches of the prefill (counters.py)
    prefill_syncs       float  host-device syncs of the prefill
    decode_ops          float  operator launches per decode token
    decode_syncs        float  host-device syncs per decode token
  optional:
    model               str    the real model the fixture stands for
    top                 dict   {"ops": [(name, per token)], "syncs": [(site, per token)]} (Counts.top)
    pass_check          str    summary of the greedy-output check, e.g. "3/3 prompts match stock"
    prompt_lengths      str    the timed prompts' lengths in positions, e.g. "cat 1023 (999 image), man 351 (324 image)"
    predicted_prefill_s float  cost-model prediction of the Ascend prefill
    predicted_decode_s  float  cost-model prediction of the Ascend decode token
    ascend_prefill_ops  float  launches of the prefill on the Ascend path (ours, ascend_mode: each fused
                               kernel, linear and matmul one launch)
    ascend_decode_ops   float  launches per decode token on the Ascend path (ours, ascend_mode, likewise)

Every ratio is stock / ours, so above 1 means ours is better, as in the judge's scores.
"""
import os
import platform

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (the backend must be chosen first)

VARIANTS = ("stock", "ours")
REQUIRED = ("family", "variant", "prefill_s", "decode_s_per_token", "memory_bytes", "memory_source",
            "prefill_ops", "prefill_syncs", "decode_ops", "decode_syncs")

# (key, table label, formatter); predictions are labelled as such.
METRICS = (
    ("prefill_s", "prefill (s)", "{:.4g}"),
    ("decode_s_per_token", "decode (s/token)", "{:.4g}"),
    ("memory_bytes", "memory (GB)", "{:.3f}"),
    ("pool_peak_bytes", "MindSpore's memory pool, peak in use (GB)", "{:.3f}"),
    ("pool_reserved_bytes", "MindSpore's memory pool, reserved (GB, whole GiB blocks)", "{:.3f}"),
    ("prefill_ops", "ops per prefill", "{:.0f}"),
    ("prefill_syncs", "syncs per prefill", "{:.0f}"),
    ("decode_ops", "ops per decode token", "{:.1f}"),
    ("decode_syncs", "syncs per decode token", "{:.1f}"),
    ("ascend_prefill_ops", "ops per prefill, Ascend path (as-on-Ascend mode)", "{:.0f}"),
    ("ascend_decode_ops", "ops per decode token, Ascend path (as-on-Ascend mode)", "{:.1f}"),
    ("cpu_steal_pct", "host CPU steal during the run (%)", "{:.1f}"),
    ("predicted_prefill_s", "Ascend prefill (s), prediction", "{:.4g}"),
    ("predicted_decode_s", "Ascend decode (s/token), prediction", "{:.4g}"),
)

# Rows that describe the conditions of a run rather than its result: no ratio.
CONDITIONS = frozenset({"cpu_steal_pct"})

CHARTS = (
    ("prefill.png", "Prefill, measured on this machine", "seconds", "prefill_s"),
    ("decode.png", "Decode, measured on this machine", "seconds per token", "decode_s_per_token"),
    ("memory.png", "Peak memory", "GB", "memory_bytes"),
    ("ops_per_token.png", "Operator launches per decode token", "launches", "decode_ops"),
    ("syncs_per_token.png", "Host-device syncs per decode token", "syncs", "decode_syncs"),
)


def describe_machine():
    """One line naming this machine: OS, CPU and core count."""
    cpu = platform.processor() or platform.machine()
    return f"{platform.system()} {platform.release()}, {cpu}, {os.cpu_count()} cores, Python {platform.python_version()}"


def _index(results):
    """{family: {variant: result}} after checking every result against the schema."""
    table = {}
    for result in results:
        missing = [key for key in REQUIRED if key not in result]
        if missing:
            raise ValueError(f"result {result.get('family')!r}/{result.get('variant')!r} lacks {missing}")
        if result["variant"] not in VARIANTS:
            raise ValueError(f"variant must be one of {VARIANTS}, got {result['variant']!r}")
        variants = table.setdefault(result["family"], {})
        if result["variant"] in variants:
            raise ValueError(f"two {result['variant']} results for {result['family']}")
        variants[result["variant"]] = result
    if not table:
        raise ValueError("no results to report")
    return table


def _value(result, key):
    if result is None or result.get(key) is None:
        return None
    value = result[key]
    return value / 1e9 if key.endswith("_bytes") else value


def _ratio(stock, ours):
    if stock is None or ours is None:
        return "—"
    if ours == 0:
        return "∞" if stock else "—"
    return f"{stock / ours:.2f}×"


def _family_table(variants):
    stock, ours = variants.get("stock"), variants.get("ours")
    lines = ["| metric | stock | ours | stock / ours |", "|---|---|---|---|"]
    for key, label, fmt in METRICS:
        a, b = _value(stock, key), _value(ours, key)
        if a is None and b is None:
            continue
        cells = [fmt.format(v) if v is not None else "—" for v in (a, b)]
        ratio = "" if key in CONDITIONS else _ratio(a, b)
        lines.append(f"| {label} | {cells[0]} | {cells[1]} | {ratio} |")
    lengths = [(r or {}).get("prompt_lengths") for r in (stock, ours)]
    if any(lengths):
        lines.append(f"| prompt lengths (positions) | {lengths[0] or '—'} | {lengths[1] or '—'} | |")
    sources = {r["memory_source"] for r in (stock, ours) if r}
    lines.append(f"| memory source | {' / '.join(sorted(sources))} | | |")
    for name, result in (("stock", stock), ("ours", ours)):
        if result and result.get("pass_check"):
            lines.append(f"| pass check, {name} | {result['pass_check']} | | |")
    return lines


def _offenders(variants):
    lines = []
    for name in VARIANTS:
        top = (variants.get(name) or {}).get("top")
        if not top:
            continue
        lines.append(f"Top offenders per decode token, {name}:")
        for kind in ("ops", "syncs"):
            entries = ", ".join(f"`{label}` {count:g}" for label, count in top.get(kind, []))
            lines.append(f"- {kind}: {entries or 'none'}")
        lines.append("")
    return lines


def _chart(table, path, title, ylabel, key):
    families = sorted(table)
    width = 0.38
    fig, ax = plt.subplots(figsize=(max(4.0, 1.6 * len(families) + 1.5), 3.6))
    for i, variant in enumerate(VARIANTS):
        values = [_value(table[f].get(variant), key) for f in families]
        xs = [j + (i - 0.5) * width for j in range(len(families))]
        heights = [v or 0 for v in values]
        bars = ax.bar(xs, heights, width, label=variant)
        ax.bar_label(bars, labels=[f"{v:.3g}" if v is not None else "n/a" for v in values], fontsize=7)
    ax.set_xticks(range(len(families)), families)
    ax.set_title(title)
    ax.set_ylabel(ylabel)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_report(results, out_dir="eval_output", *, dispatch, machine=None, notes=()):
    """Write report.md and the PNG charts into out_dir; return the report's path.

    dispatch names how ops were dispatched (e.g. "PyNative, launch_blocking"); notes are extra
    markdown lines (the command, the cost-model fit from costmodel.Fit.describe()).
    """
    table = _index(results)
    os.makedirs(out_dir, exist_ok=True)
    lines = [
        "# Evaluation report",
        "",
        f"- machine: {machine or describe_machine()}",
        f"- dispatch: {dispatch}",
        "- times, memory and counts are measured on this machine; rows marked prediction come from"
        " the cost model, not from an Ascend run",
        "- ratios are stock / ours: above 1 means ours is better",
        "",
    ]
    for family in sorted(table):
        variants = table[family]
        model = next((r["model"] for r in variants.values() if r.get("model")), None)
        lines += [f"## {family}" + (f" (stands for {model})" if model else ""), ""]
        lines += _family_table(variants) + [""] + _offenders(variants)
    if notes:
        lines += ["## Notes", "", *notes, ""]
    lines += ["## Charts", ""]
    for filename, title, ylabel, key in CHARTS:
        _chart(table, os.path.join(out_dir, filename), title, ylabel, key)
        lines.append(f"![{title}]({filename})")
    path = os.path.join(out_dir, "report.md")
    with open(path, "w", encoding="utf-8") as handle:
        handle.write("\n".join(lines) + "\n")
    return path


# The terminal summary's columns: (heading, key) of the ratios stock / ours.
SUMMARY_RATIOS = (("prefill", "prefill_s"), ("decode", "decode_s_per_token"), ("memory", "memory_bytes"),
                  ("launches/token", "decode_ops"), ("syncs/token", "decode_syncs"))


def summary_table(results):
    """The per-family summary printed at the end of a run: ratios stock / ours and the pass check,
    as plain-text lines."""
    table = _index(results)
    rows = [["family"] + [heading for heading, _ in SUMMARY_RATIOS] + ["pass check"]]
    for family in sorted(table):
        stock, ours = table[family].get("stock"), table[family].get("ours")
        if stock is None:
            rows.append([family] + ["—"] * len(SUMMARY_RATIOS) + ["no stock on this base: ours alone"])
            continue
        ratios = [_ratio(_value(stock, key), _value(ours, key)) for _, key in SUMMARY_RATIOS]
        check = (ours or {}).get("pass_check", "not checked").split(";")[0]
        rows.append([family] + ratios + [check])
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip() for row in rows]
    return [lines[0], "  ".join("-" * width for width in widths)] + lines[1:]
