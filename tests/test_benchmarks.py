"""The benchmark scripts run (their numbers are measured in benchmarks/README.md, never asserted here)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow  # about a minute: compiles a sweep twice, a VGG Recorder and a d = 10⁴ simulate
def test_gpu_script_runs_quick_on_cpu(tmp_path):
    out = tmp_path / "gpu.json"
    subprocess.run([sys.executable, "benchmarks/gpu.py", "--quick", "--out", str(out)], cwd=ROOT, check=True, timeout=600)
    res = json.loads(out.read_text())
    assert {"peak", "sweep", "vgg", "simulate", "summary"} <= set(res)
    assert res["sweep"]["largest_n"] >= 4 and res["simulate"]["successful"] and res["vgg"]["status"] == "ok"
    assert res["summary"]["matmul_tflops"] > 0 and res["summary"]["bandwidth_gb_s"] > 0
