"""End to end through Ray with the real tiny pipelines, read like the design card's
compatibility matrix."""

from __future__ import annotations

import json

import numpy as np
import pytest

from cluster.entrypoints.cli import main
from cluster.output.github_output import OUTPUT_NAMES, parse_outputs
from cluster.output.png import decode, read_parameters
from tests.helpers import read_json

pytestmark = pytest.mark.usefixtures("ray_session", "tiny_models")


@pytest.fixture(scope="module")
def warm_tiny(ray_session, tiny_models):
    """tiny-flux and tiny-sd resident for this module's later tests (the first test runs cold),
    joined the way a workflow step joins a warm cluster: --address."""
    from cluster.planning.limits import load_limits
    from cluster.entrypoints.warm import bring_down, bring_up
    from models.registry import load_registry
    from models.scorers import load_scoring

    bring_up(load_registry(), ["tiny-flux", "tiny-sd"], load_scoring(), "none", load_limits())
    yield ["--address", ray_session.get_runtime_context().gcs_address]
    bring_down()


def run_cli(tmp_path, monkeypatch, *args: str) -> tuple[int, dict]:
    output_file = tmp_path / "github_output"
    output_file.touch()
    monkeypatch.setenv("GITHUB_OUTPUT", str(output_file))
    code = main(["generate", "--image-prompt", "a lighthouse at dusk, oil painting", "--folder-name", "run", *args])
    return code, parse_outputs(output_file.read_text(encoding="utf-8"))


def test_single_image_legacy_interface(tmp_path, monkeypatch):
    code, outputs = run_cli(tmp_path, monkeypatch, "--models", "tiny-flux", "--seed", "3")
    assert code == 0
    assert set(outputs) == set(OUTPUT_NAMES)
    assert outputs["image-completed"] == "true"
    assert outputs["images-completed"] == "1"
    assert outputs["used-model"] == "tiny-flux"
    assert outputs["primary-image-index"] == "0"
    folder = tmp_path / "run"
    assert outputs["google-image-url"] == (folder / "images/generated-image.png").as_uri()
    assert (folder / "google-image-url.txt").read_text().strip() == outputs["google-image-url"]
    primary = (folder / "images/generated-image.png").read_bytes()
    assert primary == (folder / "images/generated-image-1.png").read_bytes()
    image = decode(primary)
    assert image.size == (64, 64)
    assert np.asarray(image).std() > 0  # a real decode, not a blank placeholder
    params = read_parameters(primary)
    assert (params["model"], params["seed"], params["steps"]) == ("tiny-flux", 3, 2)
    report = read_json(folder / "metadata/generation-report.json")
    assert report["generation_summary"]["weights"] == "random"
    gallery = (folder / "gallery.html").read_text()
    assert gallery.count('class="card') == 1 and "images/generated-image-1.png" in gallery
    replica = report["models"]["tiny-flux"]["replicas"][0]
    if replica["device"] == "cpu":
        # the session's GPUs are logical ones (or CUDA cannot see the card Ray picked): the report says so
        assert replica["gpu_ids"] and "runs on the CPU" in replica["note"]
    else:  # a machine whose card Ray assigned and torch can use
        assert replica["device"].startswith("cuda") and "note" not in replica
    assert report["models"]["tiny-flux"]["load_time_seconds"] > 0
    # how the replica held and sped up its model, with the reasons for what it did not do
    assert replica["memory_plan"]["name"] in ("cpu", "declared") and replica["memory_plan"]["reason"]
    assert set(replica["speed"]["skipped"]) == {"compile", "quantize", "attention_backend", "cache"}


def test_three_images_same_model_distinct_seeds(tmp_path, monkeypatch, warm_tiny):
    code, outputs = run_cli(tmp_path, monkeypatch, "--models", "tiny-flux", "--image-count", "3", "--seed", "100",
                            *warm_tiny)
    assert code == 0 and outputs["images-completed"] == "3"
    report = read_json(tmp_path / "run/metadata/generation-report.json")
    assert [i["seed"] for i in report["images"]] == [100, 101, 102]
    assert json.loads(outputs["models-used"]) == ["tiny-flux"] * 3
    pixels = [np.asarray(decode((tmp_path / f"run/images/generated-image-{i}.png").read_bytes())) for i in (1, 2, 3)]
    assert not np.array_equal(pixels[0], pixels[1]) and not np.array_equal(pixels[1], pixels[2])
    scores = json.loads(outputs["quality-scores"])
    assert int(outputs["primary-image-index"]) == int(np.argmax(scores))
    # three images of one model went through one batched pipeline call
    assert len({tuple(a["duration_seconds"] for a in i["attempts"]) for i in report["images"]}) == 1


def test_two_models_one_image_each(tmp_path, monkeypatch, warm_tiny):
    code, outputs = run_cli(tmp_path, monkeypatch, "--models", "tiny-flux,tiny-sd", "--image-count", "1", *warm_tiny)
    assert code == 0
    assert outputs["images-completed"] == "2"
    assert json.loads(outputs["models-used"]) == ["tiny-flux", "tiny-sd"]
    report = read_json(tmp_path / "run/metadata/generation-report.json")
    assert report["model_comparison"]["models_tested"] == ["tiny-flux", "tiny-sd"]
    assert set(report["models"]) == {"tiny-flux", "tiny-sd"}
    assert (tmp_path / "run/metadata/model-comparison.md").read_text().count("| tiny-") >= 2
