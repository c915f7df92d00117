"""The benchmark's outputs: a JSON file with every number, an `index.html`
report with tables (mean and std over seeds) and matplotlib plots, and the
rows of the results table the command line prints."""

import datetime
import html
import json
import math
import os
import platform

import numpy as np

__all__ = [
    "collect", "write_json", "load_json", "merge", "write_report", "table_rows", "markdown",
]


def collect(results, command=None):
    """The document that `write_json` and `write_report` take: the results
    of each problem plus when, where and how they were made."""
    import keras

    import multiloss

    return {
        "multiloss_version": multiloss.__version__,
        "keras_version": keras.__version__,
        "backend": keras.backend.backend(),
        "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        "command": command,
        "machine": {
            "platform": platform.platform(),
            "python": platform.python_version(),
            "cpu_count": os.cpu_count(),
        },
        "problems": list(results),
    }


def _clean(value):
    """JSON has no NaN or infinity: they become null."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {str(k): _clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_clean(v) for v in value]
    if isinstance(value, np.generic):
        return _clean(value.item())
    return value


def write_json(document, path):
    """Writes every number (NaN and infinity as null)."""
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    with open(path, "w") as f:
        json.dump(_clean(document), f, indent=1)
    return path


def _restore(value, key=None):
    """The inverse of `_clean` where it matters: null back to NaN in lists
    of numbers and in the numbers of a summary."""
    if isinstance(value, dict):
        return {k: _restore(v, k) for k, v in value.items()}
    if isinstance(value, list):
        return [math.nan if v is None else _restore(v) for v in value]
    if value is None and key in ("mean", "std", "pareto_distance"):
        return math.nan
    return value


def load_json(path):
    """A document written by `write_json` (nulls back to NaN)."""
    with open(path) as f:
        return _restore(json.load(f))


def merge(documents):
    """One document from several (e.g. one JSON per problem): the problems
    of all, the first one's metadata, each one's command and date kept."""
    documents = list(documents)
    if not documents:
        raise ValueError("merge() needs at least one document.")
    merged = dict(documents[0])
    merged["problems"] = []
    merged["commands"] = []
    for document in documents:
        merged["commands"].append({"command": document.get("command"), "date": document["date"],
                                   "backend": document["backend"]})
        merged["problems"].extend(document["problems"])
    merged["command"] = " ; ".join(c["command"] or "" for c in merged["commands"])
    return merged


# -- formatting ------------------------------------------------------------------


def _fmt(value, digits=4):
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "nan"
    magnitude = abs(value)
    if magnitude != 0 and (magnitude >= 1e5 or magnitude < 1e-3):
        return f"{value:.{max(1, digits - 1)}e}"
    return f"{value:.{digits}g}" if magnitude >= 1 else f"{value:.{digits - 1}f}"


def _mean_std(stat, digits=4):
    if not stat or stat.get("n", 0) == 0:
        return "–"
    text = _fmt(stat["mean"], digits)
    std = stat.get("std")
    if stat["n"] > 1 and std is not None and math.isfinite(stat["mean"]) and std != 0:
        text += f" ± {stat['std']:.2g}"
    return text


def _status(entry):
    status = entry.get("status", "ok")
    if status == "failed":
        return f"failed: {entry.get('error', '')}"
    return status


def table_rows(result):
    """`(header, rows)` of a problem's results table: per method, mean ±
    std over seeds of its headline numbers, delta_m% where there are
    baselines, and seconds per run."""
    summary = result["summary"]
    if result["family"] == "toy2d":
        starts = result["settings"]["starts"]
        header = ["method", "status", "on Pareto set"]
        header += [f"start {tuple(s)}: L1, L2" for s in starts]
        header.append("s/run")
        runs_per = len(result["settings"]["seeds"]) * len(starts)
        rows = []
        for method, entry in summary.items():
            numbers = entry["numbers"]
            row = [method, _status(entry)]
            reached = numbers.get("pareto_reached")
            row.append(
                f"{int(round(reached['mean'] * reached['n']))}/{runs_per}"
                if reached and math.isfinite(reached["mean"]) else "–"
            )
            for i in range(len(starts)):
                l1, l2 = numbers.get(f"start{i}/L1"), numbers.get(f"start{i}/L2")
                row.append(f"{_mean_std(l1, 3)}, {_mean_std(l2, 3)}" if l1 else "–")
            row.append(_mean_std(entry.get("seconds"), 3))
            rows.append(row)
        return header, rows
    tasks = result["tasks"]
    header = ["method", "status"] + [f"{t} {result['metric']}" for t in tasks]
    extra = [k for k in _first_numbers(summary) if not k.startswith("metric/")]
    header += extra
    has_delta = result["baselines"] != [] or any("delta_m" in e for e in summary.values())
    if has_delta:
        header.append("Δm% (lower is better)")
    header.append("s/run")
    rows = []
    for method, entry in summary.items():
        numbers = entry["numbers"]
        row = [method, _status(entry)]
        row += [_mean_std(numbers.get(f"metric/{t}")) for t in tasks]
        row += [_mean_std(numbers.get(k)) for k in extra]
        if has_delta:
            row.append("0 (reference)" if method == "single-task" else _mean_std(
                entry.get("delta_m"), 3))
        row.append(_mean_std(entry.get("seconds"), 3))
        rows.append(row)
    return header, rows


def _first_numbers(summary):
    """Every number name in the summary, in order of first appearance (the
    single-task reference row has fewer than the methods)."""
    names = {}
    for entry in summary.values():
        names.update(dict.fromkeys(entry.get("numbers") or {}))
    return list(names)


# -- plots -----------------------------------------------------------------------


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _grid(plt, count, width=3.6, height=3.2, ncols=4):
    ncols = max(1, min(ncols, count))
    nrows = max(1, math.ceil(count / ncols))
    fig, axes = plt.subplots(nrows, ncols, figsize=(width * ncols, height * nrows), squeeze=False,
                             layout="constrained")
    flat = axes.ravel()
    for ax in flat[count:]:
        ax.set_visible(False)
    return fig, flat[:count]


def _first_runs(result):
    """method -> its run with the lowest seed that finished."""
    out = {}
    for run in result["runs"]:
        if run.get("status") in ("ok", "diverged") and run["method"] not in out:
            out[run["method"]] = run
    return out


def _save(fig, folder, name):
    path = os.path.join(folder, name)
    fig.savefig(path, dpi=90, bbox_inches="tight")
    import matplotlib.pyplot as plt

    plt.close(fig)
    return name


_START_COLORS = ("#1f77b4", "#2ca02c", "#9467bd", "#8c564b", "#e377c2", "#17becf", "#bcbd22")
_PARETO_COLOR = "#ff7f0e"


def _toy2d_plots(result, folder):
    from multiloss.bench.problems import toy2d

    plt = _pyplot()
    runs = _first_runs(result)
    if not runs:
        return []
    scale = result["settings"]["scale_L1"]
    name = result["problem"]
    methods = list(runs)
    # Not orange: the Pareto set's colour.
    colors = [_START_COLORS[i % len(_START_COLORS)] for i in range(len(result["settings"]["starts"]))]
    out = []

    # Trajectories over the contours of L1 + L2, with the Pareto set.
    grid = np.linspace(-10, 10, 241)
    X1, X2 = np.meshgrid(grid, grid)
    L1, L2 = toy2d.losses_numpy(X1, X2, scale)
    pareto_x1 = np.linspace(-7, 7, 101)
    pareto_x2 = toy2d.pareto_x2(pareto_x1)
    fig, axes = _grid(plt, len(methods))
    for ax, method in zip(axes, methods):
        ax.contourf(X1, X2, L1 + L2, levels=30, cmap="Greys", alpha=0.55)
        ax.contour(X1, X2, L1 + L2, levels=15, colors="white", linewidths=0.3)
        ax.plot(pareto_x1, pareto_x2, color=_PARETO_COLOR, linewidth=4, alpha=0.7,
                label="Pareto set")
        run = runs[method]
        reached = 0
        for color, start in zip(colors, run["starts"]):
            t = start["trajectory"]
            ax.plot(t["x1"], t["x2"], color=color, linewidth=1.6)
            ax.plot(*start["start"], "o", color="black", markersize=5)
            end = start["final_x"]
            if all(math.isfinite(v) for v in end):
                ax.plot(*end, marker="*" if start["on_pareto_set"] else "X", color=color,
                        markersize=11, markeredgecolor="black", markeredgewidth=0.6)
            reached += start["on_pareto_set"]
        ax.set_xlim(-10, 10)
        ax.set_ylim(-10, 10)
        ax.set_title(f"{method}: {reached}/{len(run['starts'])} on the Pareto set", fontsize=10)
        ax.set_xlabel("x1")
        ax.set_ylabel("x2")
    axes[0].legend(loc="lower right", fontsize=8)
    fig.suptitle(f"{name}: trajectories (seed {runs[methods[0]]['seed']}) over L1 + L2; "
                 "● start, ★ ends on the Pareto set, ✖ does not")
    out.append(("Trajectories in x, over the contours of L1 + L2", _save(
        fig, folder, f"{name}_trajectories.png")))

    # The same runs in loss space, with the Pareto front.
    front = np.array(toy2d.losses_numpy(pareto_x1, pareto_x2, scale))
    fig, axes = _grid(plt, len(methods))
    for ax, method in zip(axes, methods):
        ax.plot(front[0], front[1], color=_PARETO_COLOR, linewidth=4, alpha=0.7,
                label="Pareto front")
        for color, start in zip(colors, runs[method]["starts"]):
            t = start["trajectory"]
            ax.plot(t["L1"], t["L2"], color=color, linewidth=1.4)
            ax.plot(t["L1"][0], t["L2"][0], "o", color="black", markersize=4)
        ax.set_title(method, fontsize=10)
        ax.set_xlabel("L1")
        ax.set_ylabel("L2")
    axes[0].legend(loc="upper right", fontsize=8)
    fig.suptitle(f"{name}: the trajectories in loss space (● start)")
    out.append(("Trajectories in loss space, with the Pareto front", _save(
        fig, folder, f"{name}_loss_space.png")))

    # The share of the weight on L1 over the steps.
    fig, axes = _grid(plt, len(methods), height=2.6)
    for ax, method in zip(axes, methods):
        for color, start in zip(colors, runs[method]["starts"]):
            t = start["trajectory"]
            w1, w2 = np.asarray(t["w1"]), np.asarray(t["w2"])
            with np.errstate(invalid="ignore", divide="ignore"):
                share = np.abs(w1) / (np.abs(w1) + np.abs(w2))
            ax.plot(t["step"], share, color=color, linewidth=1.2,
                    label=f"start {tuple(start['start'])}")
        ax.set_ylim(-0.05, 1.05)
        ax.set_title(method, fontsize=10)
        ax.set_xlabel("step")
        ax.set_ylabel("w1 / (w1 + w2)")
    axes[0].legend(fontsize=7)
    fig.suptitle(f"{name}: the share of the weight on L1 over the steps")
    out.append(("Weights over the steps", _save(fig, folder, f"{name}_weights.png")))
    return out


def _fit_plots(result, folder):
    plt = _pyplot()
    runs = _first_runs(result)
    name = result["problem"]
    tasks = result["tasks"]
    out = []
    palette = plt.cm.tab10 if len(tasks) <= 10 else plt.cm.tab20
    colors = palette(np.arange(len(tasks)) % palette.N)
    if runs:
        methods = list(runs)
        # Per-task training (solid) and validation (dashed) losses.
        fig, axes = _grid(plt, len(methods))
        for ax, method in zip(axes, methods):
            h = runs[method]["history"]
            for color, task in zip(colors, tasks):
                if f"{task}_loss" in h:
                    ax.plot(h["step"], h[f"{task}_loss"], color=color, label=task)
                if f"val_{task}_loss" in h:
                    ax.plot(h["step"], h[f"val_{task}_loss"], color=color, linestyle="--",
                            linewidth=0.9)
            ax.set_yscale("log")
            ax.set_title(method, fontsize=10)
            ax.set_xlabel("step")
            ax.set_ylabel("loss")
        axes[0].legend(fontsize=7, ncol=2 if len(tasks) > 4 else 1)
        fig.suptitle(f"{name}: per-task losses (seed {runs[methods[0]]['seed']}); solid: "
                     "training, dashed: validation")
        out.append(("Per-task losses", _save(fig, folder, f"{name}_losses.png")))

        # The share of each task's weight.
        fig, axes = _grid(plt, len(methods), height=2.8)
        for ax, method in zip(axes, methods):
            h = runs[method]["history"]
            weights = [np.asarray(h.get(f"{task}_weight", []), "float64") for task in tasks]
            if not all(len(w) for w in weights):
                continue
            stack = np.abs(np.stack(weights))
            with np.errstate(invalid="ignore", divide="ignore"):
                share = stack / stack.sum(axis=0, keepdims=True)
            for color, task, row in zip(colors, tasks, share):
                ax.plot(h["step"], row, color=color, label=task)
            ax.set_ylim(-0.03, 1.03)
            ax.set_title(method, fontsize=10)
            ax.set_xlabel("step")
            ax.set_ylabel("w_k / sum w")
        axes[0].legend(fontsize=7, ncol=2 if len(tasks) > 4 else 1)
        fig.suptitle(f"{name}: each task's share of the weight in force (epoch means)")
        out.append(("Weights over training", _save(fig, folder, f"{name}_weights.png")))

    # Bars: delta_m% where there are baselines, else the first headline number.
    summary = {m: e for m, e in result["summary"].items() if m != "single-task"}
    key, label = None, None
    if any("delta_m" in e for e in summary.values()):
        key, label = "delta_m", "Δm% (lower is better)"
    else:
        extra = [k for k in _first_numbers(summary) if not k.startswith("metric/")]
        if extra:
            key, label = extra[0], extra[0]
    if key is not None:
        methods, means, stds, notes = [], [], [], []
        for method, entry in summary.items():
            stat = entry.get("delta_m") if key == "delta_m" else entry["numbers"].get(key)
            methods.append(method)
            if stat and stat.get("n") and math.isfinite(stat["mean"]):
                means.append(stat["mean"])
                stds.append(stat["std"])
                notes.append("")
            else:
                means.append(0.0)
                stds.append(0.0)
                notes.append(entry.get("status", "n/a"))
        fig, ax = plt.subplots(figsize=(max(5.0, 0.55 * len(methods) + 2), 3.6),
                               layout="constrained")
        positions = np.arange(len(methods))
        ax.bar(positions, means, yerr=stds, color="#3182bd", capsize=3)
        for x, note in zip(positions, notes):
            if note:
                ax.text(x, 0, note, rotation=90, ha="center", va="bottom", fontsize=7,
                        color="#a50f15")
        ax.axhline(0, color="black", linewidth=0.6)
        magnitudes = np.abs([m for m, n in zip(means, notes) if not n])
        if len(magnitudes) and magnitudes.max() > 20 * max(np.median(magnitudes), 1e-12):
            # One method far off the others: a symmetric log scale keeps the rest readable.
            ax.set_yscale("symlog", linthresh=max(float(np.median(magnitudes)) / 10, 1e-6))
        for x, mean, note in zip(positions, means, notes):
            if not note:
                ax.annotate(_fmt(mean, 3), (x, mean), ha="center", fontsize=7,
                            va="bottom" if mean >= 0 else "top", xytext=(0, 2 if mean >= 0 else -2),
                            textcoords="offset points")
        ax.set_xticks(positions)
        ax.set_xticklabels(methods, rotation=45, ha="right")
        ax.set_ylabel(label)
        seeds = len(result["settings"]["seeds"])
        ax.set_title(f"{name}: {label}, mean ± std over {seeds} seed(s)")
        out.append((label, _save(fig, folder, f"{name}_{'delta_m' if key == 'delta_m' else 'metric'}.png")))
    return out


def plots(result, folder):
    """Writes the problem's plots into `folder`; `[(caption, file name)]`."""
    if result["family"] == "toy2d":
        return _toy2d_plots(result, folder)
    return _fit_plots(result, folder)


