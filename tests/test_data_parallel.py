"""Data parallel: per-task gradients are reduced over replicas before they
are aggregated, so two CPU devices give the one-device update."""

import json
import os
import subprocess
import sys

import pytest

from conftest import BACKEND

WORKER = os.path.join(os.path.dirname(__file__), "data_parallel_worker.py")


@pytest.mark.skipif(BACKEND == "torch", reason="Keras has no data-parallel fit on torch")
def test_two_devices_equal_one_for_pcgrad_and_mgda():
    env = dict(os.environ, KERAS_BACKEND=BACKEND, TF_CPP_MIN_LOG_LEVEL="3")
    proc = subprocess.run(
        [sys.executable, WORKER, "pcgrad", "mgda", "static"],
        env=env, capture_output=True, text=True, timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = json.loads(proc.stdout.strip().splitlines()[-1])
    for method, result in results.items():
        assert result["replicas"] == 2, (method, result)
        assert result["moved"] > 1e-3, (method, result)  # training did something
        assert result["diff"] < 1e-6, (method, result)
