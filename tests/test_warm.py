"""The warm cluster: resident replicas shared by runs, keep-alive, concurrency, release;
and batch manifests: validation per entry, resumption."""

from __future__ import annotations

import json
import threading
import time

import pytest
import ray

from cluster.entrypoints.batch import build_entries, finished_report, run_batch, summary_table
from cluster.observability.events import Events
from cluster.engine.resident import actor_handle, registry_actor
from cluster.pipeline.run import run_generation
from cluster.entrypoints.warm import bring_down, bring_up, status
from models.scorers import load_scoring
from tests.helpers import make_request, quick_limits, read_json, scripted_registry
from tests.scripted_backend import max_overlap, read_log

pytestmark = pytest.mark.usefixtures("ray_session")


@pytest.fixture
def clean_cluster():
    yield
    bring_down()


def resident_names() -> list[str]:
    return [e["name"] for e in ray.get(registry_actor().entries.remote())]


def test_up_then_runs_find_the_models_warm(tmp_path, clean_cluster):
    registry = scripted_registry(tmp_path, {"local": {"script": {"latency": 0.1, "load_seconds": 1.0}}})
    free_before = ray.cluster_resources()["GPU"]  # all of it, once nothing holds any
    report = bring_up(registry, ["local"], load_scoring(), "none", quick_limits())
    assert report.models["local"]["replicas"] == 1 and report.models["local"]["load_seconds"] >= 1.0
    assert ray.available_resources().get("GPU", 0) < free_before  # the warm replica holds its share
    pids = []
    for name in ("first", "second"):
        request = make_request(registry, tmp_path, models="local", folder_name=name)
        result = run_generation(request, registry, quick_limits(), resident=True)
        assert result.exit_code == 0
        model = read_json(tmp_path / name / "metadata/generation-report.json")["models"]["local"]
        assert model["warm"] is True and model["load_time_seconds"] == 0.0
        pids.append({e["pid"] for e in read_log(tmp_path / "calls.jsonl") if e["event"] == "start"})
    assert len(pids[1]) == 1 and pids[0] == pids[1]  # the same replica served both runs
    state = status()
    (row,) = [r for r in state["resident"] if r["model"] == "local"]
    assert row["loaded"] and row["calls"] == 2 and row["queued"] == 0
    released = bring_down()
    assert released and not resident_names()
    deadline = time.monotonic() + 20
    while ray.available_resources().get("GPU", 0) < free_before and time.monotonic() < deadline:
        time.sleep(0.2)
    assert ray.available_resources().get("GPU", 0) == free_before  # down freed everything


def test_models_not_resident_are_loaded_on_demand_and_stay(tmp_path, clean_cluster):
    registry = scripted_registry(tmp_path, {"local": {"script": {"latency": 0.05}}})
    request = make_request(registry, tmp_path, models="local", folder_name="one")
    run_generation(request, registry, quick_limits(), resident=True)
    assert read_json(tmp_path / "one/metadata/generation-report.json")["models"]["local"]["warm"] is False
    assert any(n.startswith("model/local/") for n in resident_names())  # still there after the run
    request = make_request(registry, tmp_path, models="local", folder_name="two")
    run_generation(request, registry, quick_limits(), resident=True)
    assert read_json(tmp_path / "two/metadata/generation-report.json")["models"]["local"]["warm"] is True


def test_idle_keep_alive_releases_and_the_next_run_reloads(tmp_path, clean_cluster):
    registry = scripted_registry(tmp_path, {"local": {"script": {"latency": 0.05}}})
    free_before = ray.cluster_resources()["GPU"]  # all of it, once nothing holds any
    bring_up(registry, ["local"], load_scoring(), "none", quick_limits(), keep_alive_s=1.5)
    assert resident_names()
    deadline = time.monotonic() + 30
    while resident_names() and time.monotonic() < deadline:
        time.sleep(0.5)
    assert not resident_names()  # retired itself, and its placement group with it
    while ray.available_resources().get("GPU", 0) < free_before and time.monotonic() < deadline:
        time.sleep(0.2)
    assert ray.available_resources().get("GPU", 0) == free_before
    request = make_request(registry, tmp_path, models="local", folder_name="after")
    assert run_generation(request, registry, quick_limits(), resident=True).exit_code == 0
    model = read_json(tmp_path / "after/metadata/generation-report.json")["models"]["local"]
    assert model["warm"] is False  # came back on the next request


def test_two_concurrent_runs_share_one_replica_safely(tmp_path, clean_cluster):
    registry = scripted_registry(tmp_path, {"local": {"script": {"latency": 0.4}}})
    bring_up(registry, ["local"], load_scoring(), "none", quick_limits())
    results = {}

    def run(name: str) -> None:
        request = make_request(registry, tmp_path, models="local", folder_name=name, image_count=3, max_parallel=3)
        results[name] = run_generation(request, registry, quick_limits(), resident=True)

    threads = [threading.Thread(target=run, args=(n,)) for n in ("job-a", "job-b")]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert all(results[n].exit_code == 0 and len(results[n].outcome.images) == 3 for n in ("job-a", "job-b"))
    log = read_log(tmp_path / "calls.jsonl")
    assert len({e["pid"] for e in log if e["event"] == "start"}) == 1
    assert max_overlap(log) == 1  # the replica's own limit holds across both runs


