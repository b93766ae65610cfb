"""Google image models through the real google-genai client, against a loopback Vertex.

Error handling follows the design card's table; the API key never leaks.
"""

from __future__ import annotations

import io
import json

import pytest
import yaml

from actors.core.google_errors import classify, error_reasons
from actors.core.google_generator import aspect_ratio, PREDICT_RATIOS
from cluster.entrypoints.cli import main
from cluster.output.github_output import parse_outputs
from cluster.pipeline.run import run_generation
from models.registry import load_registry
from PIL import Image
from tests.conftest import API_KEY
from tests.fake_vertex import png_bytes
from tests.helpers import make_request, quick_limits, read_json

pytestmark = pytest.mark.usefixtures("ray_session")


def assert_no_key_anywhere(tmp_path, *texts: str) -> None:
    for text in texts:
        assert API_KEY not in text
    for path in tmp_path.rglob("*"):
        if path.is_file():
            assert API_KEY.encode() not in path.read_bytes(), f"API key written to {path}"


def test_imagen_predict_makes_a_batch_in_one_request(vertex, tmp_path, registry, capsys):
    request = make_request(registry, tmp_path, models="imagen4-fast", image_count=3, width=1024, height=576)
    result = run_generation(request, registry, quick_limits())
    assert len(result.outcome.images) == 3 and result.exit_code == 0
    (call,) = vertex.of("imagen-4.0-fast-generate-001")
    assert call["path"] == "/v1beta1/publishers/google/models/imagen-4.0-fast-generate-001:predict"
    assert call["body"]["instances"][0]["prompt"] == "a red fox"
    assert call["body"]["parameters"]["sampleCount"] == 3
    assert call["body"]["parameters"]["aspectRatio"] == "16:9"
    assert call["api_key"] == API_KEY  # sent as a header, and nowhere else
    report = read_json(tmp_path / "out/metadata/generation-report.json")
    assert [i["model_used"] for i in report["images"]] == ["imagen4-fast"] * 3
    assert report["images"][0]["backend"]["api_model"] == "imagen-4.0-fast-generate-001"
    assert report["images"][0]["seed"] is None  # the watermark stays on, so no seed is sent
    out = capsys.readouterr()
    assert_no_key_anywhere(tmp_path, out.out, out.err, repr(result.outcome))


def test_imagen_with_a_seed_records_the_seed_that_made_each_image(vertex, tmp_path):
    # With the watermark off Imagen takes one seed per request; each image must be reproducible from
    # the seed it records, so each is its own request sent with that seed.
    config = yaml.safe_load(open(load_registry().path))
    entry = config["models"]["imagen4-fast"]
    entry["call_args"] = {"add_watermark": False}
    path = tmp_path / "models.yaml"
    path.write_text(yaml.safe_dump({"models": {"imagen4-fast": entry}}))
    registry = load_registry(path)
    request = make_request(registry, tmp_path, models="imagen4-fast", image_count=3, seed=40)
    result = run_generation(request, registry, quick_limits())
    assert result.exit_code == 0 and len(result.outcome.images) == 3
    calls = vertex.of("imagen-4.0-fast-generate-001")
    assert sorted((c["body"]["parameters"]["seed"], c["body"]["parameters"]["sampleCount"]) for c in calls) == [
        (40, 1), (41, 1), (42, 1)]
    assert all(c["body"]["parameters"]["addWatermark"] is False for c in calls)
    report = read_json(tmp_path / "out/metadata/generation-report.json")
    assert sorted(i["seed"] for i in report["images"]) == [40, 41, 42]
    for final in result.outcome.images:
        # The loopback server paints a colour from the seed it was sent: the recorded seed made it.
        pixel = Image.open(io.BytesIO(final.image.png)).convert("RGB").getpixel((1, 0))
        expected = Image.open(io.BytesIO(png_bytes(final.image.task.seed))).convert("RGB").getpixel((1, 0))
        assert pixel == expected


