"""Placement: bundles from specs, feasibility, replica counts; and a real multi-node cluster."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from cluster.errors import ImageGenError
from cluster.planning.placement import (
    GPU_MEMORY_RESOURCE,
    NodeCapacity,
    check_placeable,
    gpu_share,
    replica_batch,
    replica_bundle,
    replica_count,
)
from models.registry import ModelSpec

ROOT = Path(__file__).resolve().parent.parent


def node(name: str, gpus: float = 1, card_gb: float = 24, cpus: float = 8) -> NodeCapacity:
    return NodeCapacity(name, name, cpus, gpus, gpus * card_gb, 64e9)


def spec(**fields) -> ModelSpec:
    base = {"id": "m", "backend": "diffusers", "source": "org/m"}
    base.update(fields)
    return ModelSpec(**base)


def test_bundle_asks_for_gpu_memory_and_the_share_of_a_card_it_is():
    # `gpus: 1` means "one card at most": 34 GB of an 80 GB card leaves room for others on it
    bundle = replica_bundle(spec(gpus=1, gpu_memory_gb=34), [node("a", card_gb=80)])
    assert bundle == {"CPU": 1, "GPU": 0.425, GPU_MEMORY_RESOURCE: 34}


@pytest.mark.parametrize("declared, memory, card, share", [
    (1, 34, 80, 0.425),
    (1, 24, 24, 1.0),        # exactly one card
    (1, 30, 24, 1.0),        # more than a card: a whole one (and node_fits refuses it)
    (0.05, 2, 24, 0.0833),   # rounded down, so shares whose memory fits a card fit it
    (0.1, 2, 24, 0.1),       # never below the fraction the model declares
    (0.5, 6, 24, 0.5),
    (0.5, 0, 24, 0.5),       # no memory declared: the declared share
    (1, 10, None, 1),        # cards of unknown size: the declared share
    (2, 40, 24, 2.0),        # several cards: whole ones
    (0, 10, 24, 0.0),        # a model that uses no GPU
])
def test_gpu_share_table(declared, memory, card, share):
    assert gpu_share(declared, memory, card) == share


def test_a_one_gpu_model_and_the_scorer_share_one_card_when_their_memory_fits():
    from cluster.engine.scoring import ActorScorer
    from models.scorers import load_scoring

    card = [node("a", gpus=1, card_gb=24)]
    model = replica_bundle(spec(gpus=1, gpu_memory_gb=20), card)
    scorer = ActorScorer.actor_options(load_scoring().get("vit-l-14"), card)
    assert model["GPU"] + scorer["num_gpus"] <= 1
    assert model[GPU_MEMORY_RESOURCE] + scorer["resources"][GPU_MEMORY_RESOURCE] <= 24
    # and when they do not fit together, Ray's accounting says so too
    big = replica_bundle(spec(gpus=1, gpu_memory_gb=23), card)
    assert big[GPU_MEMORY_RESOURCE] + scorer["resources"][GPU_MEMORY_RESOURCE] > 24


def test_the_bundle_reserves_the_batch_it_will_run():
    nodes = [node("a", card_gb=24)]
    s = spec(gpus=1, gpu_memory_gb=10, gpu_memory_per_image_gb=2, max_batch_size=4)
    assert replica_batch(s, nodes, {"a": {GPU_MEMORY_RESOURCE: 24.0, "GPU": 1.0}}) == 4
    assert replica_bundle(s, nodes, batch=4)[GPU_MEMORY_RESOURCE] == 18
    # another model holds 9 GB of the card: the batch is what the 15 GB left hold beside the weights
    assert replica_batch(s, nodes, {"a": {GPU_MEMORY_RESOURCE: 15.0, "GPU": 0.6}}) == 2
    assert replica_bundle(s, nodes, batch=2)[GPU_MEMORY_RESOURCE] == 14
    # nothing free now: planned for a whole card (the replica waits for room, or fails with IMG_010)
    assert replica_batch(s, nodes, {"a": {GPU_MEMORY_RESOURCE: 4.0}}) == 4
    assert replica_batch(s, nodes, None) == 4


def test_a_shared_card_is_claimed_in_proportion_to_memory():
    # 16 GB of a 24 GB card is two thirds of it, whatever fraction the spec asks for
    bundle = replica_bundle(spec(gpus=0.1, gpu_memory_gb=16), [node("a"), node("b", card_gb=80)])
    assert bundle["GPU"] == pytest.approx(16 / 24, abs=1e-3)


def test_cpu_only_cluster_gets_cpu_bundles_and_remote_models_never_ask_for_gpus():
    assert replica_bundle(spec(gpus=1, gpu_memory_gb=34), [node("cpu", gpus=0)]) == {"CPU": 1}
    remote = spec(backend="imagen", source=None, api_style="predict", api_model="x", cpus=0.5)
    assert replica_bundle(remote, [node("a")]) == {"CPU": 0.5}


def test_no_card_big_enough_is_img_010_naming_need_and_supply():
    big = spec(gpus=1, gpu_memory_gb=40)
    with pytest.raises(ImageGenError) as info:
        check_placeable(big, replica_bundle(big, [node("a")]), [node("a"), node("b")])
    assert info.value.code == "IMG_010"
    assert "gpu_memory_gb=40" in info.value.message and "24 GiB" in info.value.message


def test_two_cards_of_a_node_do_not_make_one_big_card():
    # 2 x 24 GB on one node is 48 GB in all, but a one-GPU 40 GB model still fits neither card
    big = spec(gpus=1, gpu_memory_gb=40)
    with pytest.raises(ImageGenError):
        check_placeable(big, replica_bundle(big, [node("a", gpus=2)]), [node("a", gpus=2)])
    # a model that asks for two GPUs splits its weights over both
    split = spec(gpus=2, gpu_memory_gb=40)
    assert check_placeable(split, replica_bundle(split, [node("a", gpus=2)]), [node("a", gpus=2)])


def test_replica_count_from_images_max_parallel_and_free_gpus():
    nodes = [node("a"), node("b")]
    s = spec(gpus=0.5, gpu_memory_gb=10, max_batch_size=2)
    bundle = replica_bundle(s, nodes)
    assert replica_count(s, images=1, batch_size=2, max_parallel=8, bundle=bundle, nodes=nodes) == 1
    assert replica_count(s, images=8, batch_size=2, max_parallel=3, bundle=bundle, nodes=nodes) == 3
    assert replica_count(s, images=20, batch_size=2, max_parallel=8, bundle=bundle, nodes=nodes) == 4  # 2 per card
    assert replica_count(s, images=20, batch_size=2, max_parallel=8, bundle=bundle, nodes=[node("c", gpus=0)]) == 1
    # other runs hold most cards: only what is free now counts
    free = {"GPU": 1.0, GPU_MEMORY_RESOURCE: 24.0}
    assert replica_count(s, images=20, batch_size=2, max_parallel=8, bundle=bundle, nodes=nodes, free=free) == 2


def test_fewer_replicas_than_asked_names_the_resource_that_ran_out():
    """Four logical 24 GiB cards whose host RAM holds two FLUX replicas' plans: two, and why."""
    from cluster.planning.placement import replica_capacity

    four_cards = [NodeCapacity("a", "a", 16, 4, 96, 60 * 2**30)]
    flux = spec(gpus=1, gpu_memory_gb=23.4, max_batch_size=4)
    bundle = replica_bundle(flux, four_cards, memory_bytes=26 * 2**30, gpu_gb=23.4)
    count, why = replica_capacity(flux, images=16, batch_size=4, max_parallel=4, bundle=bundle, nodes=four_cards)
    assert count == 2 and "2 of the 4 replicas wanted: host memory ran out first" in why
    roomy = [NodeCapacity("a", "a", 16, 4, 96, 200 * 2**30)]
    assert replica_capacity(flux, images=16, batch_size=4, max_parallel=4, bundle=bundle, nodes=roomy) == (4, "")
    count, why = replica_capacity(flux, images=16, batch_size=4, max_parallel=4, bundle=bundle, nodes=roomy,
                                  free={"GPU": 3.0, GPU_MEMORY_RESOURCE: 72.0})
    assert count == 3 and "GPUs free now ran out first" in why


