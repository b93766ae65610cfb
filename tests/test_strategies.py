"""Model selection (smart), the sequential rule, and the per-model queue strategies."""

from __future__ import annotations

from cluster.planning.limits import load_limits
from cluster.engine.replicas import ModelGroup, Replica
from cluster.engine.retry import RetryPolicy, TaskState
from cluster.engine.scheduler import Scheduler
from cluster.planning.strategies import SequentialSource
from cluster.work import GeneratedImage, ImageTask
from models.prompt_analysis import analyze_prompt
from models.registry import ModelSpec, RateLimit
from models.selection import distribute, select_models


def test_prompt_analysis_reads_realism_and_art_in_two_languages():
    assert analyze_prompt("A portrait photo, 85mm lens, golden hour").category == "realism"
    assert analyze_prompt("an oil painting of a ship in a storm").category == "artistic"
    assert analyze_prompt("水彩のイラスト、夕焼けの街").category == "artistic"
    assert analyze_prompt("リアルな写真、東京の夜").category == "realism"
    assert analyze_prompt("a cat on a sofa").category == "general"
    assert analyze_prompt("a party at the beach").category == "general"  # 'art' inside 'party' is no cue


def test_smart_rule_restricted_to_available_models(registry):
    available = [registry.get(m) for m in ("imagen4-ultra", "imagen4-fast", "flux-schnell", "photo-flux")]
    realism = analyze_prompt("photorealistic portrait")
    assert select_models(realism, registry, available, 2).models == ("imagen4-ultra", "photo-flux")
    assert select_models(realism, registry, available, 1).models == ("imagen4-ultra",)
    art = analyze_prompt("watercolor illustration")
    assert select_models(art, registry, available, 3).models == ("flux-schnell", "imagen4-fast")
    general = analyze_prompt("a cat")
    assert select_models(general, registry, available, 3).models == ("imagen4-fast",)
    only_flux = [registry.get("flux-schnell")]
    chosen = select_models(realism, registry, only_flux, 2)
    assert chosen.models == ("flux-schnell",) and "none of the rule's models" in chosen.reason


def test_history_reorders_within_the_rule(registry):
    available = [registry.get(m) for m in ("imagen4-ultra", "photo-flux")]
    realism = analyze_prompt("a photo of a bridge")
    history = {"photo-flux": 0.9, "imagen4-ultra": 0.4}.get
    assert select_models(realism, registry, available, 1, history).models == ("photo-flux",)


def test_distribute_round_robin():
    assert distribute(5, ["a", "b"]) == ["a", "b", "a", "b", "a"]


def _done(task: ImageTask) -> GeneratedImage:
    return GeneratedImage(task, b"", 0.1, "r", task.width, task.height)


def test_sequential_rule_explores_each_variation_once_then_exploits_the_best():
    tasks = [ImageTask(i, "m", "a fox", i, 32, 32, 1, None) for i in range(7)]
    source = SequentialSource(tasks)
    scores = {"original": 0.5, "detailed": 0.7, "lighting": 0.6, "vivid": 0.2}
    seen = []
    while not source.exhausted():
        (task,) = source.take()
        assert source.take() == []  # one at a time
        seen.append(task.prompt_variation)
        source.on_result(_done(task), scores[task.prompt_variation])
    assert seen == ["original", "detailed", "lighting", "vivid", "detailed", "detailed", "detailed"]


def test_sequential_failure_gives_no_evidence():
    source = SequentialSource([ImageTask(i, "m", "a fox", i, 32, 32, 1, None) for i in range(2)])
    (first,) = source.take()
    source.on_failure(first)
    (second,) = source.take()
    assert second.prompt_variation == "original"  # the failed variation still counts as untried


class _Pool:
    def __init__(self, group):
        self.groups = {group.spec.id: group}


def _scheduler(strategy: str, replicas: int = 3, batch: int = 1) -> tuple[Scheduler, ModelGroup]:
    spec = ModelSpec(id="m", backend="diffusers", source="org/m", max_batch_size=batch,
                     rate_limit=RateLimit(queue_strategy=strategy))
    group = ModelGroup(spec, [Replica(f"m-{i}", "m", None, 1, loaded=True) for i in range(replicas)], batch)
    limits = load_limits()
    return Scheduler(_Pool(group), {"m": spec}, limits, 8, RetryPolicy(limits.scheduler, ["m"])), group


def test_round_robin_rotates_over_replicas():
    scheduler, group = _scheduler("round_robin")
    picks = [scheduler._pick_replica(group).name for _ in range(4)]
    assert picks == ["m-0", "m-1", "m-2", "m-0"]


def test_load_balanced_sends_to_the_least_busy_replica():
    scheduler, group = _scheduler("load_balanced")
    group.replicas[0].busy_seconds, group.replicas[1].busy_seconds, group.replicas[2].busy_seconds = 5.0, 1.0, 3.0
    assert scheduler._pick_replica(group).name == "m-1"
    group.replicas[1].in_flight = 1  # busy now: not free
    assert scheduler._pick_replica(group).name == "m-2"


def test_priority_based_sends_retries_first_then_lower_indices():
    scheduler, group = _scheduler("priority_based", replicas=1)
    states = [TaskState(ImageTask(i, "m", "p", i, 32, 32, 1, None)) for i in (3, 1, 2)]
    states[2].priority = -1  # a retry
    scheduler.queues["m"] = list(states)
    scheduler.planned = {"m": 3}
    order = [scheduler._take_batch(group, list(scheduler.queues["m"]))[0].task.index for _ in range(3)]
    assert order == [2, 1, 3]
