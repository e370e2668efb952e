"""Per-round figures of a FedFR run: the log table, `report.json` and `report.png` (curves over rounds)."""
import json
import math
import os


def format_value(value):
    return "-" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.4f}"


def round_label(record):
    return "start" if record["round"] == 0 else str(record["round"])


def format_table(records):
    """A fixed-width table: one row per round (the starting generic model first)."""
    if not records:
        return "(no rounds)"
    sets = list(dict.fromkeys(name for record in records for name in record.get("generic", {})))
    tprs = list(dict.fromkeys(key for record in records for key in record.get("personal", {}).get("tpr", {})))
    tpirs = list(dict.fromkeys(key for record in records for key in record.get("personal", {}).get("tpir", {})))
    header = (["round", "clients"] + sets + [f"TPR@{key}" for key in tprs]
              + [f"TPIR@{key}" for key in tpirs])
    rows = []
    for record in records:
        personal = record.get("personal", {})
        rows.append([round_label(record), str(len(record.get("clients", [])))]
                    + [format_value(record.get("generic", {}).get(name)) for name in sets]
                    + [format_value(personal.get("tpr", {}).get(key)) for key in tprs]
                    + [format_value(personal.get("tpir", {}).get(key)) for key in tpirs])
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]
    lines = [" | ".join(cell.rjust(width) for cell, width in zip(row, widths)) for row in [header, *rows]]
    lines.insert(1, "-+-".join("-" * width for width in widths))
    return "\n".join(lines)


def write_report(records, directory, name="report"):
    """`directory/<name>.json` and `<name>.png`; returns their paths."""
    os.makedirs(directory, exist_ok=True)
    json_path = os.path.join(directory, f"{name}.json")
    temporary = f"{json_path}.tmp{os.getpid()}"
    with open(temporary, "w", encoding="utf-8") as handle:
        json.dump({"protocol": "FedFR (generic: config verification sets; personalised: per-client 1:1 and 1:N "
                               "on local_veri, averaged over clients)", "rounds": records}, handle, indent=1)
    os.replace(temporary, json_path)
    png_path = os.path.join(directory, f"{name}.png")
    plot_rounds(records, png_path)
    return {"json": json_path, "png": png_path}


def plot_rounds(records, path):
    """Two panels over rounds: the generic model's verification accuracy, the personalised TPRs."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    rounds = [record["round"] for record in records]
    figure, (generic_axis, personal_axis) = plt.subplots(1, 2, figsize=(10, 4))
    sets = list(dict.fromkeys(name for record in records for name in record.get("generic", {})))
    for name in sets:
        generic_axis.plot(rounds, [record.get("generic", {}).get(name, math.nan) for record in records],
                          marker="o", label=name)
    generic_axis.set_title("generic (global backbone)")
    generic_axis.set_xlabel("round (0 = starting generic model)")
    generic_axis.set_ylabel("accuracy / TAR / TPIR")
    keys = list(dict.fromkeys(key for record in records for key in record.get("personal", {}).get("tpr", {})))
    for key in keys[:3]:
        values = [record.get("personal", {}).get("tpr", {}).get(key, math.nan) for record in records]
        personal_axis.plot(rounds, values, marker="o", label=f"TPR@FPR {key}")
    personal_axis.set_title("personalised (mean over clients)")
    personal_axis.set_xlabel("round (0 = starting generic model)")
    personal_axis.set_ylabel("1:1 TPR")
    for axis in (generic_axis, personal_axis):
        axis.xaxis.set_major_locator(MaxNLocator(integer=True))
        if axis.lines:
            axis.legend(fontsize=8)
        axis.grid(alpha=0.3)
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)