def test_gemini_generate_content_one_image_per_request(vertex, tmp_path, registry):
    request = make_request(registry, tmp_path, models="gemini-flash-image", image_count=2, seed=40)
    result = run_generation(request, registry, quick_limits())
    assert len(result.outcome.images) == 2
    calls = vertex.of("gemini-2.5-flash-image")
    assert [c["method"] for c in calls] == ["generateContent"] * 2
    assert all(c["body"]["generationConfig"]["responseModalities"] == ["IMAGE"] for c in calls)
    assert sorted(c["body"]["generationConfig"]["seed"] for c in calls) == [40, 41]


def test_rate_limited_calls_back_off_then_succeed(vertex, tmp_path, registry):
    vertex.modes["imagen-4.0-fast-generate-001"] = "429:2"
    request = make_request(registry, tmp_path, models="imagen4-fast")
    result = run_generation(request, registry, quick_limits(backoff_base=0.3, backoff_max=1.0, max_attempts=4))
    assert len(result.outcome.images) == 1
    attempts = result.outcome.images[0].image.attempts
    assert [a.code for a in attempts] == ["IMG_006", "IMG_006", None]
    times = [c["t"] for c in vertex.of("imagen-4.0-fast-generate-001")]
    assert times[1] - times[0] >= 0.15 and times[2] - times[1] >= 0.3  # equal jitter: >= half the backoff
    report = read_json(tmp_path / "out/metadata/generation-report.json")
    assert [a["error_code"] for a in report["images"][0]["attempts"]] == ["IMG_006", "IMG_006", None]


@pytest.mark.parametrize("mode", ["401", "403", "api_key_invalid"])
def test_refused_credentials_fail_the_run_fast_without_retry(vertex, tmp_path, monkeypatch, mode, capsys):
    vertex.modes["imagen-4.0-fast-generate-001"] = mode
    output = tmp_path / "gh"
    monkeypatch.setenv("GITHUB_OUTPUT", str(output))
    code = main(["generate", "--image-prompt", "a fox", "--folder-name", "out", "--models", "imagen4-fast",
                 "--image-count", "2"])
    err = capsys.readouterr().err
    assert code == 1
    assert "error IMG_007" in err
    assert len(vertex.of("imagen-4.0-fast-generate-001")) == 1  # no retry, no fallback
    assert parse_outputs(output.read_text())["image-completed"] == "false"
    assert_no_key_anywhere(tmp_path, err)


def test_no_credentials_is_img_007_before_any_request(fake_vertex_server, tmp_path, monkeypatch, capsys):
    fake_vertex_server.reset()
    monkeypatch.setenv("GOOGLE_VERTEX_BASE_URL", fake_vertex_server.base_url)
    code = main(["generate", "--image-prompt", "a fox", "--folder-name", "out", "--models", "imagen4-fast"])
    assert code == 1 and "error IMG_007" in capsys.readouterr().err
    assert fake_vertex_server.requests == [] and not (tmp_path / "out").exists()


def test_retired_model_is_img_002_and_moves_to_the_fallback(vertex, tmp_path, registry):
    vertex.modes["imagen-3.0-generate-002"] = "404"
    request = make_request(registry, tmp_path, models="imagen3", image_count=2)
    result = run_generation(request, registry, quick_limits())
    assert [f.model for f in result.outcome.images] == ["imagen4-fast", "imagen4-fast"]
    report = read_json(tmp_path / "out/metadata/generation-report.json")
    assert report["images"][0]["attempts"][0]["error_code"] == "IMG_002"
    assert any(d["strategy"] == "fallback_model" and d["to_model"] == "imagen4-fast" for d in report["degradations"])
    assert len(vertex.of("imagen-3.0-generate-002")) == 1  # the model is gone: no second call to it


def test_filtered_images_fail_with_their_reason(vertex, tmp_path, registry):
    vertex.modes["imagen-4.0-fast-generate-001"] = "partial_filtered"
    request = make_request(registry, tmp_path, models="imagen4-fast", image_count=2)
    result = run_generation(request, registry, quick_limits())
    assert len(result.outcome.images) == 1
    (failure,) = result.outcome.failures
    assert failure.code == "IMG_023" and "filtered by the safety policy" in failure.message
    assert len(vertex.requests) == 1  # a filtered prompt is not sent to another model


