"""Runs a problem with every method and seed and collects the results.

A method that fails (an exception while building, compiling or training)
is recorded with its error and the suite goes on; its other seeds are
skipped. A run whose losses become non-finite is recorded as `diverged`.
"""

import math
import time
import traceback

from multiloss.bench import metrics as metrics_module
from multiloss.bench.problems.base import Advance

__all__ = ["Reporter", "run_problem"]


class Reporter:
    """Receives progress; the command line's drives rich progress bars.
    All methods are optional no-ops."""

    def begin(self, problem, total):
        """A problem starts; `total` progress units."""

    def describe(self, text):
        """What runs now."""

    def advance(self, n=1):
        """`n` units done."""

    def end(self, problem):
        """The problem is done."""


def _error(exc):
    lines = traceback.format_exception(type(exc), exc, exc.__traceback__)
    text = [line.strip() for line in str(exc).splitlines() if line.strip()]
    # TensorFlow wraps an error raised while tracing as "in user code: ...
    # <frames> ... Type: message": the last line is the message.
    message = text[-1] if len(text) > 1 and text[0].endswith(":") else (text[0] if text else "")
    return {
        "type": type(exc).__name__,
        "message": message[:500],
        "detail": str(exc)[:4000],
        "traceback": "".join(lines[-6:]),
    }


def _guarded(fn, units, reporter):
    """Runs `fn(advance)`; on an exception returns `{"status": "failed",
    "error": ...}` and advances the units the run did not."""
    counter = Advance(reporter.advance)
    start = time.perf_counter()
    try:
        result = fn(counter)
    except Exception as exc:  # noqa: BLE001 - any failure of a method is a result
        result = {"status": "failed", "error": _error(exc), "seconds": time.perf_counter() - start}
    if counter.done < units:
        reporter.advance(units - counter.done)
    return result


def run_problem(problem, methods, seeds, steps=None, reporter=None):
    """Trains `problem` with each method (a balancer alias) and seed.

    Returns a JSON-able dict: the problem's description and settings, every
    run (`runs`), the single-task baselines where the problem has them
    (`baselines`), and per method the mean and standard deviation over
    seeds of each headline number and of delta_m% (`summary`).
    """
    reporter = reporter or Reporter()
    steps = int(steps or problem.default_steps)
    seeds = [int(s) for s in seeds]
    problem.prepare()
    units = problem.units(steps)
    tasks = list(problem.tasks)
    total = len(methods) * len(seeds) * units
    if problem.baselines:
        total += len(seeds) * len(tasks) * units
    reporter.begin(problem, total)

    baselines = []
    if problem.baselines:
        for seed in seeds:
            for task in tasks:
                reporter.describe(f"{problem.name}: single-task {task}, seed {seed}")
                result = _guarded(
                    lambda advance: problem.run_single_task(task, seed, steps, advance),
                    units, reporter,
                )
                baselines.append({"task": task, "seed": seed, **result})

    runs = []
    for method in methods:
        failed = None
        for seed in seeds:
            if failed is not None:
                runs.append({
                    "method": method, "seed": seed, "status": "skipped",
                    "error": failed["error"],
                })
                reporter.advance(units)
                continue
            reporter.describe(f"{problem.name}: {method}, seed {seed}")
            result = _guarded(
                lambda advance: problem.run(method, seed, steps, advance), units, reporter
            )
            runs.append({"method": method, "seed": seed, **result})
            if result["status"] == "failed":
                failed = result
    reporter.end(problem)

    return {
        "problem": problem.name,
        "family": problem.family,
        "title": problem.title,
        "description": problem.description,
        "tasks": tasks,
        "metric": problem.metric,
        "higher_is_better": problem.higher_is_better,
        "settings": {**problem.settings(steps), "seeds": seeds, "methods": list(methods)},
        "runs": runs,
        "baselines": baselines,
        "summary": summarize(problem, methods, runs, baselines),
    }


def _baseline_by_seed(baselines, tasks):
    """seed -> {task: metric}, for seeds whose every baseline succeeded."""
    by_seed = {}
    for b in baselines:
        if b.get("status") == "ok":
            by_seed.setdefault(b["seed"], {})[b["task"]] = b["metrics"][b["task"]]
    return {seed: m for seed, m in by_seed.items() if set(m) == set(tasks)}


def summarize(problem, methods, runs, baselines):
    """Per method: status, mean/std over seeds of each headline number,
    delta_m% (paired by seed with the baselines), seconds."""
    tasks = list(problem.tasks)
    reference = _baseline_by_seed(baselines, tasks) if problem.baselines else {}
    summary = {}
    if problem.baselines and reference:
        summary["single-task"] = {
            "status": "ok",
            "numbers": {
                f"metric/{task}": metrics_module.mean_std([m[task] for m in reference.values()])
                for task in tasks
            },
            "seconds": metrics_module.mean_std([
                sum(b["seconds"] for b in baselines if b["seed"] == seed) for seed in reference
            ]),
        }
    for method in methods:
        mine = [r for r in runs if r["method"] == method]
        done = [r for r in mine if r["status"] in ("ok", "diverged")]
        entry = {"status": "ok", "numbers": {}, "seconds": metrics_module.mean_std(
            [r["seconds"] for r in done])}
        failed = [r for r in mine if r["status"] == "failed"]
        if failed:
            error = failed[0]["error"]
            entry["status"] = "failed"
            entry["error"] = f"{error['type']}: {error['message']}"
        elif any(r["status"] == "diverged" for r in done):
            entry["status"] = "diverged"
        if done:
            keys = problem.summarize(done[0]).keys() if done[0]["status"] == "ok" else ()
            per_run = [problem.summarize(r) if r["status"] == "ok" else {} for r in done]
            for key in keys:
                entry["numbers"][key] = metrics_module.mean_std(
                    [p.get(key, math.nan) for p in per_run]
                )
            if reference:
                values = []
                for r in done:
                    if r["seed"] in reference:
                        values.append(
                            metrics_module.delta_m(r["metrics"], reference[r["seed"]],
                                                   problem.higher_is_better)
                            if r["status"] == "ok" else math.nan
                        )
                if values:
                    entry["delta_m"] = {**metrics_module.mean_std(values), "values": values}
        summary[method] = entry
    return summary
