"""LoRA adapters through a run: refused requests write nothing, planning picks and plans for them,
two requests with different adapters share one warm replica without mixing, a batch manifest's
default look applies to every entry, and a PNG alone makes its image again."""

from __future__ import annotations

import json
import sqlite3
import threading

import pytest

from cluster.work import ImageTask
from tests.helpers import read_json


def cli(argv: list[str], capsys) -> tuple[int, str]:
    from cluster.entrypoints.cli import main

    code = main(argv)
    return code, capsys.readouterr().err


@pytest.mark.parametrize("extra, says", [
    (["--adapters", "no-such-style"], "adapter 'no-such-style' is not in 'adapters.yaml'"),
    (["--adapters", "tiny-style:strong"], "scale 'strong' of 'tiny-style' must be a number"),
    (["--adapters", "tiny-style", "--models", "tiny-sd"], "it fits tiny-flux models and 'tiny-sd' is a tiny-sd"),
    (["--adapters", "tiny-style", "--memory-plan", "fp8-storage"], "fp8-storage cannot take --adapters"),
    (["--adapters", "tiny-style", "--models", "auto"], "found no available model that --adapters tiny-style:1 fit"),
])
def test_a_request_whose_adapters_cannot_run_is_img_031_and_writes_nothing(tmp_path, capsys, extra, says):
    argv = ["generate", "--image-prompt", "a lighthouse", "--folder-name", "out", "--models", "tiny-flux", *extra]
    code, err = cli(argv, capsys)
    assert code == 2 and err.startswith("error IMG_031: ") and says in err, err
    assert list(tmp_path.iterdir()) == [tmp_path / "history.sqlite"] or list(tmp_path.iterdir()) == []


def test_a_missing_adapter_is_refused_with_its_fetch_command_before_anything_runs(tmp_path, capsys, monkeypatch):
    config = tmp_path / "adapters.yaml"
    config.write_text("families: {tiny-flux: {budget_gb: 0.05}}\nadapters:\n  water: {source: someone/water-lora, "
                      "weight_name: water.safetensors, family: tiny-flux}\n", encoding="utf-8")
    monkeypatch.setenv("KAMUI_ADAPTERS_CONFIG", str(config))
    argv = ["generate", "--image-prompt", "a lighthouse", "--folder-name", "out", "--models", "tiny-flux",
            "--adapters", "water:0.7", "--address", "local"]
    code, err = cli(argv, capsys)
    assert code == 2 and "error IMG_031: " in err and "download someone/water-lora water.safetensors" in err
    assert not (tmp_path / "out").exists() and not list(tmp_path.glob(".out*"))


def test_smart_selection_picks_only_models_the_adapters_fit(tmp_path, tiny_models):
    import yaml

    from cluster.planning.planner import make_plan
    from cluster.planning.request import parse_request
    from models.registry import DEFAULT_MODELS_FILE, load_registry

    doc = yaml.safe_load(DEFAULT_MODELS_FILE.read_text(encoding="utf-8"))
    for model in ("tiny-flux", "tiny-sd"):  # both available here; only tiny-flux takes tiny-style
        doc["models"][model]["auto_select"] = True
        doc["models"][model]["quality"] = 5 if model == "tiny-sd" else 1  # tiny-sd would win on its own
    path = tmp_path / "models.yaml"
    path.write_text(yaml.safe_dump(doc), encoding="utf-8")
    registry = load_registry(path)
    raw = {"image_prompt": "a lighthouse", "folder_name": "out", "image_count": "3"}
    assert make_plan(parse_request(raw, registry), registry).models[0] == "tiny-sd"
    plan = make_plan(parse_request({**raw, "adapters": "tiny-style"}, registry), registry)
    assert plan.models == ["tiny-flux"]
    assert {t.adapters[0].id for t in plan.tasks} == {"tiny-style"} and len(plan.tasks[0].adapters[0].sha256) == 64