def test_gemini_safety_block_is_img_023(vertex, tmp_path, registry):
    vertex.modes["gemini-2.5-flash-image"] = "filtered"
    request = make_request(registry, tmp_path, models="gemini-flash-image")
    result = run_generation(request, registry, quick_limits())
    assert result.exit_code == 1 and result.outcome.failures[0].code == "IMG_023"
    assert "IMAGE_SAFETY" in result.outcome.failures[0].message


def test_a_request_hanging_past_timeout_per_image_is_img_003(vertex, tmp_path, registry):
    vertex.modes["gemini-2.5-flash-image"] = "hang:6"
    request = make_request(registry, tmp_path, models="gemini-flash-image", image_count=2, max_parallel=2)
    result = run_generation(request, registry, quick_limits(timeout_per_image=1.5, max_attempts=1))
    assert len(result.outcome.images) == 1
    assert [f.code for f in result.outcome.failures] == ["IMG_003"]


def test_network_timeouts_retry_with_a_shorter_timeout_then_one_image(vertex, tmp_path):
    config = yaml.safe_load(open(load_registry().path))
    entry = config["models"]["imagen4-fast"]
    entry["request_timeout_s"] = 1.0
    path = tmp_path / "models.yaml"
    path.write_text(yaml.safe_dump({"models": {"imagen4-fast": entry}}))
    registry = load_registry(path)
    vertex.modes["imagen-4.0-fast-generate-001"] = "slow_first:3"
    request = make_request(registry, tmp_path, models="imagen4-fast", image_count=2)
    result = run_generation(request, registry, quick_limits())
    assert len(result.outcome.images) == 2
    assert [a.code for a in result.outcome.images[0].image.attempts] == ["IMG_008", None]
    counts = [c["body"]["parameters"]["sampleCount"] for c in vertex.of("imagen-4.0-fast-generate-001")]
    assert counts == [2, 1, 1]  # the batch, then each image alone


def test_mixed_remote_and_local_models_in_one_run(vertex, tmp_path, monkeypatch, tiny_models):
    output = tmp_path / "gh"
    monkeypatch.setenv("GITHUB_OUTPUT", str(output))
    code = main(["generate", "--image-prompt", "a fox", "--folder-name", "out", "--models", "imagen4-fast,tiny-flux"])
    assert code == 0
    outputs = parse_outputs(output.read_text())
    assert json.loads(outputs["models-used"]) == ["imagen4-fast", "tiny-flux"]
    folder = tmp_path / "out"
    for name in ("images/generated-image.png", "images/generated-image-1.png", "images/generated-image-2.png",
                 "metadata/generation-report.json", "metadata/quality-analysis.json", "metadata/model-comparison.md",
                 "google-image-url.txt", "image-urls.json"):
        assert (folder / name).is_file(), name
    assert_no_key_anywhere(tmp_path, output.read_text())


# --- pure pieces -------------------------------------------------------------------------


def test_aspect_ratio_picks_the_closest_supported():
    assert aspect_ratio(1024, 1024, PREDICT_RATIOS) == "1:1"
    assert aspect_ratio(1920, 1080, PREDICT_RATIOS) == "16:9"
    assert aspect_ratio(768, 1024, PREDICT_RATIOS) == "3:4"
    assert aspect_ratio(512, 2048, PREDICT_RATIOS) == "9:16"


def test_error_classification_redacts_the_key():
    from google.genai import errors

    body = {"error": {"code": 400, "message": f"API key not valid: {API_KEY}", "status": "INVALID_ARGUMENT",
                      "details": [{"reason": "API_KEY_INVALID"}]}}
    exc = errors.ClientError(400, body)
    assert error_reasons(exc.details) == {"API_KEY_INVALID"}
    error = classify(exc, "imagen4-fast", lambda t: t.replace(API_KEY, "***"))
    assert error.code == "IMG_007" and API_KEY not in error.message and "***" in error.message
    assert classify(errors.ServerError(503, {"error": {"code": 503, "status": "UNAVAILABLE"}}), "m", str).code == "IMG_008"
    assert classify(TimeoutError("read"), "m", str).code == "IMG_008"
    assert classify(TimeoutError("read"), "m", str, budget_hit=True).code == "IMG_003"
