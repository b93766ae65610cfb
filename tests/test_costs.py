"""Cost control: what images cost (the arithmetic, written out), budgets that refuse, degrade and
stop remote calls mid-run (counted at the loopback Vertex server), a batch's total budget, the
dry run's estimate against a measured run, and the history's cost columns."""

from __future__ import annotations

import json

import pytest

from cluster.planning.costs.budget import BudgetTracker, Estimate, estimate, fit
from cluster.planning.costs.config import CardPrice, CostConfig, load_costs
from cluster.planning.costs.pricing import cost_section, image_costs
from cluster.errors import ImageGenError
from cluster.work import ReplicaInfo
from tests.helpers import generated, make_request, quick_limits, read_json, scripted_registry

CONFIG = CostConfig(default_gpu_hour_usd=1.0, cpu_hour_usd=0.036, cards=(CardPrice(match="H100", gpu_hour_usd=3.6),),
                    remote={"imagen4-fast": 0.02, "imagen4-ultra": 0.06})


def info(model: str, replica: str, card: str, share: float, load: float, warm: bool = False) -> ReplicaInfo:
    return ReplicaInfo(model, replica, "node", "cuda" if card != "cpu" else "cpu", "bfloat16", "real", load,
                       warm=warm, card=card, gpu_share=share)


def image(index: int, model: str, seconds: float):
    made = generated(index, model, index)
    made.seconds, made.replica = seconds, f"{model}-0"
    return made


def specs(registry, *ids):
    return {i: registry.get(i) for i in ids}


def test_a_fractional_card_with_its_load_amortised(registry):
    # a quarter of an H100 ($3.60/h): 2 s generating each, a 12 s load shared by the 4 images it made
    images = [image(i, "flux-schnell", 2.0) for i in range(4)]
    replicas = {"flux-schnell": [info("flux-schnell", "flux-schnell-0", "NVIDIA H100 80GB HBM3", 0.25, 12.0)]}
    costs = image_costs(images, replicas, specs(registry, "flux-schnell"), CONFIG)
    assert [round(c.usd, 9) for c in costs] == [round((2.0 + 3.0) * 0.25 * 3.6 / 3600, 9)] * 4  # $0.00125 each
    assert costs[0].basis == "5.00 GPU-s (2.00 generating + 3.00 loading) x 0.25 of a NVIDIA H100 80GB HBM3 at $3.6/h"
    # warm: the load was an earlier run's
    warm = {"flux-schnell": [info("flux-schnell", "flux-schnell-0", "NVIDIA H100 80GB HBM3", 0.25, 12.0, warm=True)]}
    assert image_costs(images, warm, specs(registry, "flux-schnell"), CONFIG)[0].usd == pytest.approx(2 * 0.25 * 3.6 / 3600)


def test_an_unknown_card_takes_the_default_rate_and_a_cpu_replica_the_cpu_rate(registry):
    images = [image(0, "tiny-flux", 10.0)]
    on_a4000 = {"tiny-flux": [info("tiny-flux", "tiny-flux-0", "NVIDIA RTX A4000", 1.0, 0.0)]}
    assert image_costs(images, on_a4000, specs(registry, "tiny-flux"), CONFIG)[0].usd == pytest.approx(10 / 3600)
    on_cpu = {"tiny-flux": [info("tiny-flux", "tiny-flux-0", "cpu", 0.0, 0.0)]}
    assert image_costs(images, on_cpu, specs(registry, "tiny-flux"), CONFIG)[0].usd == pytest.approx(10 * 0.036 / 3600)


def test_a_mixed_run_totals_the_sum_of_its_images(registry):
    images = [image(0, "imagen4-fast", 1.0), image(1, "imagen4-fast", 1.0), image(2, "flux-schnell", 2.0)]
    replicas = {"flux-schnell": [info("flux-schnell", "flux-schnell-0", "NVIDIA H100 PCIe", 0.5, 0.0)]}
    costs = image_costs(images, replicas, specs(registry, "imagen4-fast", "flux-schnell"), CONFIG)
    assert [round(c.usd, 6) for c in costs] == [0.02, 0.02, 0.001]  # list price; 2 s x 0.5 x $3.60/h
    section = cost_section(costs, {"imagen4-ultra": 0.06}, 3)
    assert section["total_usd"] == pytest.approx(0.041)
    assert section["per_model"]["imagen4-fast"] == {"images": 2, "usd": 0.04, "usd_per_image": 0.02, "basis": "list price"}
    assert section["same_images_on"] == {"imagen4-ultra": 0.18}
    assert sum(i["usd"] for i in section["per_image"]) == pytest.approx(section["total_usd"])