def test_a_replica_reserves_its_plans_host_memory_beside_its_images():
    from cluster.planning.limits import load_limits
    from cluster.planning.memory.planner import MemoryPlan
    from cluster.planning.placement import host_bytes

    limits = load_limits()
    plan = MemoryPlan("group-offload", host_gb=38.0, batch=2)
    assert host_bytes(spec(), plan, 2, limits.perf.memory_limit_per_image) == 38 * 2**30 + 2 * limits.perf.memory_limit_per_image


@pytest.mark.slow  # a minute and more: `./scripts/test.sh -m slow` (CI runs it after the suite)
def test_multinode_cluster_spreads_packs_and_fails_fast():
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    result = subprocess.run([sys.executable, "-m", "tests.multinode_check"], cwd=ROOT, env=env,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    seen = json.loads(result.stdout.strip().splitlines()[-1])
    assert seen["nodes"] == 5
    spread = seen["spread"]
    # never two 16 GB replicas on one card (a replica still loading when the others finished the three
    # images is not in the report, so the count of replicas is not what is checked)
    assert spread["images"] == 3 and len(set(spread["nodes"]["mid"])) == len(spread["nodes"]["mid"]) >= 2
    two = seen["two_models"]
    assert two["images"] == 2 and set(two["nodes"]["a"]).isdisjoint(two["nodes"]["b"])
    pack = seen["pack"]
    assert pack["images"] == 4 and len(set(pack["nodes"]["small"])) == 1  # PACK: one node holds all four
    big = seen["too_big"]
    assert big["error"] == "IMG_010" and big["seconds"] < 5
    assert "gpu_memory_gb=40" in big["message"] and big["written"] is False
    lost = seen["node_lost"]
    assert lost["images"] == 6 and lost["restarts"] >= 1
    assert lost["victim"] in lost["nodes"] and len(lost["nodes"]) == 2  # the replica moved to another node
    warm = seen["warm"]
    assert warm["replicas"] == 3 and warm["released"] == 3
    for run in warm["runs"]:
        assert run["warm"] is True and run["images"] == 3 and len(set(run["nodes"])) == 3