def test_a_family_that_takes_adapters_is_planned_with_their_budget_and_without_fp8(registry):
    from cluster.planning.memory.planner import Need, choose
    from cluster.planning.memory.sizes import architecture_sizes

    sizes = architecture_sizes("flux1-schnell")
    plain = choose(sizes, Need(card_gb=24, host_gb=64)).plan
    ready = choose(sizes, Need(card_gb=24, host_gb=64, allow_fp8=False, adapters_gb=2.0)).plan
    assert plain.fp8 and not ready.fp8 and ready.adapters_gb == 2.0
    assert choose(sizes, Need(card_gb=80, host_gb=64, adapters_gb=2.0)).plan.gpu_gb == \
        round(choose(sizes, Need(card_gb=80, host_gb=64)).plan.gpu_gb + 2.0, 1)
    from cluster.planning.memory.replica_plan import plan_replica
    from cluster.planning.placement import NodeCapacity

    node = NodeCapacity("n", "127.0.0.1", cpus=8, gpus=1, gpu_memory_gb=24, memory_bytes=64 * 2**30)
    tiny = plan_replica(registry.get("tiny-flux"), [node], None, 64, 64, 1)  # declared sizes, plus its budget
    assert tiny.adapters_gb == 0.05 and tiny.gpu_gb == pytest.approx(0.1 + 0.01 + 0.05)


def test_the_journal_keeps_adapters_and_another_look_is_another_run(tmp_path, tiny_models):
    from cluster import env
    from cluster.output.durability.journal import RunJournal
    from cluster.pipeline.stages.preflight import journal_key_fields
    from cluster.planning.request import parse_request
    from models.adapter_files import resolve
    from models.adapters import load_adapters, parse_adapters
    from models.registry import load_registry

    registry = load_registry()
    raw = {"image_prompt": "a lighthouse", "folder_name": str(tmp_path / "out"), "models": "tiny-flux"}
    keys = {value: json.dumps(journal_key_fields(parse_request({**raw, "adapters": value}, registry), registry))
            for value in ("", "tiny-style", "tiny-style:0.5")}
    assert len(set(keys.values())) == 3
    uses = resolve(parse_adapters("tiny-style:0.5", load_adapters()), load_adapters(), env.cache_dir())
    journal = RunJournal(tmp_path / "out")
    task = ImageTask(0, "tiny-flux", "a lighthouse", 3, 64, 64, 2, 0.0, adapters=uses)
    journal.start("k", [task], {"base_seed": 3}, None)
    journal.close()
    assert RunJournal(tmp_path / "out").load("k").tasks == [task]  # the same adapters, hashes and scales


def test_a_resumed_run_plans_with_the_journaled_adapters(tmp_path, tiny_models, limits):
    from cluster import env
    from cluster.output.durability.journal import RunJournal
    from cluster.pipeline.context import RunContext
    from cluster.pipeline.stages.select import select
    from cluster.pipeline.state import RunState
    from cluster.planning.request import parse_request
    from models.adapter_files import resolve
    from models.adapters import load_adapters, parse_adapters
    from models.registry import load_registry

    registry = load_registry()
    uses = resolve(parse_adapters("tiny-style:0.5", load_adapters()), load_adapters(), env.cache_dir())
    journal = RunJournal(tmp_path / "out")
    header = {"models": ["tiny-flux"], "strategy": "smart", "base_seed": 3, "selection_reason": "named"}
    journal.start("k", [ImageTask(0, "tiny-flux", "a lighthouse", 3, 64, 64, 2, 0.0, adapters=uses)], header, None)
    journal.close()
    request = parse_request({"image_prompt": "a lighthouse", "folder_name": str(tmp_path / "out"),
                             "models": "tiny-flux", "adapters": "tiny-style:0.5"}, registry)
    state = RunState.begin(request, RunContext(registry, limits))
    state.resumed = RunJournal(tmp_path / "out").load("k")
    plan = select(state).plan
    assert plan.adapters == uses  # what fallbacks are chosen by: the journaled adapters, hashes too