def test_the_bundled_cost_config_loads_and_prices_common_cards():
    config = load_costs()
    assert config.hour_rate("NVIDIA GeForce RTX 4090")[0] == 0.4 and config.hour_rate("NVIDIA L4")[0] == 0.7
    assert config.hour_rate("cpu")[1] == "CPU" and config.list_price("imagen4-ultra", 0) == 0.06


def test_estimates_come_from_history_else_list_prices_and_defaults(registry):
    history = {"flux-schnell": {"runs": 4, "images": 10, "cost_usd": 0.05, "seconds_per_image": 1.2}}
    est = estimate({"flux-schnell": 2, "imagen4-fast": 3, "photo-flux": 1}, specs(registry, "flux-schnell",
                   "imagen4-fast", "photo-flux"), history, CONFIG)
    assert est["flux-schnell"].usd == pytest.approx(0.01) and est["flux-schnell"].basis.startswith("history")
    assert est["imagen4-fast"].usd == pytest.approx(0.06)
    assert est["photo-flux"].basis.startswith("defaults") and est["photo-flux"].usd == pytest.approx((5 + 60) / 3600)


def test_fit_refuses_or_degrades_and_the_tracker_never_lets_spending_cross(registry):
    from cluster.work import ImageTask

    tasks = [ImageTask(i, "imagen4-ultra" if i < 2 else "imagen4-fast", "p", i, 1024, 1024, None, None)
             for i in range(4)]
    est = {"imagen4-ultra": Estimate("imagen4-ultra", 2, 0.06, None, "list"),
           "imagen4-fast": Estimate("imagen4-fast", 2, 0.02, None, "list")}
    with pytest.raises(ImageGenError) as refused:
        fit(tasks, est, 0.10, "refuse", None)
    assert refused.value.code == "IMG_029" and "estimated at $0.16, over --budget-usd $0.10" in refused.value.message
    with pytest.raises(ImageGenError) as tiny:  # amounts as people read them, never `$1e-05`
        fit(tasks, est, 0.00001, "refuse", None)
    assert "over --budget-usd $0.00001 " in tiny.value.message and "e-0" not in tiny.value.message
    kept, note = fit(tasks, est, 0.10, "degrade", lambda t, m: t.with_model(m, None, None, 1024, 1024))
    assert [t.model for t in kept] == ["imagen4-fast"] * 4 and note["images_moved"] == 2 and note["images_dropped"] == 0
    kept, note = fit(tasks, est, 0.05, "degrade", lambda t, m: t.with_model(m, None, None, 1024, 1024))
    assert len(kept) == 2 and note["images_dropped"] == 2
    tracker = BudgetTracker(0.05, est)
    assert tracker.affordable("imagen4-fast", 4) == 2
    tracker.start("imagen4-fast", 2)
    assert tracker.affordable("imagen4-fast", 1) == 0  # what runs counts
    tracker.finish("imagen4-fast", 2, 1)  # one of the two made it: one paid for
    assert tracker.affordable("imagen4-fast", 4) == 1


# --- budgets in real runs, remote calls counted at the loopback server ------------------------

def test_a_resumed_run_is_priced_for_the_images_it_has_still_to_make(vertex, tmp_path, registry):
    from types import SimpleNamespace

    from cluster.observability.history import History
    from cluster.planning.planner import make_plan
    from cluster.pipeline.stages.budget import budget_plan as _budget

    # 4 images at $0.02 against $0.05: over as planned, within once 2 are journaled
    request = make_request(registry, tmp_path, models="imagen4-fast", image_count=4, seed=1, budget_usd="0.05",
                           budget_policy="refuse")
    plan = make_plan(request, registry)
    with pytest.raises(ImageGenError) as refused:
        _budget(request, registry, plan, History(tmp_path / "h.sqlite"), CONFIG)
    assert refused.value.code == "IMG_029"
    journaled = SimpleNamespace(images=[SimpleNamespace(task=t) for t in plan.tasks[:2]])
    tracker, degradation = _budget(request, registry, plan, History(tmp_path / "h.sqlite"), CONFIG, journaled)
    assert degradation is None and len(plan.tasks) == 4
    assert tracker.estimates["imagen4-fast"].images == 2


