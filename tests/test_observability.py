"""Progress output, the report's metrics, Prometheus metrics through Ray, and the run history."""

from __future__ import annotations

import json
import time
import urllib.request

import pytest

from cluster.entrypoints.cli import main
from cluster.observability.history import MIN_RUNS_FOR_RANKING, History
from cluster.observability.progress import ProgressState
from cluster.pipeline.run import run_generation
from models.prompt_analysis import analyze_prompt
from models.selection import select_models
from tests.conftest import SESSION_INFO
from tests.helpers import generated, make_request, outcome_for, quick_limits, read_json, scripted_registry


def test_progress_state_counts_per_model_and_estimates():
    state = ProgressState()
    events = [
        {"event": "run_started", "planned": {"a": 3, "b": 1}},
        {"event": "model_loading", "model": "a"},
        {"event": "model_loaded", "model": "a"},
        {"event": "call_started", "model": "a", "images": 2},
        {"event": "image_done", "model": "a", "seconds": 1.0},
        {"event": "call_failed", "model": "b", "indices": [3]},
        {"event": "image_moved", "index": 3, "from_model": "b", "to_model": "a"},
    ]
    for event in events:
        state.apply(event)
    a, b = state.models["a"], state.models["b"]
    assert (a.total, a.done, a.running, a.state) == (4, 1, 1, "ready")
    assert b.total == 0
    state.started = time.monotonic() - 6.0  # one image done in 6 s, three to go
    assert state.eta_seconds("a") == pytest.approx(18.0, abs=0.5)
    assert state.eta_seconds("b") == 0.0


def test_progress_counts_a_batchs_entries():
    state = ProgressState()
    for event in [{"event": "batch_started", "entries": 4, "to_run": 3, "skipped": 1},
                  {"event": "entry_invalid", "entry": "x"},
                  {"event": "run_started", "entry": "a", "planned": {"m": 1}},
                  {"event": "run_finished", "entry": "a", "status": "completed"},
                  {"event": "entry_finished", "entry": "a", "status": "completed"}]:
        state.apply(event)
    assert state.entries == {"total": 4, "done": 1, "failed": 1, "skipped": 1}
    assert state.finished is None  # an entry's run finishing does not end the batch's display


@pytest.mark.usefixtures("ray_session")
def test_json_mode_prints_machine_readable_events(tmp_path, capsys):
    registry = scripted_registry(tmp_path, {"local": {"script": {"latency": 0.05}}})
    code = main(["generate", "--image-prompt", "a fox", "--folder-name", "out", "--models", "local",
                 "--image-count", "2", "--config", str(registry.path), "--json"])
    assert code == 0
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    kinds = [line["event"] for line in lines]
    assert kinds[0] == "run_started" and kinds[-1] == "summary"
    assert kinds.count("image_done") == 2 and "run_finished" in kinds
    assert lines[-1]["outputs"]["images-completed"] == "2"


@pytest.mark.usefixtures("ray_session")
def test_plain_lines_without_a_tty(tmp_path, capsys):
    registry = scripted_registry(tmp_path, {"local": {"script": {"latency": 0.05}}})
    assert main(["generate", "--image-prompt", "a fox", "--folder-name", "out", "--models", "local",
                 "--config", str(registry.path)]) == 0
    err = capsys.readouterr().err.splitlines()
    assert any(line.startswith("[multi-image] image_done index=0 model=local") for line in err)
    assert all(line.startswith("[multi-image] ") for line in err)


@pytest.mark.usefixtures("ray_session")
def test_metrics_in_the_report_and_in_prometheus(tmp_path):
    registry = scripted_registry(tmp_path, {
        "metric-model": {"script": {"latency": 0.05, "fail_calls": [2], "fail_code": "IMG_023"}},
    })
    request = make_request(registry, tmp_path, models="metric-model", image_count=3, max_parallel=1)
    run_generation(request, registry, quick_limits())
    metrics = read_json(tmp_path / "out/metadata/generation-report.json")["metrics"]
    generation = metrics["generation_metrics"]
    assert (generation["total_images_requested"], generation["successful_generations"],
            generation["failed_generations"]) == (3, 2, 1)
    assert generation["model_success_rates"] == {"metric-model": pytest.approx(2 / 3, abs=1e-3)}
    assert generation["error_codes"] == {"IMG_023": 1}
    assert set(metrics) == {"generation_metrics", "performance_metrics", "quality_metrics"}
    assert metrics["performance_metrics"]["generation_calls"] == 3
    scores = [i["quality_score"] for i in read_json(tmp_path / "out/metadata/generation-report.json")["images"]]
    assert len(scores) == 2
    assert metrics["quality_metrics"]["average_quality_scores_by_model"]["metric-model"] == pytest.approx(
        sum(scores) / 2, abs=1e-3)

    port = SESSION_INFO["context"].address_info["metrics_export_port"]

    def generated_count(body: str) -> float | None:
        lines = [line for line in body.splitlines()
                 if line.startswith("ray_kamui_images_generated_total{") and 'model="metric-model"' in line]
        return float(lines[0].rsplit(" ", 1)[1]) if lines else None

    deadline = time.monotonic() + 30
    body = ""
    while time.monotonic() < deadline:  # exported once a second: wait for the last export
        body = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
        if generated_count(body) == 2.0 and 'code="IMG_023"' in body:
            break
        time.sleep(1)
    assert generated_count(body) == 2.0
    failed_lines = [l for l in body.splitlines() if l.startswith("ray_kamui_images_failed_total{")
                    and 'code="IMG_023"' in l and 'model="metric-model"' in l]
    assert [float(l.rsplit(" ", 1)[1]) for l in failed_lines] == [1.0]
    assert "ray_kamui_generation_seconds_bucket" in body and "ray_kamui_calls_in_flight" in body