def project_groups() -> list[dict]:
    """Every live placement group of this project's resident replicas, as Ray sees them."""
    return [g for g in ray.util.placement_group_table().values()
            if g.get("name", "").startswith("model/") and g.get("state") != "REMOVED"]


def test_a_replica_dead_for_good_is_replaced_on_demand(tmp_path, clean_cluster):
    import os
    import signal

    registry = scripted_registry(tmp_path, {"local": {"script": {"latency": 0.05}}})
    limits = quick_limits(actor_max_restarts=0)  # one SIGKILL is more than its restarts allow
    bring_up(registry, ["local"], load_scoring(), "none", limits)
    (name,) = resident_names()
    os.kill(ray.get(actor_handle(name).pid.remote()), signal.SIGKILL)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            ray.get_actor(name, namespace="kamui-multi-image")
        except ValueError:
            break
        time.sleep(0.2)
    for folder in ("after-death", "again"):
        request = make_request(registry, tmp_path, models="local", folder_name=folder)
        result = run_generation(request, registry, limits, resident=True)
        assert result.exit_code == 0 and len(result.outcome.images) == 1, result.outcome.error
    # one group for the one live replica: the dead replica's group went with it
    (group,) = project_groups()
    assert [r["name"] for r in status()["resident"]] == resident_names() and len(resident_names()) == 1
    assert group["name"] == resident_names()[0]


def test_status_shows_a_group_no_replica_holds(tmp_path, clean_cluster):
    from ray.util.placement_group import placement_group, remove_placement_group

    stray = placement_group([{"CPU": 0.01}], name="model/ghost/0123456789/0", lifetime="detached")
    assert stray.wait(timeout_seconds=10)
    try:
        rows = status()["placement_groups"]
        (row,) = [r for r in rows if r["name"] == "model/ghost/0123456789/0"]
        assert row["held_by"] is None and row["state"] == "CREATED"
        assert bring_down() and not [g for g in project_groups() if g["name"] == "model/ghost/0123456789/0"]
    finally:
        try:
            remove_placement_group(stray)
        except Exception:  # noqa: BLE001 - removed by bring_down, as it should be
            pass


def test_the_clusters_keep_alive_and_replicas_outlive_a_retire(tmp_path, clean_cluster):
    registry = scripted_registry(tmp_path, {"local": {"script": {"latency": 0.05}}})
    limits = quick_limits()  # keep_alive_seconds 1800: what a run's own limits say
    bring_up(registry, ["local"], load_scoring(), "none", limits, replicas=2, keep_alive_s=3)
    assert len(resident_names()) == 2
    deadline = time.monotonic() + 40
    while resident_names() and time.monotonic() < deadline:
        time.sleep(0.5)
    assert not resident_names()
    request = make_request(registry, tmp_path, models="local", folder_name="reloaded", image_count=4, max_parallel=1)
    assert run_generation(request, registry, limits, resident=True).exit_code == 0
    rows = [r for r in status()["resident"] if r["model"] == "local"]
    assert len(rows) == 2 and {r["keep_alive_s"] for r in rows} == {3}


def write_manifest(tmp_path, entries, suffix=".jsonl"):
    path = tmp_path / f"jobs{suffix}"
    if suffix == ".jsonl":
        path.write_text("\n".join(json.dumps(e) for e in entries) + "\n")
    else:
        import yaml

        path.write_text(yaml.safe_dump({"entries": entries}))
    return path


def test_batch_with_one_invalid_entry(tmp_path, clean_cluster):
    registry = scripted_registry(tmp_path, {"local": {"script": {"latency": 0.05}, "max_batch_size": 4}})
    entries = [{"id": f"scene-{i}", "image-prompt": f"scene {i}", "models": "local", "image-count": 2}
               for i in range(5)]
    entries.insert(3, {"id": "broken", "image-prompt": "x", "models": "local", "image-count": 42})
    manifest = write_manifest(tmp_path, entries, ".yaml")
    parsed = build_entries(manifest, registry, {})
    assert [e.id for e in parsed] == ["scene-0", "scene-1", "scene-2", "broken", "scene-3", "scene-4"]
    assert parsed[3].error.code == "IMG_001"
    events = Events()
    results = run_batch(parsed, registry, quick_limits(), events=events, entries_at_once=3)
    assert [r.status for r in results] == ["completed"] * 3 + ["invalid"] + ["completed"] * 2
    assert results[3].codes == ["IMG_001"] and not results[3].ok
    for entry in [e for e in parsed if e.request]:
        folder = entry.request.folder_name
        assert folder == tmp_path / "jobs-out" / entry.id
        assert (folder / "images/generated-image.png").is_file() and (folder / "gallery.html").is_file()
    log = read_log(tmp_path / "calls.jsonl")
    assert len({e["pid"] for e in log if e["event"] == "start"}) == 1  # one warm replica served every entry
    table = summary_table(results)
    assert "5/6 entries succeeded" in table and "IMG_001" in table