@pytest.mark.usefixtures("ray_session")
def test_local_images_within_their_plans_own_estimate_are_all_made(tmp_path, registry, tiny_models):
    """Default prices, local models, no history: a budget set exactly at the plan's estimate makes
    every image. (The tracker once priced each call as if it carried the whole cold load: the
    plan's 4 images were accepted, then all but one refused with IMG_029.) Without a GPU here,
    the estimate takes the CPU rate, as the run's pricing does."""
    import math

    from cluster.observability.history import History
    from cluster.pipeline.run import run_generation
    from cluster.pipeline.stages.budget import runs_on_cpu

    config = load_costs()
    request = make_request(registry, tmp_path, models="tiny-flux", image_count=4, scorer="none")
    on_cpu = runs_on_cpu(request)
    (planned,) = estimate({"tiny-flux": 4}, specs(registry, "tiny-flux"), {}, config, on_cpu).values()
    rate = config.cpu_hour_usd if on_cpu else config.default_gpu_hour_usd
    assert planned.usd == pytest.approx(4 * (config.default_seconds_per_image + config.default_load_seconds / 4)
                                        * rate / 3600)
    exact = math.ceil(planned.usd * 1e9) / 1e9
    request = request.model_copy(update={"budget_usd": exact, "budget_policy": "refuse"})
    result = run_generation(request, registry, quick_limits(), history=History(tmp_path / "h.sqlite"))
    assert len(result.outcome.images) == 4 and result.outcome.failures == []
    budget = read_json(tmp_path / "out/metadata/generation-report.json")["cost"]["budget"]
    assert budget["estimates"]["tiny-flux"]["usd"] == pytest.approx(planned.usd, abs=1e-6)
    assert ("(CPU)" in budget["estimates"]["tiny-flux"]["basis"]) == on_cpu


def test_without_a_gpu_a_local_estimate_takes_the_cpu_rate(registry):
    flux = specs(registry, "flux-schnell")
    on_gpu, on_cpu = (estimate({"flux-schnell": 2}, flux, {}, CONFIG, cpu)["flux-schnell"] for cpu in (False, True))
    assert on_cpu.usd == pytest.approx(on_gpu.usd * CONFIG.cpu_hour_usd / CONFIG.default_gpu_hour_usd)
    assert on_cpu.basis.endswith("$0.036/h (CPU)") and on_gpu.basis.endswith("$1/h (GPU)")


@pytest.mark.usefixtures("ray_session")
def test_a_budget_that_refuses_makes_no_call(vertex, tmp_path, registry):
    from cluster.pipeline.run import run_generation

    request = make_request(registry, tmp_path, models="imagen4-fast", image_count=4, budget_usd="0.05",
                           budget_policy="refuse", scorer="none")
    with pytest.raises(ImageGenError) as info:
        run_generation(request, registry, quick_limits())
    assert info.value.code == "IMG_029" and info.value.exit_status == 2
    assert vertex.requests == [] and not (tmp_path / "out").exists()


@pytest.mark.usefixtures("ray_session")
def test_a_budget_that_degrades_to_the_cheaper_model(vertex, tmp_path, registry):
    from cluster.pipeline.run import run_generation

    request = make_request(registry, tmp_path, models="imagen4-ultra,imagen4-fast", image_count=2, budget_usd="0.10",
                           scorer="none")
    result = run_generation(request, registry, quick_limits())
    assert result.exit_code == 0 and len(result.outcome.images) == 4
    assert {r["model"] for r in vertex.requests} == {"imagen-4.0-fast-generate-001"}  # ultra never called
    report = read_json(tmp_path / "out/metadata/generation-report.json")
    (note,) = [d for d in report["degradations"] if d["strategy"] == "budget"]
    assert note["images_moved_to"] == "imagen4-fast" and note["images_moved"] == 2
    assert report["cost"]["total_usd"] == pytest.approx(0.08) and report["cost"]["budget"]["budget_usd"] == 0.10


@pytest.mark.usefixtures("ray_session")
def test_spending_reached_mid_run_stops_remote_calls(vertex, tmp_path):
    """A local model fails; its images move to imagen4-fast, and the budget pays for two of them."""
    from cluster.pipeline.run import run_generation

    registry = scripted_registry(tmp_path, {
        "local": {"cost_per_image_usd": 0.0, "script": {"fail_calls": list(range(1, 10)), "fail_code": "IMG_020"}}})
    import yaml

    doc = yaml.safe_load(registry.path.read_text())
    doc["models"]["imagen4-fast"] = {"backend": "imagen", "api_style": "predict", "api_model": "imagen-4.0-fast-generate-001",
                                     "max_batch_size": 4, "speed": 4, "cost_per_image_usd": 0.02}
    registry.path.write_text(yaml.safe_dump(doc))
    from models.registry import load_registry

    registry = load_registry(registry.path)
    free_gpus = CONFIG.model_copy(update={"default_gpu_hour_usd": 0.0, "cpu_hour_usd": 0.0})
    request = make_request(registry, tmp_path, models="local", image_count=3, budget_usd="0.05", scorer="none")
    result = run_generation(request, registry, quick_limits(max_attempts=2), costs=free_gpus)
    fast = vertex.of("imagen-4.0-fast-generate-001")
    assert len(fast) == 1 and fast[0]["body"]["parameters"]["sampleCount"] == 2  # the exact call the budget paid
    assert len(result.outcome.images) == 2
    (skipped,) = [f for f in result.outcome.failures if f.code == "IMG_029"]
    assert "would cross --budget-usd $0.05" in skipped.message
    report = read_json(tmp_path / "out/metadata/generation-report.json")
    assert any(d["strategy"] == "budget_stop" for d in report["degradations"])