# -- HTML ------------------------------------------------------------------------

_STYLE = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1500px; color: #222; }
table { border-collapse: collapse; margin: 1em 0; font-size: 0.9em; }
th, td { border: 1px solid #ccc; padding: 0.3em 0.6em; text-align: right; }
th { background: #f0f0f0; }
td:first-child, td:nth-child(2) { text-align: left; }
td.failed { color: #a50f15; max-width: 28em; }
td.diverged { color: #d95f0e; }
img { max-width: 100%; border: 1px solid #ddd; margin: 0.5em 0; }
.meta { color: #666; font-size: 0.9em; }
code { background: #f5f5f5; padding: 0 0.2em; }
"""


def write_report(document, folder):
    """Writes `folder/index.html` and its plots; returns the HTML's path."""
    os.makedirs(folder, exist_ok=True)
    e = html.escape
    parts = [
        "<!doctype html><html><head><meta charset='utf-8'>",
        "<title>multiloss bench</title>", f"<style>{_STYLE}</style></head><body>",
        "<h1>multiloss bench</h1>",
        f"<p class='meta'>{e(document['date'])} · backend {e(document['backend'])} · "
        f"multiloss {e(document['multiloss_version'])} · keras {e(document['keras_version'])}"
        f" · {e(document['machine']['platform'])}, {document['machine']['cpu_count']} CPUs</p>",
    ]
    if document.get("command"):
        parts.append(f"<p class='meta'>Command: <code>{e(document['command'])}</code></p>")
    parts.append(
        "<p>Numbers are the mean ± sample standard deviation over seeds. A method that "
        "failed shows its error; one whose losses became non-finite shows "
        "<em>diverged</em>. Every number is in the JSON file next to this report.</p>"
    )
    parts.append("<ul>" + "".join(
        f"<li><a href='#{e(r['problem'])}'>{e(r['title'])}</a></li>"
        for r in document["problems"]) + "</ul>")
    for result in document["problems"]:
        parts.append(f"<h2 id='{e(result['problem'])}'>{e(result['title'])}</h2>")
        parts.append(f"<p>{e(result['description'])}</p>")
        settings = ", ".join(
            f"{k}: {v}" for k, v in result["settings"].items() if k not in ("methods",)
        )
        parts.append(f"<p class='meta'>{e(settings)}</p>")
        header, rows = table_rows(result)
        parts.append("<table><tr>" + "".join(f"<th>{e(h)}</th>" for h in header) + "</tr>")
        for row in rows:
            cells = []
            for i, cell in enumerate(row):
                css = ""
                if i == 1 and cell.startswith("failed"):
                    css = " class='failed'"
                elif i == 1 and cell == "diverged":
                    css = " class='diverged'"
                cells.append(f"<td{css}>{e(str(cell))}</td>")
            parts.append("<tr>" + "".join(cells) + "</tr>")
        parts.append("</table>")
        for caption, name in plots(result, folder):
            parts.append(f"<h3>{e(caption)}</h3><img src='{e(name)}' alt='{e(caption)}'>")
    parts.append("</body></html>")
    path = os.path.join(folder, "index.html")
    with open(path, "w") as f:
        f.write("\n".join(parts))
    return path


def markdown(document):
    """The results tables as Markdown (for BENCHMARKS.md)."""
    lines = []
    for result in document["problems"]:
        settings = result["settings"]
        lines.append(f"### {result['title']}")
        lines.append("")
        lines.append(result["description"])
        lines.append("")
        shown = {k: v for k, v in settings.items() if k not in ("methods", "starts")}
        lines.append("Settings: " + ", ".join(f"{k} {v}" for k, v in shown.items()) + ".")
        lines.append("")
        header, rows = table_rows(result)
        lines.append("| " + " | ".join(header) + " |")
        lines.append("|" + "|".join("---" for _ in header) + "|")
        for row in rows:
            cells = [str(c).replace("|", "\\|") for c in row]
            lines.append("| " + " | ".join(cells) + " |")
        lines.append("")
    return "\n".join(lines)
