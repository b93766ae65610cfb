"""The GPU check at tiny size on the CPU, so it cannot rot between the rare times a GPU is lent:
the same code, the same table, every figure a measurement or an explicit "not measured: why";
written after every row, so a row that raises (an OOM, a compiler error) or a machine taken away
mid-run still leaves every other row's figures."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
FIGURES = ("load_s", "first_image_s", "s_per_image_batch1", "s_per_image_batch4", "peak_gpu_gb", "ratio_to_floor")


def measured_or_said_why(value) -> bool:
    return (isinstance(value, (int, float)) and not isinstance(value, bool) and value >= 0) or \
        (isinstance(value, str) and value.startswith("not measured: ") and len(value) > len("not measured: ") + 3)


def load_check():
    spec = importlib.util.spec_from_file_location("gpu_check", ROOT / "scripts" / "gpu_check.py")
    gpu_check = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(gpu_check)
    return gpu_check


def test_the_tiny_check_keeps_every_rows_figures_when_a_row_raises_and_when_it_is_cut_short(
        tmp_path, tiny_models, monkeypatch, capsys):
    gpu_check = load_check()
    real_clip = gpu_check.Check.clip
    clip_calls = []

    def out_of_memory(self):
        raise RuntimeError("CUDA out of memory. Tried to allocate 20.00 MiB (simulated)")

    def taken_away_at_the_last_row(self):
        clip_calls.append(1)
        if len(clip_calls) == 2:  # the CLIP row itself: the lent machine goes away
            raise KeyboardInterrupt
        return real_clip(self)

    monkeypatch.setattr(gpu_check.Check, "baseline", out_of_memory)
    monkeypatch.setattr(gpu_check.Check, "clip", taken_away_at_the_last_row)
    with pytest.raises(KeyboardInterrupt):
        gpu_check.main(["--tiny", "--out", str(tmp_path), "--budget", "300"])
    result = json.loads((tmp_path / "gpu_check.json").read_text())  # what was there when it stopped
    assert result["tiny"] is True and result["model"] == "tiny-flux"
    rows = result["rows"]
    # cheap plan rows before the compile rows; the interrupted row never reached the file
    assert list(rows) == ["planner's choice, default options", "plan fp8-storage", "plan group-offload",
                          "plan group-offload + fp8", "plan model-offload", "plan resident + vae-tiling",
                          "planner's choice beside the CLIP scorer", "plain diffusers loop",
                          "product, default options", "quantize int8 only", "compile only"]
    # the row that raised says what and where; every other row kept its figures
    crashed = rows["plain diffusers loop"]
    assert crashed["error"].startswith("not measured: RuntimeError: CUDA out of memory") and crashed["where"]
    for label in ("planner's choice, default options", "plan fp8-storage", "plan group-offload",
                  "plan group-offload + fp8", "plan resident + vae-tiling", "product, default options",
                  "quantize int8 only", "compile only"):
        assert all(measured_or_said_why(rows[label][k]) for k in FIGURES), (label, rows[label])
        assert isinstance(rows[label]["s_per_image_batch1"], float)  # these run on a CPU: really measured
    # what the CPU cannot run is reported as such, not pretended
    assert rows["plan model-offload"]["error"].startswith("not measured: IMG_010")
    assert rows["compile only"]["speed"]["applied"]["compile"].startswith("regional")  # inductor, for the CPU
    assert "compile" in rows["product, default options"]["speed"]["skipped"]
    assert rows["quantize int8 only"]["speed"]["applied"]["quantize"].startswith("int8")
    assert isinstance(rows["planner's choice beside the CLIP scorer"]["clip_images_per_s_batch32"], float)
    assert measured_or_said_why(result["fp8_matmul_tflops"]) and measured_or_said_why(result["floor_s_per_image"])
    # each row was printed as it finished, and the table has a line per row
    printed = [line for line in capsys.readouterr().out.splitlines() if line.startswith("ROW ")]
    assert [line.split(":", 1)[0][4:] for line in printed] == list(rows)
    table = (tmp_path / "gpu_check.md").read_text()
    assert table.count("\n| ") == len(rows) + 1 and "| plain diffusers loop | not measured: RuntimeError" in table


def test_the_floor_counts_each_linear_over_the_tokens_it_sees():
    """FLUX.1-schnell at 1024x1024 with 512 text tokens: 7.4e13 FLOP a step (2.98e14 for 4 steps),
    not 2 x parameters x every token (which counted the modulation layers, 27% of the weights,
    once per token instead of once per image)."""
    from actors.core.meta_count import transformer_flops
    from cluster.planning.memory.architectures import load_architecture

    arch = load_architecture("flux1-schnell")
    step = transformer_flops(arch, 1024, 1024, 512)
    assert 7.3e13 < step < 7.5e13
    naive = 2 * arch.sizes["transformer"].params * (4096 + 512)
    assert step < 0.7 * naive
    assert transformer_flops(arch, 512, 512, 512) < step / 3  # a quarter of the image tokens


def test_gpu_check_sh_pins_the_projects_versions_or_fails_saying_so(tmp_path):
    """Wheels for the GPU machine come pinned to the versions the project's environment resolved;
    an environment without them is an error before anything is downloaded, not an unpinned
    download of whatever is newest."""
    import subprocess
    import sys

    bare = tmp_path / "bare"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(bare)], check=True)
    done = subprocess.run(["bash", str(ROOT / "scripts" / "gpu_check.sh")], capture_output=True, text=True,
                          env={"PATH": "/usr/bin:/bin", "PYTHON": str(bare / "bin" / "python")}, timeout=60)
    assert done.returncode == 1 and "has no diffusers, so its version cannot be pinned" in done.stderr
    assert done.stdout == ""  # no command to run: nothing was prepared
