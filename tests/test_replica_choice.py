"""How many replicas a model's images go to, by makespan (cluster/replica_choice.py), as a table;
and through a run on the session's two logical cards, where the events say which and why."""

from __future__ import annotations

import pytest

from cluster.engine.replica_choice import Timing, choose_replicas

# (images, plan batch, replicas placeable, warm, timing) -> (replicas, batch)
TABLE = [
    (1, 4, 4, 0, Timing(), (1, 1)),
    (4, 4, 4, 0, Timing(), (4, 1)),  # a fresh run: every replica loads anyway, so spread over the cards
    (4, 4, 2, 0, Timing(), (2, 2)),  # two cards: two images per call on each
    (8, 4, 4, 0, Timing(per_image_s=2.0), (4, 2)),
    (3, 4, 4, 0, Timing(per_image_s=2.0), (3, 1)),  # no more replicas than images
    (4, 4, 4, 1, Timing(load_s=60, per_image_s=2.0), (1, 4)),  # loading more costs more than batching on the warm one
    (40, 4, 4, 1, Timing(load_s=20, per_image_s=2.0), (4, 4)),  # many images: loading three more pays off
    (4, 4, 4, 4, Timing(load_s=60, per_image_s=2.0), (4, 1)),  # warm on every card: spread
    (8, 4, 2, 0, Timing(per_image_s=1.0, call_s=5.0), (2, 4)),  # a fixed cost per call: full batches
]


@pytest.mark.parametrize("images, batch, capacity, warm, timing, expected", TABLE)
def test_replicas_by_makespan(images, batch, capacity, warm, timing, expected):
    choice = choose_replicas(images, batch, capacity, warm, timing)
    assert (choice.replicas, choice.batch) == expected
    assert choice.reason
    if choice.replicas > 1:
        assert choice.reason.startswith(f"spreading {images} image(s) over {choice.replicas} replicas")
    elif capacity > 1 and images > 1:
        assert choice.reason.startswith(f"batching {images} image(s)")


@pytest.mark.usefixtures("ray_session")
def test_a_run_spreads_a_batching_model_over_idle_cards_and_says_why(tmp_path):
    """A plan holding 4 images per call used to take one replica for 4 images (one call of 4 on
    one card, four images' time) while the other card sat idle."""
    from cluster.pipeline.run import run_generation
    from tests.helpers import make_request, quick_limits, scripted_registry

    registry = scripted_registry(tmp_path, {"gpu": {"gpus": 1, "gpu_memory_gb": 20, "max_batch_size": 4,
                                                    "script": {"latency": 0.0, "per_image": 0.2}}})
    request = make_request(registry, tmp_path, models="gpu", image_count=4, max_parallel=4, scorer="none")
    result = run_generation(request, registry, quick_limits())
    assert result.exit_code == 0 and len(result.outcome.images) == 4
    (choice,) = result.events.of("replica_choice")
    assert choice["replicas"] == 2 and choice["batch"] == 2 and "spreading 4 image(s) over 2 replicas" in choice["reason"]
    (loading,) = result.events.of("model_loading")
    assert loading["replicas"] == 2
    assert {e["replica"] for e in result.events.of("call_started")} == {"gpu-0", "gpu-1"}
