"""The `multiloss` command.

    multiloss bench PROBLEM [--methods a,b] [--seeds N] [--steps N] [--quick]
                            [--json FILE] [--report DIR]
    multiloss demo [--report DIR] [--methods a,b] [--seeds N]
    multiloss report JSON [JSON...] [--json FILE] [--report DIR] [--markdown FILE]

`PROBLEM` is a name from `multiloss.bench.problems.names()` (toy2d, scales,
multidigits, multimnist, qm9), several separated by commas, `all`, or
`quick` (toy2d, scales, multidigits). `demo` is `bench quick --quick`
with static weights, every loss-level balancer and five gradient-level
ones (on `scales`, the nine of `DEMO_SCALES_METHODS`), and a report in
`demo-report/`: what `make demo` runs (under 5 minutes on 2 CPU cores).
`report` merges the JSON files of several `bench --json` runs (one per
problem, say) into one table set and one report.
"""

import argparse
import os
import shlex
import sys

__all__ = ["main", "demo_methods"]

# The demo's problems: the Pareto-set toy, the losses of scales 1 to 100,
# and the two-digit task.
DEMO_PROBLEMS = ("toy2d", "scales", "multidigits")
# Gradient-level balancers the demo shows beside the loss-level ones.
DEMO_AGGREGATORS = ("pcgrad", "mgda", "upgrad", "nashmtl", "cagrad")
# On `scales` (its runs cost the most) the demo shows the methods made for
# losses of different scales, beside static weights.
DEMO_SCALES_METHODS = ("static", "uncertainty", "scalenormalized", "famo", "imtll",
                       "gradnorm", "imtlg", "nashmtl", "mgda")


def demo_methods(problem=None):
    """The methods the demo runs on `problem`: static weights, every
    registered loss-level balancer and a handful of gradient-level ones;
    on `scales`, `DEMO_SCALES_METHODS`."""
    from multiloss import balancer as balancer_module
    from multiloss.aggregators import Aggregator

    available = balancer_module.available()
    if problem == "scales":
        return [m for m in DEMO_SCALES_METHODS if m in available]
    loss_level = [m for m in available
                  if m != "static" and not isinstance(balancer_module.get(m), Aggregator)]
    return ["static", *loss_level, *(m for m in DEMO_AGGREGATORS if m in available)]


def _methods(text, default):
    from multiloss import balancer as balancer_module

    available = balancer_module.available()
    if not text:
        return default()
    if text == "all":
        return available
    # Aliases ignore case, underscores and hyphens, as the registry does.
    def key(name):
        return name.lower().replace("_", "").replace("-", "")

    canonical = {key(name): name for name in available}
    methods = [m.strip() for m in text.split(",") if m.strip()]
    unknown = [m for m in methods if key(m) not in canonical]
    if unknown:
        raise SystemExit(f"Unknown method(s) {unknown}; valid names: {available}")
    return [canonical[key(m)] for m in methods]


def _problems(text):
    from multiloss.bench import problems

    if text == "all":
        names = problems.names()
    elif text == "quick":
        names = list(problems.QUICK)
    else:
        names = [n.strip().lower() for n in text.split(",") if n.strip()]
    unknown = [n for n in names if n not in problems.names()]
    if unknown:
        raise SystemExit(
            f"Unknown problem(s) {unknown}; valid names: {problems.names()}, 'all', 'quick'"
        )
    return names


class _RichReporter:
    """Drives a rich progress bar per problem."""

    def __init__(self, progress):
        self.progress = progress
        self.task = None

    def begin(self, problem, total):
        self.task = self.progress.add_task(problem.name, total=total)
        self.name = problem.name

    def describe(self, text):
        self.progress.update(self.task, description=text)

    def advance(self, n=1):
        self.progress.advance(self.task, n)

    def end(self, problem):
        self.progress.update(self.task, description=f"{problem.name}: done")


def _console():
    from rich.console import Console

    console = Console()
    # Not a terminal (a log, CI): Rich would assume 80 columns and fold
    # every cell of the wide tables.
    return console if console.is_terminal else Console(width=160)


def _print_table(console, result):
    from rich.table import Table

    from multiloss.bench import report

    header, rows = report.table_rows(result)
    tasks = result["tasks"]
    if result["family"] != "toy2d" and len(tasks) > 4:
        # Too wide for a terminal: the per-task numbers are in the report.
        keep = [i for i, h in enumerate(header)
                if not any(h == f"{t} {result['metric']}" for t in tasks)]
        header = [header[i] for i in keep]
        rows = [[row[i] for i in keep] for row in rows]
    seeds = len(result["settings"]["seeds"])
    table = Table(title=f"{result['title']} — mean ± std over {seeds} seed(s), "
                        f"{result['settings']['steps']} steps")
    for i, column in enumerate(header):
        table.add_column(column, justify="left" if i < 2 else "right",
                         overflow="fold", max_width=48 if i == 1 else None, no_wrap=i == 0)
    for row in rows:
        status = row[1]
        style = "red" if status.startswith("failed") else (
            "yellow" if status == "diverged" else None)
        table.add_row(*[str(c) for c in row], style=style)
    console.print(table)


