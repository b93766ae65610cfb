"""The scheduler's rules, each observed through real Ray actors running scripted models.

The scripted backend stands in only for a model's timing and failures; the actors,
placement groups, scheduler, scoring and writer are the product's.
"""

from __future__ import annotations

import time

import pytest

from cluster.errors import ImageGenError
from cluster.pipeline.run import run_generation
from tests.helpers import make_request, quick_limits, read_json, scripted_registry
from tests.scripted_backend import max_overlap, read_log

pytestmark = pytest.mark.usefixtures("ray_session")


def starts(tmp_path, model=None):
    return [e for e in read_log(tmp_path / "calls.jsonl") if e["event"] == "start" and (model is None or e["model"] == model)]


def test_in_flight_calls_never_exceed_max_parallel(tmp_path):
    registry = scripted_registry(tmp_path, {
        "api-a": {"remote": True, "rate_limit": {"concurrent_limit": 8}, "script": {"latency": 0.4}},
        "api-b": {"remote": True, "rate_limit": {"concurrent_limit": 8}, "script": {"latency": 0.4}},
    })
    request = make_request(registry, tmp_path, models="api-a,api-b", image_count=5, max_parallel=3)
    result = run_generation(request, registry, quick_limits())
    assert len(result.outcome.images) == 10
    assert max_overlap(read_log(tmp_path / "calls.jsonl")) == 3  # reached, never exceeded


def test_per_model_concurrent_limit_holds_across_the_run(tmp_path):
    registry = scripted_registry(tmp_path, {
        "api": {"remote": True, "rate_limit": {"concurrent_limit": 2}, "script": {"latency": 0.3}},
    })
    request = make_request(registry, tmp_path, models="api", image_count=6, max_parallel=6)
    run_generation(request, registry, quick_limits())
    assert max_overlap(read_log(tmp_path / "calls.jsonl")) == 2


def test_requests_per_minute_over_a_window(tmp_path):
    registry = scripted_registry(tmp_path, {
        "api": {"remote": True, "rate_limit": {"requests_per_minute": 2, "concurrent_limit": 5},
                "script": {"latency": 0.05}},
    })
    request = make_request(registry, tmp_path, models="api", image_count=6, max_parallel=5)
    run_generation(request, registry, quick_limits(rate_window_seconds=1.0))
    times = sorted(e["t"] for e in starts(tmp_path))
    assert len(times) == 6
    # no window of 1 s holds more than 2 starts; so 6 calls span at least 2 full windows
    for i in range(len(times) - 2):
        assert times[i + 2] - times[i] >= 0.95
    assert times[-1] - times[0] >= 1.9


def test_batching_makes_fewer_calls_than_images(tmp_path):
    registry = scripted_registry(tmp_path, {"local": {"max_batch_size": 4, "script": {"latency": 0.1}}})
    request = make_request(registry, tmp_path, models="local", image_count=8, max_parallel=1)
    result = run_generation(request, registry, quick_limits())
    calls = starts(tmp_path)
    assert len(result.outcome.images) == 8
    assert [c["n"] for c in calls] == [4, 4]


def test_batches_are_split_evenly_over_replicas(tmp_path):
    registry = scripted_registry(tmp_path, {"local": {"max_batch_size": 4, "script": {"latency": 0.5}}})
    request = make_request(registry, tmp_path, models="local", image_count=10, max_parallel=3)
    result = run_generation(request, registry, quick_limits())
    calls = starts(tmp_path)
    assert sorted(c["n"] for c in calls) == [3, 3, 4]  # whichever replica comes up first
    report = read_json(tmp_path / "out/metadata/generation-report.json")
    # up to 3 replicas (fewer when an earlier run's placement groups are still being freed)
    assert 1 <= len(report["models"]["local"]["replicas"]) <= 3
    assert len(result.outcome.images) == 10


def test_timeout_cancels_that_image_and_the_run_goes_on(tmp_path):
    registry = scripted_registry(tmp_path, {
        "slow": {"remote": True, "script": {"latency": 0.05, "hang": 30, "hang_calls": [1], "ignore_budget": True}},
    })
    request = make_request(registry, tmp_path, models="slow", image_count=3, max_parallel=3)
    started = time.monotonic()
    result = run_generation(request, registry, quick_limits(timeout_per_image=1.0, max_attempts=1))
    assert time.monotonic() - started < 15
    assert len(result.outcome.images) == 2
    assert [f.code for f in result.outcome.failures] == ["IMG_003"]
    assert result.exit_code == 0
    assert any(e["event"] == "cancelled" for e in read_log(tmp_path / "calls.jsonl"))


def test_a_call_that_ignores_the_cancel_gets_its_replica_restarted(tmp_path):
    registry = scripted_registry(tmp_path, {
        "stuck": {"script": {"latency": 0.05, "hang": 60, "hang_calls": [1], "ignore_cancel": True}},
    })
    request = make_request(registry, tmp_path, models="stuck", image_count=2, max_parallel=1)
    started = time.monotonic()
    result = run_generation(request, registry, quick_limits(timeout_per_image=1.0, cancel_grace=1.0, max_attempts=1))
    assert time.monotonic() - started < 30
    assert [f.code for f in result.outcome.failures] == ["IMG_003"]
    assert len(result.outcome.images) == 1  # the restarted replica made the other image
    report = read_json(tmp_path / "out/metadata/generation-report.json")
    assert report["models"]["stuck"]["replicas"][0]["restarts"] >= 1


