"""`generate --dry-run` reaches the verdict the run reaches, with the same exit status, and a run
refused before it starts leaves nothing behind (no folder, no journal)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from cluster.output.durability.journal import journal_dir

PROMPT = ["--image-prompt", "a lighthouse", "--folder-name", "out"]


def dry(capsys, *args: str) -> tuple[int, dict, str]:
    from cluster.entrypoints.cli import main

    code = main(["generate", *PROMPT, "--dry-run", "--json", *args])
    captured = capsys.readouterr()
    return code, json.loads(captured.out.strip().splitlines()[-1]), captured.err


def nothing_written(tmp_path) -> bool:
    return not (tmp_path / "out").exists() and not journal_dir(tmp_path / "out").exists()


def test_a_cuda_only_plan_on_a_machine_without_a_gpu(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")  # this machine as one without a GPU, wherever it runs
    code, result, err = dry(capsys, "--models", "tiny-flux", "--memory-plan", "model-offload")
    assert code == 1 and result["ok"] is False
    assert result["verdict"]["code"] == "IMG_010" and "needs a CUDA device" in result["verdict"]["message"]
    assert err.startswith("error IMG_010: ")
    (kind,) = result["models"][0]["kinds"]
    assert kind["plan"] is None and kind["code"] == "IMG_010"
    # the run itself, on an embedded instance of this machine: the same verdict before anything is written
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": ""}
    run = subprocess.run([sys.executable, "-m", "cluster.entrypoints.cli", "generate", *PROMPT, "--models", "tiny-flux",
                          "--memory-plan", "model-offload", "--address", "local", "--scorer", "none"],
                         cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert run.returncode == 1, run.stderr[-2000:]
    assert "error IMG_010: " in run.stderr and "needs a CUDA device" in run.stderr
    assert nothing_written(tmp_path)


def test_a_full_size_model_on_a_machine_without_a_gpu_does_not_fit_at_0_gb(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    code, result, err = dry(capsys, "--models", "flux-schnell")
    # the run stops at the missing weights first (exit 2), and would not fit the host's RAM after
    assert code == 2 and result["verdict"]["code"] == "IMG_002" and err.startswith("error IMG_002: ")
    (kind,) = result["models"][0]["kinds"]
    assert kind["plan"] is None and kind["code"] == "IMG_010" and "host RAM" in kind["message"]
    assert nothing_written(tmp_path)


def test_a_budget_refusal_is_the_same_exit_status_dry_or_not(tmp_path, capsys):
    from cluster.entrypoints.cli import main

    budget = ["--models", "tiny-flux", "--budget-usd", "0.00001", "--budget-policy", "refuse"]
    code, result, err = dry(capsys, *budget)
    assert code == 2 and result["verdict"]["code"] == "IMG_029" and err.startswith("error IMG_029: ")
    assert main(["generate", *PROMPT, *budget]) == 2
    assert "error IMG_029: " in capsys.readouterr().err
    assert nothing_written(tmp_path)


def test_a_degraded_budget_shows_the_plan_the_run_would_make(capsys):
    code, result, _ = dry(capsys, "--models", "tiny-flux", "--image-count", "4", "--budget-usd", "0.0008")
    assert code == 0 and result["verdict"] is None
    assert result["degradation"]["images_dropped"] >= 1 and result["images"] < 4


@pytest.mark.usefixtures("ray_session")
def test_a_model_no_node_can_hold_refuses_the_run_and_the_dry_run_alike(tmp_path, capsys):
    from cluster.entrypoints.cli import main
    from cluster.errors import ImageGenError
    from cluster.pipeline.run import run_generation
    from tests.helpers import make_request, quick_limits, scripted_registry

    registry = scripted_registry(tmp_path, {"huge": {"gpus": 1, "gpu_memory_gb": 80}})
    code, result, err = dry(capsys, "--config", str(registry.path), "--models", "huge", "--address", "auto")
    assert code == 1 and result["verdict"]["code"] == "IMG_010" and "gpu_memory_gb=80" in err
    request = make_request(registry, tmp_path, models="huge")
    with pytest.raises(ImageGenError) as refused:
        run_generation(request, registry, quick_limits())
    assert refused.value.code == "IMG_010" and refused.value.exit_status == code
    assert nothing_written(tmp_path)
    assert main(["generate", *PROMPT, "--config", str(registry.path), "--models", "huge", "--address", "auto"]) == 1
    assert nothing_written(tmp_path)


def test_the_machines_are_described_as_they_are(capsys):
    from cluster.entrypoints.cli import main

    with open("/proc/meminfo", encoding="ascii") as meminfo:
        available = next(int(line.split()[1]) for line in meminfo if line.startswith("MemAvailable:")) / 2**20
    code, result, _ = dry(capsys, "--models", "tiny-flux")
    assert code == 0
    (kind,) = result["models"][0]["kinds"]
    stated = float(kind["node_kind"].split(" GiB host RAM")[0].rsplit(" ", 1)[-1])
    assert abs(stated - available) <= 1.5  # the RAM free for new processes, not the free pages
    assert main(["generate", *PROMPT, "--models", "tiny-flux", "--dry-run", "--card-memory", "16",
                 "--host-memory", "32"]) == 0
    first = capsys.readouterr().out.splitlines()[0]
    assert "one 16 GiB card and 32 GiB host RAM" in first and "CPU" not in first  # nothing made up