def test_history_records_and_summarises(registry, tmp_path):
    request = make_request(registry, tmp_path, models="tiny-flux,tiny-sd")
    history = History(tmp_path / "h.sqlite")
    flux_scores = []
    for seed in range(3):
        outcome = outcome_for(request, [generated(0, "tiny-flux", seed), generated(1, "tiny-sd", seed)])
        flux_scores.append(outcome.images[0].quality.overall)
        history.record(outcome)
    assert len(set(flux_scores)) == 3  # distinct per run, so the mean below is a real average
    summary = history.summary()
    row = summary["tiny-flux (random weights)"]
    assert (row["runs"], row["images"], row["failed"], row["success_rate"]) == (3, 3, 0, 1.0)
    assert row["mean_quality"] == pytest.approx(sum(flux_scores) / 3, abs=1e-4)
    assert row["seconds_per_image"] == pytest.approx(0.5)
    assert history.score("tiny-flux") is None  # random-weight runs never rank real models


def test_history_moves_the_smart_choice(registry, tmp_path):
    # Both models make the same image (same quality): the failed attempts are the only difference.
    history = History(tmp_path / "h.sqlite")
    for model in ("photo-flux", "imagen4-ultra"):
        request = make_request(registry, tmp_path, models=model)
        for _ in range(MIN_RUNS_FOR_RANKING):
            image = generated(0, model, 1)
            image.weights = "real"
            outcome = outcome_for(request, [image])
            if model == "imagen4-ultra":  # a poor record: every second attempt failed
                from cluster.work import Attempt

                image.attempts = [Attempt(model, "r", 1.0, "IMG_008"), Attempt(model, "r", 1.0)]
            history.record(outcome)
    assert history.score("photo-flux") == pytest.approx(2 * history.score("imagen4-ultra"))
    available = [registry.get("imagen4-ultra"), registry.get("photo-flux")]
    realism = analyze_prompt("a photo of a bridge at night")
    assert select_models(realism, registry, available, 1).models == ("imagen4-ultra",)
    assert select_models(realism, registry, available, 1, history.score).models == ("photo-flux",)


@pytest.mark.usefixtures("ray_session")
def test_history_labels_a_model_that_only_failed_by_its_weights(tmp_path):
    """A random-weight model, from the run's own --config, whose every run failed."""
    models = scripted_registry(tmp_path, {"broken": {"script": {"fail_calls": list(range(1, 20)), "fail_code": "IMG_008"}}})
    assert models.get("broken").weights == "random"
    history = History(tmp_path / "h.sqlite")
    for seed in range(MIN_RUNS_FOR_RANKING):
        request = make_request(models, tmp_path, models="broken", seed=seed, folder_name=f"run-{seed}")
        result = run_generation(request, models, quick_limits(max_attempts=1), history=history)
        assert not result.outcome.images
    summary = history.summary()
    assert set(summary) == {"broken (random weights)"}
    row = summary["broken (random weights)"]
    assert (row["weights"], row["runs"], row["images"], row["failed"], row["success_rate"]) == ("random", 3, 0, 3, 0.0)


def test_history_command_prints_a_table(registry, tmp_path, capsys):
    db = tmp_path / "h.sqlite"
    request = make_request(registry, tmp_path, models="tiny-flux")
    History(db).record(outcome_for(request, [generated(0, "tiny-flux", 1), generated(1, "tiny-flux", 2)]))
    assert main(["history", "--history-db", str(db)]) == 0
    out = capsys.readouterr().out
    assert "tiny-flux (random weights)" in out and "100%" in out
    assert main(["history", "--history-db", str(db), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["models"]["tiny-flux (random weights)"]["images"] == 2
