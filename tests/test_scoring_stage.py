"""The scoring stage: the scorer never waits on Ray without a bound, never takes a card before the
models, and its failures never cost a run its images."""

from __future__ import annotations

import time

import pytest
import ray

from cluster.engine.nodes import cluster_nodes
from cluster.planning.placement import GPU_MEMORY_RESOURCE
from cluster.engine.scoring import ActorScorer, WeightFreeScorer, make_scorer
from models.scorers import load_scoring
from tests.helpers import generated, make_request, quick_limits, read_json, scripted_registry

pytestmark = pytest.mark.usefixtures("ray_session")


@pytest.fixture
def every_gpu_held():
    """Another job holds every GPU and all GPU memory of the session cluster."""
    from ray.util.placement_group import placement_group, remove_placement_group

    total = ray.cluster_resources()
    group = placement_group([{"GPU": 1, GPU_MEMORY_RESOURCE: total[GPU_MEMORY_RESOURCE] / total["GPU"]}
                             for _ in range(int(total["GPU"]))], strategy="SPREAD")
    assert group.wait(timeout_seconds=30)
    yield
    remove_placement_group(group)


def test_a_scorer_with_no_room_gives_up_within_the_placement_timeout(every_gpu_held):
    scorer = ActorScorer(load_scoring().get("tiny-clip"), cluster_nodes(), placement_timeout=2)
    started = time.monotonic()
    info = scorer.describe()
    assert time.monotonic() - started < 10
    assert info["name"] == "weight-free" and "found no room within 2s" in info["note"]
    # the images still get the weight-free scores, and the pending actor is gone, not waiting for a card
    (score,) = scorer.score([generated(0, "m", 0)])
    assert score.detailed["prompt_alignment"] is None and score.detailed["technical_quality"] is not None


def test_a_scorer_no_node_could_hold_is_refused_at_once():
    from cluster.planning.placement import NodeCapacity

    tiny_cards = [NodeCapacity("n", "n", 8, 1, 0.05, 64e9)]  # a 50 MB card cannot hold tiny-clip's 100 MB
    scorer = make_scorer("tiny-clip", load_scoring(), tiny_cards)
    assert isinstance(scorer, WeightFreeScorer) and "no node has that" in scorer.describe()["note"]


def test_a_run_places_its_models_before_its_scorer(tmp_path):
    """Two one-card models fill both cards of the session cluster. A scorer that took its sliver of a
    card first would leave one of them no card at all; started after them, it scores once they let go."""
    registry = scripted_registry(tmp_path, {
        name: {"gpus": 1, "gpu_memory_gb": 24, "script": {"latency": 0.05}} for name in ("left", "right")})
    from cluster.pipeline.run import run_generation

    request = make_request(registry, tmp_path, models="left,right", image_count=2, scorer="tiny-clip")
    result = run_generation(request, registry, quick_limits())
    assert result.exit_code == 0, result.outcome.error
    assert sorted(f.model for f in result.outcome.images) == ["left", "left", "right", "right"]
    kinds = [e["event"] for e in result.events.history]
    assert "model_unplaceable" not in kinds
    assert max(i for i, k in enumerate(kinds) if k == "model_loading") < kinds.index("scorer_loaded")
    report = read_json(tmp_path / "out/metadata/generation-report.json")
    assert report["quality"]["scorer"]["name"] == "tiny-clip"


class BrokenScorer:
    """A scorer whose actor call fails the way Ray reports it: not an ImageGenError."""

    def start(self) -> None:
        pass

    def score(self, images):
        if images:
            raise RuntimeError("\x1b[31mRayTaskError(OutOfMemoryError)\x1b[0m: CUDA out of memory")
        return []

    def describe(self) -> dict:
        return {"name": "broken"}

    def release(self) -> None:
        pass


def test_a_scorer_that_raises_leaves_weight_free_scores_and_the_images(tmp_path):
    from cluster.pipeline.run import run_generation

    registry = scripted_registry(tmp_path, {"local": {"script": {"latency": 0.05}}})
    request = make_request(registry, tmp_path, models="local", image_count=2)
    result = run_generation(request, registry, quick_limits(), scorer=BrokenScorer())
    assert result.exit_code == 0 and len(result.outcome.images) == 2
    report = read_json(tmp_path / "out/metadata/generation-report.json")
    assert [i["filename"] for i in report["images"]] == ["generated-image-1.png", "generated-image-2.png"]
    note = report["quality"]["scorer"]["note"]
    assert report["quality"]["scorer"]["name"] == "weight-free"
    assert "the scorer failed: RuntimeError" in note and "CUDA out of memory" in note and "\x1b" not in note
    assert all(i["quality_score"] > 0 for i in report["images"])