def test_a_failed_image_falls_back_only_to_models_its_adapters_fit(tmp_path, tiny_models):
    import yaml

    from cluster.planning.planner import fallback_specs, make_plan
    from cluster.planning.request import parse_request
    from models.registry import DEFAULT_MODELS_FILE, load_registry

    doc = yaml.safe_load(DEFAULT_MODELS_FILE.read_text(encoding="utf-8"))
    doc["models"]["tiny-sd"]["auto_select"] = True  # available here, so a fallback for a plain plan
    path = tmp_path / "models.yaml"
    path.write_text(yaml.safe_dump(doc), encoding="utf-8")
    registry = load_registry(path)
    raw = {"image_prompt": "a lighthouse", "folder_name": "out", "models": "tiny-flux"}
    plain = make_plan(parse_request(raw, registry), registry)
    styled = make_plan(parse_request({**raw, "adapters": "tiny-style"}, registry), registry)
    assert "tiny-sd" in [s.id for s in fallback_specs(plain, registry)]
    assert [s.id for s in fallback_specs(styled, registry)] == ["tiny-flux"]  # an image keeps its look


def test_an_images_adapter_load_is_priced_as_loading():
    from cluster.planning.costs.config import load_costs
    from cluster.planning.costs.pricing import image_costs
    from cluster.work import GeneratedImage, ReplicaInfo
    from models.registry import load_registry

    task = ImageTask(0, "tiny-flux", "x", 1, 64, 64, 2, 0.0)
    info = ReplicaInfo("tiny-flux", "r", "n", "cpu", "float32", "random", 0.0, warm=True, card="cpu")
    cost = lambda extra: image_costs([GeneratedImage(task, b"", 1.0, "r", 64, 64, extra=extra)], {"tiny-flux": [info]},
                                     {s.id: s for s in load_registry()}, load_costs())[0]
    assert cost({"adapter_load_seconds": 2.0}).seconds == cost({}).seconds + 2.0


# --- on one replica ---------------------------------------------------------------------------

def generator():
    from actors.core.diffusers_generator import DiffusersGenerator
    from cluster import env
    from models.registry import load_registry

    return DiffusersGenerator(load_registry().get("tiny-flux"), env.cache_dir(), "solo")


def adapted(value: str, seed: int, prompt: str = "a city at night") -> ImageTask:
    from cluster import env
    from models.adapter_files import resolve
    from models.adapters import load_adapters, parse_adapters

    uses = resolve(parse_adapters(value, load_adapters()), load_adapters(), env.cache_dir())
    return ImageTask(0, "tiny-flux", prompt, seed, 64, 64, 2, 0.0, adapters=uses)


def pixels(png: bytes) -> bytes:
    from cluster.output.png import decode

    return decode(png).tobytes()


def test_two_waiting_requests_with_different_adapters_never_share_a_call(tiny_models):
    from actors.core.coalescing import Coalescer

    solo = generator()
    alone = {v: pixels(solo.generate([adapted(v, 4)])[0].png) for v in ("tiny-style", "tiny-grain:0.5")}
    shared = generator()
    coalescer = Coalescer(shared.generate, shared.cancel, max_images=4)
    results: dict[str, bytes] = {}

    def submit(value: str, call_id: str) -> None:
        results[call_id] = pixels(coalescer.submit([adapted(value, 4)], call_id, None)[0].png)

    with shared._lock:  # the pipeline is busy: the calls below wait together, as on a loaded replica
        threads = [threading.Thread(target=submit, args=(v, f"{v}-{i}"))
                   for i, v in enumerate(["tiny-style", "tiny-style", "tiny-grain:0.5", "tiny-grain:0.5"])]
        for thread in threads:
            thread.start()
        while len(coalescer._pending) + len(coalescer._running) < 4:
            threading.Event().wait(0.01)
    for thread in threads:
        thread.join(timeout=120)
    # the same adapters shared a call; different ones never did, and each image is the one made alone
    assert coalescer.merged_calls >= 1
    assert all(image == alone[call_id.rsplit("-", 1)[0]] for call_id, image in results.items()) and len(results) == 4


