"""The summary a person reads at the end of a run says, one line each, what changed on the way."""

from __future__ import annotations

from cluster.errors import ImageGenError
from cluster.pipeline.run import RunResult
from tests.helpers import generated, make_request, outcome_for


def printed(capsys, outcome) -> list[str]:
    from cluster.entrypoints.cli import _print_summary

    _print_summary(RunResult(outcome, None, {"generation-report": "out/metadata/generation-report.json"}))
    return [line.removeprefix("note: ") for line in capsys.readouterr().out.splitlines() if line.startswith("note: ")]


def test_every_change_from_what_was_asked_is_one_line(registry, tmp_path, capsys):
    request = make_request(registry, tmp_path, models="tiny-flux", image_count=2)
    outcome = outcome_for(request, [generated(0, "tiny-flux", 1)])  # random weights, as tiny-flux has
    outcome.degradations = [
        {"strategy": "budget", "budget_usd": 0.01, "images_moved": 0, "images_moved_to": None, "images_dropped": 1,
         "code": "IMG_029"},
        {"strategy": "quality_relaxation", "threshold": 0.7, "relaxed_to": 0.41, "code": "IMG_004"},
    ]
    outcome.scorer = {"name": "weight-free", "weights": "none",
                      "note": "scorer 'vit-l-14': weights not in the Hugging Face cache"}
    outcome.translation = {"language": "ja", "english": None,
                           "note": "no translator available: nllb-600m weights missing; the original prompt passes through"}
    lines = printed(capsys, outcome)
    assert len(lines) == 5, lines
    budget, quality, weights, scores, prompt = lines
    assert budget.startswith("budget: 1 image(s) dropped") and "$0.01" in budget and "IMG_029" in budget
    assert quality.startswith("quality:") and "0.7" in quality and "0.41" in quality and "IMG_004" in quality
    assert weights.startswith("random weights: tiny-flux")
    assert scores.startswith("scores: weight-free only") and "vit-l-14" in scores
    assert prompt.startswith("prompt not translated (ja): no translator available")


def test_a_partial_run_stopped_by_the_total_timeout_says_so_though_it_exits_0(registry, tmp_path, capsys):
    request = make_request(registry, tmp_path, models="tiny-flux", image_count=2, scorer="none")
    outcome = outcome_for(request, [generated(0, "tiny-flux", 1)])
    outcome.error = ImageGenError("IMG_003", "the run reached total_workflow_timeout (60s) with 1 of 2 image(s) "
                                             "made; give it more time with --total-timeout SECONDS")
    outcome.scorer = {"name": "weight-free", "weights": "none", "note": "scoring without a CLIP model (--scorer none)"}
    lines = printed(capsys, outcome)
    assert lines[-1].startswith("IMG_003: ") and "--total-timeout" in lines[-1]
    assert not any(line.startswith("scores:") for line in lines)  # --scorer none was asked for: no change


def test_money_keeps_small_costs_visible():
    from cluster.planning.costs.money import format_usd

    assert [format_usd(v) for v in (0, 0.00001, 0.000042, 0.0183, 0.05, 0.5, 12.345)] == \
        ["$0", "$0.00001", "$0.000042", "$0.018", "$0.05", "$0.50", "$12.35"]
