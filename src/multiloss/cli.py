"""The `multiloss` command."""

import argparse
import os
import sys

__all__ = ["main"]


def _demo(args):
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    from rich.console import Console
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
    from rich.table import Table

    import keras

    from multiloss import balancer as balancer_module
    from multiloss.bench import runner
    from multiloss.bench.problems import multidigits

    console = Console()
    methods = args.methods.split(",") if args.methods else demo_methods()
    unknown = [m for m in methods if m not in balancer_module.available()]
    if unknown:
        raise SystemExit(
            f"Unknown method(s) {unknown}; valid names: {balancer_module.available()}"
        )
    console.print(
        f"multiloss demo: two overlaid digits (scikit-learn's load_digits), tasks "
        f"'left' and 'right'; backend {keras.backend.backend()}, {args.epochs} epochs per method."
    )
    data = multidigits.load(seed=args.seed)
    results = []
    with Progress(
        TextColumn("{task.description}"), BarColumn(), TextColumn("{task.completed}/{task.total} epochs"),
        TimeElapsedColumn(), console=console,
    ) as progress:
        bar = progress.add_task("training", total=len(methods) * args.epochs)
        for method in methods:
            progress.update(bar, description=f"training [bold]{method}[/]")
            results.append(
                runner.run_multidigits(
                    method, data, epochs=args.epochs, seed=args.seed,
                    callbacks=[runner.EpochProgress(lambda: progress.advance(bar))],
                )
            )
    table = Table(title="multidigits, test set")
    table.add_column("method")
    for task in multidigits.TASKS:
        table.add_column(f"{task} acc", justify="right")
        table.add_column(f"{task} loss", justify="right")
        table.add_column(f"{task} weight", justify="right")
    table.add_column("seconds", justify="right")
    for result in results:
        row = [result["method"]]
        for task in multidigits.TASKS:
            t = result["tasks"][task]
            row += [f"{t['accuracy']:.3f}", f"{t['loss']:.3f}", f"{t['weight']:.3f}"]
        row.append(f"{result['seconds']:.1f}")
        table.add_row(*row)
    console.print(table)


def demo_methods():
    """Static weights first, then every loss-level balancer, then a handful
    of gradient-level ones where they exist."""
    from multiloss import balancer as balancer_module
    from multiloss import weighting

    available = balancer_module.available()
    loss_level = [
        name for name in available
        if issubclass(balancer_module.get(name).__class__, weighting.Weighting)
    ]
    gradient_level = [name for name in ("pcgrad", "mgda", "upgrad", "nashmtl") if name in available]
    ordered = ["static"] + [name for name in loss_level if name != "static"]
    return ordered + gradient_level


def main(argv=None):
    parser = argparse.ArgumentParser(prog="multiloss", description="Balanced multi-loss training for Keras 3.")
    commands = parser.add_subparsers(dest="command", required=True)
    demo = commands.add_parser("demo", help="train the two-digit model with each balancer and compare")
    demo.add_argument("--epochs", type=int, default=6)
    demo.add_argument("--methods", help="comma-separated balancer names (default: a quick suite)")
    demo.add_argument("--seed", type=int, default=0)
    demo.set_defaults(run=_demo)
    args = parser.parse_args(argv)
    args.run(args)


if __name__ == "__main__":
    sys.exit(main())
