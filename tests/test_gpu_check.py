"""The GPU check at tiny size on the CPU, so it cannot rot between the rare times a GPU is lent:
the same code, the same table, every figure a measurement or an explicit "not measured: why"."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
FIGURES = ("load_s", "first_image_s", "s_per_image_batch1", "s_per_image_batch4", "peak_gpu_gb", "ratio_to_floor")


def measured_or_said_why(value) -> bool:
    return (isinstance(value, (int, float)) and not isinstance(value, bool) and value >= 0) or \
        (isinstance(value, str) and value.startswith("not measured: ") and len(value) > len("not measured: ") + 3)


def test_the_tiny_check_measures_every_figure_or_says_why_not(tmp_path, tiny_models):
    spec = importlib.util.spec_from_file_location("gpu_check", ROOT / "scripts" / "gpu_check.py")
    gpu_check = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(gpu_check)
    assert gpu_check.main(["--tiny", "--out", str(tmp_path), "--budget", "120"]) == 0
    result = json.loads((tmp_path / "gpu_check.json").read_text())
    assert result["tiny"] is True and result["model"] == "tiny-flux"
    assert measured_or_said_why(result["matmul_tflops"]) and measured_or_said_why(result["floor_s_per_image"])
    rows = result["rows"]
    assert list(rows)[:2] == ["plain diffusers loop", "product, default options"]
    for label in ("plain diffusers loop", "product, default options", "quantize int8 only", "plan fp8-storage",
                  "plan group-offload", "plan resident + vae-tiling"):
        assert all(measured_or_said_why(rows[label][k]) for k in FIGURES), (label, rows[label])
        assert isinstance(rows[label]["s_per_image_batch1"], float)  # these run on a CPU: really measured
    # what the CPU cannot run is reported as such, not pretended
    assert rows["plan model-offload"]["error"].startswith("not measured: IMG_010")
    assert rows["compile only"]["speed"]["applied"]["compile"].startswith("regional")  # inductor, for the CPU
    assert "compile" in rows["product, default options"]["speed"]["skipped"]
    assert rows["quantize int8 only"]["speed"]["applied"]["quantize"].startswith("int8")
    assert all(measured_or_said_why(v) for v in result["clip_vit_l14"].values())
    table = (tmp_path / "gpu_check.md").read_text()
    assert table.count("\n| ") == len(rows) + 1 and "| plain diffusers loop |" in table
