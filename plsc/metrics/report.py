"""Reports of the set-owning metrics (fairness, masked, 1:N): text tables, one JSON file, bar charts.

A report is a dict: `title`, `columns`, `rows` (lists of str / int / float / None), `summary`
({name: value}), optionally `chart` ({"ylabel", "series": {series: {group: value}}}) and any
further JSON-able detail (e.g. per-identity rates), which goes to the JSON file only.
"""
import json
import math
import os

import numpy as np

REPORT_FILE = "eval_report.json"


def format_value(value):
    """One table cell: floats with 5 decimals (scientific when tiny), '-' for missing."""
    if value is None:
        return "-"
    if isinstance(value, (float, np.floating)):
        value = float(value)
        if math.isnan(value):
            return "-"
        if math.isinf(value):
            return "inf"
        return f"{value:.3e}" if 0 < abs(value) < 1e-3 else f"{value:.5f}"
    return str(value)


def format_report(report):
    """The report as aligned text: title, table, then the summary lines."""
    cells = [list(map(str, report["columns"]))] + [[format_value(value) for value in row] for row in report["rows"]]
    widths = [max(len(row[column]) for row in cells) for column in range(len(cells[0]))]
    lines = [report["title"]]
    for index, row in enumerate(cells):
        lines.append("  ".join(cell.rjust(width) if index and position else cell.ljust(width)
                               for position, (cell, width) in enumerate(zip(row, widths))).rstrip())
        if index == 0:
            lines.append("  ".join("-" * width for width in widths))
    lines += [f"{name}: {format_value(value)}" for name, value in report.get("summary", {}).items()]
    return "\n".join(lines)


def json_safe(value):
    """Numbers and containers as plain JSON: numpy scalars unwrapped, inf as "inf", NaN as null."""
    if isinstance(value, dict):
        return {str(key): json_safe(item) for key, item in value.items()}
    if isinstance(value, (list, tuple, np.ndarray)):
        return [json_safe(item) for item in value]
    if isinstance(value, (np.integer, np.bool_)):
        return value.item()
    if isinstance(value, (float, np.floating)):
        value = float(value)
        if math.isnan(value):
            return None
        return ("inf" if value > 0 else "-inf") if math.isinf(value) else value
    return value


def plot_chart(report, path):
    """Grouped bar chart of `report['chart']` (one bar per series and group) as a PNG."""
    import matplotlib

    matplotlib.use("Agg")  # no display on servers and CI
    import matplotlib.pyplot as plt

    chart = report["chart"]
    series = chart["series"]
    groups = list(dict.fromkeys(group for values in series.values() for group in values))
    width = 0.8 / len(series)
    figure, axes = plt.subplots(figsize=(max(4.0, 1.2 * len(groups) + 1.5), 3.6))
    for position, (name, values) in enumerate(series.items()):
        heights = [np.nan if values.get(group) is None else float(values[group]) for group in groups]
        offsets = np.arange(len(groups)) + (position - (len(series) - 1) / 2) * width
        bars = axes.bar(offsets, heights, width, label=name)
        axes.bar_label(bars, fmt="%.3f", fontsize=7)
    axes.set_xticks(np.arange(len(groups)), groups)
    axes.set_ylabel(chart["ylabel"])
    finite = [float(v) for values in series.values() for v in values.values() if v is not None and np.isfinite(v)]
    if finite and 0.0 <= min(finite) and max(finite) <= 1.0:
        # Rates and accuracies often cluster near each other; start the axis near the lowest bar.
        axes.set_ylim(max(0.0, min(finite) - 0.1), max(finite) + 0.05)
    axes.set_title(report["title"], fontsize=9)
    if len(series) > 1:
        axes.legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


def write_reports(reports, out_dir):
    """Write `out_dir/eval_report.json` and one `<name>.png` per report with a chart; return the paths."""
    os.makedirs(out_dir, exist_ok=True)
    json_path = os.path.join(out_dir, REPORT_FILE)
    with open(json_path, "w", encoding="utf-8") as handle:
        json.dump(json_safe(reports), handle, indent=1, allow_nan=False)
    charts = []
    for name, report in reports.items():
        if report.get("chart"):
            charts.append(os.path.join(out_dir, f"{name}.png"))
            plot_chart(report, charts[-1])
    return {"json": json_path, "charts": charts}
