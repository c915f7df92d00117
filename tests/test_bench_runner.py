"""The benchmark runner: delta_m%, mean/std over seeds, a method that fails,
and the JSON and report it writes (tiny problems, a few steps)."""

import json
import math
import os

import numpy as np
import pytest

import multiloss
from multiloss.bench import metrics, report, runner
from multiloss.bench.problems import multidigits, scales, toy2d


def test_delta_m_standard_definition():
    # Accuracy (higher is better): 0.9 vs 1.0 is 10% worse; 1.1 vs 1.0 is 10% better.
    assert metrics.delta_m({"a": 0.9, "b": 1.1}, {"a": 1.0, "b": 1.0}, True) == pytest.approx(0.0)
    assert metrics.delta_m({"a": 0.9, "b": 0.95}, {"a": 1.0, "b": 1.0}, True) == pytest.approx(7.5)
    # An error (lower is better): 1.2 vs 1.0 is 20% worse.
    assert metrics.delta_m({"m": 1.2}, {"m": 1.0}, False) == pytest.approx(20.0)
    # Mixed directions per task.
    value = metrics.delta_m({"acc": 0.8, "mae": 0.5}, {"acc": 0.5, "mae": 1.0},
                            {"acc": True, "mae": False})
    assert value == pytest.approx((-60.0 + -50.0) / 2)
    with pytest.raises(ValueError, match="task"):
        metrics.delta_m({"a": 1.0}, {"a": 1.0, "b": 1.0}, True)


def test_mean_std():
    stat = metrics.mean_std([1.0, 2.0, 3.0])
    assert stat == {"mean": 2.0, "std": pytest.approx(1.0), "n": 3}
    assert metrics.mean_std([4.0]) == {"mean": 4.0, "std": 0.0, "n": 1}
    assert math.isnan(metrics.mean_std([1.0, float("nan")])["mean"])


class Broken(multiloss.weighting.Weighting):
    def balance(self, losses, training=True):
        raise RuntimeError("this balancer is broken on purpose")


@pytest.fixture(scope="module")
def suite(tmp_path_factory):
    """A tiny suite: toy2d (2 seeds), scales T=2 and multidigits (1 seed),
    with a working and a failing method."""
    multiloss.balancer._REGISTRY["benchtestbroken"] = Broken
    calls = []

    class Counter(runner.Reporter):
        def begin(self, problem, total):
            calls.append(("begin", problem.name, total))

        def advance(self, n=1):
            calls.append(("advance", n))

    try:
        toy = runner.run_problem(toy2d.Toy2D("cagrad"), ["static", "benchtestbroken"],
                                 [0, 1], steps=8, reporter=Counter())
        scale = runner.run_problem(scales.Scales(2, train=64, val=16, test=16),
                                   ["static"], [0], steps=2)
        digits = runner.run_problem(
            multidigits.MultiDigits(train_pairs=64, val_pairs=16, test_pairs=32),
            ["static", "benchtestbroken"], [0], steps=3,
        )
    finally:
        del multiloss.balancer._REGISTRY["benchtestbroken"]
    folder = tmp_path_factory.mktemp("bench")
    document = report.collect([toy, scale, digits], command="multiloss bench test")
    json_path = report.write_json(document, os.path.join(folder, "out", "results.json"))
    html_path = report.write_report(document, os.path.join(folder, "report"))
    return {"toy": toy, "scales": scale, "digits": digits, "calls": calls,
            "json": json_path, "html": html_path}


def test_runner_records_runs_and_a_failing_method(suite):
    toy = suite["toy"]
    statuses = [(r["method"], r["seed"], r["status"]) for r in toy["runs"]]
    assert statuses == [("static", 0, "ok"), ("static", 1, "ok"),
                        ("benchtestbroken", 0, "failed"), ("benchtestbroken", 1, "skipped")]
    failed = toy["runs"][2]
    assert failed["error"]["type"] == "RuntimeError"
    assert "broken on purpose" in failed["error"]["message"]
    assert toy["summary"]["benchtestbroken"]["status"] == "failed"
    assert "broken on purpose" in toy["summary"]["benchtestbroken"]["error"]
    # Progress: every unit advanced, the failed and skipped runs' included.
    begin = [c for c in suite["calls"] if c[0] == "begin"][0]
    assert begin[2] == 2 * 2 * 3  # methods x seeds x (3 starts x 1 chunk)
    assert sum(c[1] for c in suite["calls"] if c[0] == "advance") == begin[2]
    # Mean and std over the two seeds (static is deterministic: std 0).
    numbers = toy["summary"]["static"]["numbers"]
    assert numbers["start0/L1"]["n"] == 2 and numbers["start0/L1"]["std"] == 0.0
    assert toy["settings"]["steps"] == 8 and toy["settings"]["seeds"] == [0, 1]