def run_bench(problem_names, methods, seeds, steps=None, quick=False, json_path=None,
              report_dir=None, command=None, console=None):
    """Runs the problems, prints each results table, writes the JSON and the
    report; returns `(document, errors)`, errors a list of messages for the
    problems that could not run (a missing data package). `methods` is a
    list of aliases, or a dict from problem name to such a list."""
    from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn,
                               TimeElapsedColumn)

    from multiloss.bench import problems, report, runner
    from multiloss.bench.data import MissingPackage

    console = console or _console()
    results, errors = [], []
    with Progress(
        TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
        TimeElapsedColumn(), console=console,
    ) as progress:
        reporter = _RichReporter(progress)
        for name in problem_names:
            for problem in problems.get(name):
                n = steps or (problem.quick_steps if quick else problem.default_steps)
                chosen = methods[name] if isinstance(methods, dict) else methods
                try:
                    result = runner.run_problem(problem, chosen, seeds, n, reporter)
                except MissingPackage as exc:
                    errors.append(str(exc))
                    progress.console.print(f"[red]{problem.name}: {exc}[/]")
                    continue
                results.append(result)
                _print_table(progress.console, result)
                if json_path:
                    # After each problem: a long suite cut short keeps what it did.
                    report.write_json(report.collect(results, command=command), json_path)
    document = report.collect(results, command=command)
    if json_path:
        report.write_json(document, json_path)
        console.print(f"JSON: {json_path}")
    if report_dir:
        path = report.write_report(document, report_dir)
        console.print(f"Report: {path}")
    return document, errors


def _command(argv):
    backend = os.environ.get("KERAS_BACKEND")
    prefix = f"KERAS_BACKEND={backend} " if backend else ""
    return prefix + "multiloss " + " ".join(shlex.quote(a) for a in argv)


def _bench(args, argv):
    from multiloss import balancer as balancer_module

    names = _problems(args.problem)
    methods = _methods(args.methods, balancer_module.available)
    if args.seeds < 1:
        raise SystemExit("--seeds must be at least 1")
    if args.steps is not None and args.steps < 1:
        raise SystemExit("--steps must be at least 1")
    _, errors = run_bench(
        names, methods, list(range(args.seeds)), steps=args.steps, quick=args.quick,
        json_path=args.json, report_dir=args.report, command=_command(argv),
    )
    return 1 if errors else 0


def _demo(args, argv):
    if args.methods:
        methods = _methods(args.methods, demo_methods)
    else:
        methods = {name: demo_methods(name) for name in DEMO_PROBLEMS}
    report_dir = args.report
    _, errors = run_bench(
        list(DEMO_PROBLEMS), methods, list(range(args.seeds)), quick=True,
        json_path=os.path.join(report_dir, "results.json"), report_dir=report_dir,
        command=_command(argv),
    )
    return 1 if errors else 0


def _resummarize(result):
    """Recomputes a result's summary from its runs (the summary's rules
    may be newer than the file)."""
    from multiloss.bench import problems, runner

    try:
        family = problems.get(result["family"])
    except ValueError:
        return
    for problem in family:
        if problem.name == result["problem"]:
            result["summary"] = runner.summarize(
                problem, result["settings"]["methods"], result["runs"], result["baselines"])


def _report(args, argv):
    from multiloss.bench import report

    console = _console()
    document = report.merge(report.load_json(path) for path in args.files)
    for result in document["problems"]:
        _resummarize(result)
        _print_table(console, result)
    if args.json:
        report.write_json(document, args.json)
        console.print(f"JSON: {args.json}")
    if args.report:
        console.print(f"Report: {report.write_report(document, args.report)}")
    if args.markdown:
        with open(args.markdown, "w") as f:
            f.write(report.markdown(document))
        console.print(f"Markdown: {args.markdown}")
    return 0


def _quick():
    from multiloss.bench import problems

    return problems.QUICK


def main(argv=None):
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = argparse.ArgumentParser(
        prog="multiloss", description="Balanced multi-loss training for Keras 3."
    )
    commands = parser.add_subparsers(dest="command", required=True)

    bench = commands.add_parser(
        "bench", help="train every balancer on a benchmark problem and compare",
        description="Problems: toy2d, scales, multidigits, multimnist, qm9 (comma-separated), "
        "'all', or 'quick' (toy2d, scales, multidigits). Methods: balancer aliases from "
        "multiloss.balancer.available() (default: all of them).",
    )
    bench.add_argument("problem", help="toy2d, scales, multidigits, multimnist, qm9, all, quick")
    bench.add_argument("--methods", help="comma-separated balancer aliases, or 'all' (default)")
    bench.add_argument("--seeds", type=int, default=1, help="number of seeds: 0..N-1 (default 1)")
    bench.add_argument("--steps", type=int, default=None,
                       help="optimizer steps per run (default: each problem's full count)")
    bench.add_argument("--quick", action="store_true",
                       help="each problem's short step count (the demo's)")
    bench.add_argument("--json", metavar="FILE", help="write every number to FILE")
    bench.add_argument("--report", metavar="DIR", help="write DIR/index.html with plots")
    bench.set_defaults(run=_bench)

    demo = commands.add_parser(
        "demo", help="toy2d, scales and multidigits, short runs, static weights beside every "
                     "loss-level balancer and five gradient-level ones",
    )
    demo.add_argument("--methods", help="comma-separated balancer aliases (default: a handful)")
    demo.add_argument("--seeds", type=int, default=1)
    demo.add_argument("--report", default="demo-report", metavar="DIR",
                      help="report folder (default demo-report; results.json inside)")
    demo.set_defaults(run=_demo)

    merge = commands.add_parser(
        "report", help="tables and a report from JSON files that `bench --json` wrote",
    )
    merge.add_argument("files", nargs="+", metavar="JSON")
    merge.add_argument("--json", metavar="FILE", help="write the merged results to FILE")
    merge.add_argument("--report", metavar="DIR", help="write DIR/index.html with plots")
    merge.add_argument("--markdown", metavar="FILE", help="write the tables as Markdown")
    merge.set_defaults(run=_report)

    args = parser.parse_args(argv)
    return args.run(args, argv)


if __name__ == "__main__":
    sys.exit(main())