def test_total_timeout_stops_cleanly_with_what_it_has(tmp_path):
    # the total limit counts from the start of the run, replica start-up included
    registry = scripted_registry(tmp_path, {"local": {"script": {"latency": 1.5}}})
    request = make_request(registry, tmp_path, models="local", image_count=6, max_parallel=1)
    result = run_generation(request, registry, quick_limits(total_workflow_timeout=8.0, reduce_count_at=1.0))
    made = len(result.outcome.images)
    assert 1 <= made < 6
    assert len(result.outcome.failures) == 6 - made
    assert all(f.code == "IMG_003" for f in result.outcome.failures)
    report = read_json(tmp_path / "out/metadata/generation-report.json")
    assert report["generation_summary"]["stopped"] == "total_timeout"
    assert report["generation_summary"]["status"] == "partial"
    assert any(d["strategy"] == "reduce_image_count" for d in report["degradations"])


def test_a_run_the_total_timeout_stops_before_it_starts_says_img_003_and_what_to_raise(tmp_path, capsys):
    # the limit passed while the run was still getting ready (Ray starting, models loading)
    from cluster.entrypoints.cli import _print_summary

    registry = scripted_registry(tmp_path, {"local": {"script": {"latency": 0.1}}})
    request = make_request(registry, tmp_path, models="local", image_count=3)
    result = run_generation(request, registry, quick_limits(total_workflow_timeout=0.001))
    assert result.exit_code == 1 and result.outcome.error.code == "IMG_003"
    assert "--total-timeout" in result.outcome.error.message
    report = read_json(tmp_path / "out/metadata/generation-report.json")
    assert report["generation_summary"]["error"]["code"] == "IMG_003"
    assert [f["error_code"] for f in report["failed_images"]] == ["IMG_003"] * 3
    _print_summary(result)
    assert "failed: 0/3" in capsys.readouterr().out


def test_close_to_the_total_limit_waiting_images_are_dropped(tmp_path):
    registry = scripted_registry(tmp_path, {"local": {"script": {"latency": 1.0}}})
    request = make_request(registry, tmp_path, models="local", image_count=8, max_parallel=1)
    result = run_generation(request, registry, quick_limits(total_workflow_timeout=30.0, reduce_count_at=0.15))
    made = len(result.outcome.images)
    assert 1 <= made < 8
    dropped = [f for f in result.outcome.failures if f.message.startswith("dropped")]
    assert dropped and all(f.code == "IMG_003" for f in dropped)
    report = read_json(tmp_path / "out/metadata/generation-report.json")
    assert report["generation_summary"]["stopped"] is None  # it finished well before the limit
    (degradation,) = [d for d in report["degradations"] if d["strategy"] == "reduce_image_count"]
    assert degradation["images_dropped"] == len(dropped)


def test_disk_space_limit_is_checked_before_anything_runs(tmp_path):
    registry = scripted_registry(tmp_path, {"local": {"width": 1024, "height": 1024}})
    request = make_request(registry, tmp_path, models="local", image_count=10)
    with pytest.raises(ImageGenError) as info:
        run_generation(request, registry, quick_limits(disk_space_limit="5MB"))
    assert info.value.code == "IMG_005"
    assert not (tmp_path / "out").exists() and not (tmp_path / "calls.jsonl").exists()


def test_sequential_explores_variations_then_keeps_the_best(tmp_path):
    registry = scripted_registry(tmp_path, {
        "local": {"script": {"latency": 0.05, "sharp_variations": ["lighting"]}},
    })
    request = make_request(registry, tmp_path, models="local", image_count=6, generation_strategy="sequential",
                           max_parallel=3)
    result = run_generation(request, registry, quick_limits())
    variations = [f.image.task.prompt_variation for f in result.outcome.images]
    assert variations == ["original", "detailed", "lighting", "vivid", "lighting", "lighting"]
    assert max_overlap(read_log(tmp_path / "calls.jsonl")) == 1  # one image at a time
    prompts = [c["prompts"][0] for c in starts(tmp_path)]
    assert prompts[0] == "a red fox" and prompts[2].startswith("a red fox, dramatic professional lighting")


def test_two_models_run_side_by_side(tmp_path):
    # long enough calls that the two replicas' loads, a second or two apart on a busy machine, still overlap
    registry = scripted_registry(tmp_path, {
        "one": {"script": {"latency": 2.0}},
        "two": {"script": {"latency": 2.0}},
    })
    request = make_request(registry, tmp_path, models="one,two", image_count=1, generation_strategy="parallel")
    run_generation(request, registry, quick_limits())
    assert max_overlap(read_log(tmp_path / "calls.jsonl")) == 2


def test_an_unplaceable_model_fails_fast_with_img_010(tmp_path):
    registry = scripted_registry(tmp_path, {"huge": {"gpus": 1, "gpu_memory_gb": 80}})
    request = make_request(registry, tmp_path, models="huge")
    started = time.monotonic()
    with pytest.raises(ImageGenError) as refused:  # refused before anything is written
        run_generation(request, registry, quick_limits())
    assert time.monotonic() - started < 10
    assert refused.value.code == "IMG_010" and refused.value.exit_status == 1
    assert "gpu_memory_gb=80" in refused.value.message and "24" in refused.value.message
    assert not (tmp_path / "out").exists()