def test_runner_delta_m_against_single_task_baselines(suite):
    digits = suite["digits"]
    assert {(b["task"], b["status"]) for b in digits["baselines"]} == {
        ("left", "ok"), ("right", "ok")}
    run = [r for r in digits["runs"] if r["method"] == "static"][0]
    assert run["status"] == "ok" and run["steps"] == 3
    assert set(run["history"]) >= {"step", "loss", "left_loss", "right_weight",
                                   "val_left_loss"}
    assert len(run["history"]["left_loss"]) == 3
    reference = {b["task"]: b["metrics"][b["task"]] for b in digits["baselines"]}
    expected = metrics.delta_m(run["metrics"], reference, True)
    assert digits["summary"]["static"]["delta_m"]["mean"] == pytest.approx(expected)
    assert digits["summary"]["single-task"]["status"] == "ok"
    assert digits["summary"]["benchtestbroken"]["status"] == "failed"
    scale = suite["scales"]
    numbers = scale["summary"]["static"]["numbers"]
    total = numbers["metric/t1"]["mean"] + numbers["metric/t2"]["mean"]
    assert numbers["sum mse/sigma^2"]["mean"] == pytest.approx(total)


def test_json_has_every_number(suite):
    with open(suite["json"]) as f:
        text = f.read()
    assert "NaN" not in text and "Infinity" not in text
    document = json.loads(text)
    assert document["backend"] == multiloss.balancer.keras.backend.backend()
    assert document["command"] == "multiloss bench test"
    names = [p["problem"] for p in document["problems"]]
    assert names == ["toy2d-cagrad", "scales-T2", "multidigits"]
    toy = document["problems"][0]
    start = toy["runs"][0]["starts"][0]
    assert len(start["trajectory"]["x1"]) == len(start["trajectory"]["step"]) > 1
    assert set(start) >= {"final_x", "final_losses", "on_pareto_set", "pareto_distance"}


def test_report_is_written_with_tables_and_plots(suite):
    folder = os.path.dirname(suite["html"])
    with open(suite["html"]) as f:
        page = f.read()
    for needle in ("toy2d (cagrad variant)", "scales: GradNorm", "multidigits", "single-task",
                   "failed: RuntimeError", "Δm%", "multiloss bench test"):
        assert needle in page
    pngs = sorted(n for n in os.listdir(folder) if n.endswith(".png"))
    assert pngs == sorted([
        "toy2d-cagrad_trajectories.png", "toy2d-cagrad_loss_space.png",
        "toy2d-cagrad_weights.png", "scales-T2_losses.png", "scales-T2_weights.png",
        "scales-T2_metric.png", "multidigits_losses.png", "multidigits_weights.png",
        "multidigits_delta_m.png",
    ])
    for name in pngs:
        assert f"src='{name}'" in page
        with open(os.path.join(folder, name), "rb") as f:
            assert f.read(8) == b"\x89PNG\r\n\x1a\n"
    header, rows = report.table_rows(suite["digits"])
    assert header[:4] == ["method", "status", "left accuracy", "right accuracy"]
    assert [r[0] for r in rows] == ["single-task", "static", "benchtestbroken"]
    assert np.isfinite(float(rows[1][2].split(" ")[0]))


def test_fit_problems_train_exactly_the_steps_asked():
    # Keras's array iterator cuts an epoch short at the end of the data when
    # steps_per_epoch is set; the problems' batches run on across epochs.
    from multiloss.bench.problems.base import _batches

    x = np.arange(10, dtype="float32")[:, None]
    batches = _batches(x, {"t": x * 2}, batch_size=3, steps=7, seed=0)
    assert len(batches) == 7
    seen = [batches[i] for i in range(7)]
    assert all(b[0].shape == (3, 1) for b in seen)
    np.testing.assert_array_equal(seen[0][1]["t"], seen[0][0] * 2)
    first_pass = np.concatenate([b[0] for b in seen[:3]]).ravel()
    assert len(set(first_pass.tolist())) == 9  # a pass draws without replacement
    problem = scales.Scales(2, train=50, val=10, test=10)
    problem.batch_size = 20  # 2 batches a pass: 7 steps cross the data's end
    run = problem.run("static", seed=0, steps=7)
    assert run["status"] == "ok" and run["steps"] == 7
    assert run["history"]["step"] == [1, 2, 3, 4, 5, 6, 7]