def test_an_interrupted_batch_resumes_without_redoing_finished_entries(tmp_path, clean_cluster):
    registry = scripted_registry(tmp_path, {"local": {"script": {"latency": 0.4}}})
    entries = [{"id": f"e{i}", "image-prompt": f"prompt {i}", "models": "local"} for i in range(5)]
    manifest = write_manifest(tmp_path, entries)
    stop = threading.Event()
    events = Events()

    def stop_after_two(event):
        if event["event"] == "entry_finished" and len(events.of("entry_finished")) >= 2:
            stop.set()

    events.sinks.append(stop_after_two)
    first = run_batch(build_entries(manifest, registry, {}), registry, quick_limits(), events=events, stop=stop,
                      entries_at_once=1)
    done_first = [r.id for r in first if r.status == "completed"]
    assert 2 <= len(done_first) < 5 and any(r.status == "interrupted" for r in first)
    stamps = {i: (tmp_path / f"jobs-out/{i}/metadata/generation-report.json").stat().st_mtime_ns for i in done_first}
    calls_before = len([e for e in read_log(tmp_path / "calls.jsonl") if e["event"] == "start"])

    second = run_batch(build_entries(manifest, registry, {}), registry, quick_limits(), events=Events(),
                       entries_at_once=2)
    assert all(r.ok for r in second)
    assert [r.id for r in second if r.status == "skipped"] == done_first
    for entry_id, stamp in stamps.items():
        assert (tmp_path / f"jobs-out/{entry_id}/metadata/generation-report.json").stat().st_mtime_ns == stamp
    calls_after = len([e for e in read_log(tmp_path / "calls.jsonl") if e["event"] == "start"])
    assert calls_after - calls_before == 5 - len(done_first)  # only the unfinished entries ran


def test_an_entry_stopped_mid_run_resumes_its_images(tmp_path, clean_cluster):
    registry = scripted_registry(tmp_path, {"local": {"script": {"latency": 0.3}}})
    manifest = write_manifest(tmp_path, [{"id": "e0", "image-prompt": "a fox", "models": "local", "image-count": "5",
                                          "max-parallel": "1", "seed": "40"}])
    stop = threading.Event()
    events = Events()
    seen = []

    def stop_after_two(event):
        seen.append(event["event"])
        if seen.count("image_done") >= 2:
            stop.set()

    events.sinks.append(stop_after_two)
    (first,) = run_batch(build_entries(manifest, registry, {}), registry, quick_limits(), events=events, stop=stop)
    assert first.status == "interrupted"
    made = read_json(tmp_path / "jobs-out/e0/metadata/generation-report.json")["generation_summary"][
        "successful_generations"]
    (second,) = run_batch(build_entries(manifest, registry, {}), registry, quick_limits(), events=Events())
    report = read_json(tmp_path / "jobs-out/e0/metadata/generation-report.json")
    assert second.ok and report["generation_summary"]["successful_generations"] == 5
    assert report["resumed"]["images_kept"] == list(range(made)) and made >= 2
    assert [i["seed"] for i in report["images"]] == [40, 41, 42, 43, 44]


def test_a_changed_entry_is_not_taken_for_finished(tmp_path, registry):
    request = make_request(registry, tmp_path, models="tiny-flux", folder_name="x")
    assert finished_report(request) is None
    folder = tmp_path / "x" / "metadata"
    folder.mkdir(parents=True)
    (folder / "generation-report.json").write_text(json.dumps({
        "generation_summary": {"status": "completed"}, "images": [],
        "request": {"image_prompt": "another prompt"},
    }))
    assert finished_report(request) is None


@pytest.mark.parametrize("content,message", [
    ("", "non-empty list"),
    ("{not json", "manifest"),
    ('{"id": "a", "image-prompt": "x"}\n{"id": "a", "image-prompt": "y"}', "used twice"),
    ('{"id": "../evil", "image-prompt": "x"}', "must be letters"),
    ('{"id": "a", "image-prompt": "x", "folder-name": "same"}\n{"id": "b", "image-prompt": "y", "folder-name": "same"}',
     "share the folder"),
])
def test_bad_manifests_are_img_024(tmp_path, registry, content, message):
    from cluster.errors import ImageGenError

    path = tmp_path / "m.jsonl"
    path.write_text(content)
    with pytest.raises(ImageGenError) as info:
        build_entries(path, registry, {})
    assert info.value.code == "IMG_024" and message in info.value.message