@pytest.mark.usefixtures("ray_session")
def test_a_batch_total_budget_stops_later_entries(vertex, tmp_path, registry):
    from cluster.entrypoints.batch import build_entries, run_batch
    from cluster.observability.events import Events

    manifest = tmp_path / "jobs.jsonl"
    manifest.write_text("\n".join(json.dumps({"id": f"e{i}", "image-prompt": f"prompt {i}", "models": "imagen4-fast",
                                              "image-count": "2", "scorer": "none"}) for i in range(4)) + "\n")
    results = run_batch(build_entries(manifest, registry, {}), registry, quick_limits(), events=Events(),
                        entries_at_once=1, budget_usd=0.09)
    assert [r.status for r in results][:2] == ["completed", "completed"]  # $0.04 each
    # $0.01 left: not enough for one $0.02 image, so neither later entry calls the API
    assert all(r.codes == ["IMG_029"] and not r.ok for r in results[2:])
    assert len(vertex.requests) == 2 and sum(r.cost_usd for r in results) == pytest.approx(0.08)


@pytest.mark.usefixtures("ray_session")
@pytest.mark.slow  # three real runs and a dry run (30 s): `./scripts/test.sh -m slow`, and CI
def test_the_dry_runs_estimate_is_within_a_quarter_of_the_measured_cost(tmp_path, registry, tiny_models, capsys):
    from cluster.entrypoints.cli import main
    from cluster.observability.history import History
    from cluster.pipeline.run import run_generation

    history = History(tmp_path / "h.sqlite")
    costs = CONFIG.model_copy(update={"cpu_hour_usd": 3.6})  # CPU-seconds priced high enough to compare
    # a first run in a fresh process pays once for what no later run does (imports in the worker,
    # files read cold: twice a warm run's time in CI); the history a user estimates from is warm runs'
    warm_up = make_request(registry, tmp_path, models="tiny-flux", image_count=3, folder_name="warm-up", scorer="none")
    run_generation(warm_up, registry, quick_limits(), history=History(tmp_path / "warm-up.sqlite"), costs=costs)
    for name in ("first", "second"):
        request = make_request(registry, tmp_path, models="tiny-flux", image_count=3, folder_name=name, scorer="none")
        measured = run_generation(request, registry, quick_limits(), history=history, costs=costs).outcome
    assert main(["generate", "--image-prompt", "a red fox", "--folder-name", "third", "--models", "tiny-flux",
                 "--image-count", "3", "--dry-run", "--json", "--history-db", str(tmp_path / "h.sqlite")]) == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    (model,) = result["models"]
    assert model["estimate"]["basis"].startswith("history: 2 run(s)")
    real = sum(measured.costs.values())
    assert abs(model["estimate"]["usd"] - real) <= 0.25 * real


def test_history_shows_cost_per_image_and_totals_by_model_and_month(tmp_path, registry, capsys):
    from cluster.entrypoints.cli import main
    from cluster.observability.history import History
    from tests.helpers import outcome_for

    history = History(tmp_path / "h.sqlite")
    request = make_request(registry, tmp_path, models="tiny-flux")
    outcome = outcome_for(request, [generated(0, "tiny-flux", 1), generated(1, "tiny-flux", 2)])
    outcome.costs = {"tiny-flux": 0.004}
    import time

    recorded = {time.strftime("%Y-%m", time.gmtime())}
    history.record(outcome)
    history.record(outcome)
    recorded.add(time.strftime("%Y-%m", time.gmtime()))  # the UTC month the runs finished in
    months = history.monthly()
    assert [(m["model"], m["images"], round(m["cost_usd"], 6)) for m in months] == [("tiny-flux", 4, 0.008)]
    assert months[0]["month"] in recorded
    assert main(["history", "--history-db", str(tmp_path / "h.sqlite")]) == 0
    out = capsys.readouterr().out
    assert "cost/image" in out and "$0.002" in out and "0.0020" not in out and months[0]["month"] in out
    assert "ok/attempt" in out and "share of generation attempts" in out