@pytest.fixture
def manifest(tmp_path):
    path = tmp_path / "video.yaml"
    path.write_text(
        "defaults: {models: tiny-flux, adapters: 'tiny-style:0.8', scorer: none}\n"
        "entries:\n"
        "  - {id: intro, image-prompt: a city at night, seed: 4}\n"
        "  - {id: chorus, image-prompt: a neon street, seed: 5, adapters: 'tiny-grain:1'}\n"
        "  - {id: outro, image-prompt: a quiet harbour, seed: 6, adapters: none}\n", encoding="utf-8")
    return path


def test_a_manifests_default_look_applies_to_every_entry_on_one_warm_replica(ray_session, tiny_models, limits,
                                                                             manifest, tmp_path):
    from cluster.entrypoints.batch import build_entries, run_batch
    from cluster.observability.events import Events
    from models.registry import load_registry

    registry = load_registry()
    events: list[dict] = []
    entries = build_entries(manifest, registry, {"scorer": None})
    results = run_batch(entries, registry, limits, events=Events(events.append), entries_at_once=3)
    assert [r.status for r in results] == ["completed"] * 3, results
    loads = [e for e in events if e["event"] == "model_loaded" and e["model"] == "tiny-flux"]
    assert [e["warm"] for e in loads].count(False) == 1  # one model load for the whole video

    solo = generator()
    expected = {"intro": ("tiny-style:0.8", 4, "a city at night"), "chorus": ("tiny-grain:1", 5, "a neon street"),
                "outro": ("", 6, "a quiet harbour")}
    for entry, (value, seed, prompt) in expected.items():
        folder = tmp_path / "video-out" / entry
        report = read_json(folder / "metadata/generation-report.json")
        (image,) = report["images"]
        assert report["request"]["adapters"] == (value if value else "")
        made = (folder / "images" / image["filename"]).read_bytes()
        assert pixels(made) == pixels(solo.generate([adapted(value, seed, prompt)])[0].png)  # nothing mixed
        if value:
            (record,) = image["adapters"]
            assert f"{record['id']}:{record['scale']:g}" == value and len(record["sha256"]) == 64
        else:
            assert "adapters" not in image
    switched = [read_json(tmp_path / "video-out" / e / "metadata/generation-report.json")["images"][0]["backend"]
                for e in expected]
    assert any(b and b.get("adapter_switch_seconds", 0) > 0 for b in switched)  # each switch's time, recorded
    with sqlite3.connect(tmp_path / "history.sqlite") as db:
        rows = sorted(db.execute("SELECT adapter, scale FROM run_adapters").fetchall())
    assert rows == [("tiny-grain", 1.0), ("tiny-style", 0.8)]


def test_png_metadata_alone_makes_the_image_again(tiny_models, tmp_path):
    from cluster.output.png import read_parameters
    from cluster.planning.planner import make_plan
    from cluster.planning.request import parse_request
    from models.registry import load_registry

    made = generator().generate([adapted("tiny-style:0.7,tiny-grain:0.4", 21, "a lighthouse at dusk")])[0].png
    params = read_parameters(made)
    assert [(a["id"], a["scale"]) for a in params["adapters"]] == [("tiny-style", 0.7), ("tiny-grain", 0.4)]
    registry = load_registry()
    raw = {"image_prompt": params["prompt"], "models": params["model"], "seed": str(params["seed"]),
           "steps": str(params["steps"]), "width": str(params["width"]), "height": str(params["height"]),
           "adapters": ",".join(f"{a['id']}:{a['scale']}" for a in params["adapters"]), "folder_name": "again"}
    (task,) = make_plan(parse_request(raw, registry), registry).tasks
    assert [a.sha256 for a in task.adapters] == [a["sha256"] for a in params["adapters"]]
    again = generator().generate([task])[0].png
    assert pixels(again) == pixels(made)
