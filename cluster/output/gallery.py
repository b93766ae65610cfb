"""`{folder}/gallery.html`: the web player's multi-image view of one run.

One self-contained page: inline CSS, one small inline script, images by relative links
(`images/generated-image-N.png`), so the folder can be moved, zipped or served as it is.
A Content-Security-Policy forbids every network request and every script but ours (by
hash): even if a data string escaped `_e` by mistake, it could neither run nor phone home.
"""

from __future__ import annotations

import base64
import hashlib
from html import escape
from typing import Any

from cluster.output.report import FinalImage, RunOutcome

RANDOM_WEIGHTS_NOTE = "random-weight test models: scores say nothing about real quality"

# Records on <body> whether every image decoded, so the player (or a headless browser in
# the tests) can check the page without parsing it: data-images-loaded/-total, data-cards.
_SELF_CHECK = (
    "addEventListener('load',function(){"
    "var imgs=Array.prototype.slice.call(document.images),d=document.body.dataset;"
    "d.imagesTotal=imgs.length;"
    "d.imagesLoaded=imgs.filter(function(i){return i.complete&&i.naturalWidth>0;}).length;"
    "d.cards=document.querySelectorAll('.card').length;});"
)
_SELF_CHECK_HASH = base64.b64encode(hashlib.sha256(_SELF_CHECK.encode()).digest()).decode()
# `file:` as well as 'self': what a file:// page's origin is, is left to each browser (Chromium
# counts its siblings as 'self'; others may not). Local files only: still no network.
CSP = (f"default-src 'none'; img-src 'self' file:; style-src 'unsafe-inline'; "
       f"script-src 'sha256-{_SELF_CHECK_HASH}'; base-uri 'none'; form-action 'none'")

_CSS = """
body{font:15px/1.45 system-ui,sans-serif;margin:0;background:#16181d;color:#e6e6e6}
header,main,section{padding:1rem 1.5rem}header{background:#1f232b;border-bottom:1px solid #333}
h1{font-size:1.15rem;margin:0 0 .5rem;white-space:pre-wrap;word-break:break-word}
dl.meta{display:flex;flex-wrap:wrap;gap:.3rem 1.5rem;margin:0}dl.meta div{display:flex;gap:.4rem}
dt{color:#9aa3b2}dd{margin:0}.note{color:#f0b429;margin:.5rem 0 0}
.grid{display:grid;grid-template-columns:repeat(auto-fill,minmax(240px,1fr));gap:1rem}
.card{background:#1f232b;border:2px solid #2c313a;border-radius:8px;padding:.6rem;position:relative}
.card.primary{border-color:#3fb950}.card img{width:100%;height:auto;image-rendering:pixelated;border-radius:4px}
.badge{display:inline-block;font-size:.75rem;padding:0 .4rem;border-radius:4px;margin-right:.3rem}
.badge.primary{background:#3fb950;color:#000}.badge.below{background:#d29922;color:#000}
.card dl{display:grid;grid-template-columns:auto minmax(0,1fr);gap:.1rem .6rem;margin:.4rem 0 0;font-size:.85rem}
.card dd{overflow-wrap:anywhere}
.unavailable{color:#9aa3b2}li.failed{margin:.3rem 0}code{color:#ff7b72}
table{border-collapse:collapse}th,td{border:1px solid #333;padding:.3rem .5rem;text-align:center}
td img{width:72px;height:auto;image-rendering:pixelated}
"""


def _e(value: Any) -> str:
    return escape(str(value), quote=True)


def _seed(seed: int | None) -> str:
    return "—" if seed is None else str(seed)


def _num(value: float | None) -> str:
    return "—" if value is None else f"{value:.3f}"


def _header(outcome: RunOutcome, report: dict) -> str:
    req, summary = outcome.request, report["generation_summary"]
    facts = [
        ("Strategy", req.generation_strategy),
        ("Made", len(outcome.images)),
        ("Planned", outcome.planned_total),
        ("Failed", len(outcome.failures)),
        ("Total time", f"{outcome.total_seconds:.2f} s"),
        ("Status", summary["status"]),
        ("Comparison", "on" if req.enable_comparison else "off"),
    ]
    if outcome.effective_threshold is not None:
        relaxed = " (relaxed)" if outcome.quality_relaxed else ""
        facts.append(("Threshold", f"{outcome.effective_threshold:.3f}{relaxed}"))
    parts = ["<header>", f'<h1 id="prompt">{_e(req.image_prompt)}</h1>', '<dl class="meta">']
    parts += [f"<div><dt>{_e(k)}</dt><dd>{_e(v)}</dd></div>" for k, v in facts]
    parts.append("</dl>")
    if outcome.error is not None:
        parts.append(f'<p class="note"><code>{_e(outcome.error.code)}</code> {_e(outcome.error.message)}</p>')
    if any(f.image.weights == "random" for f in outcome.images):
        parts.append(f'<p class="note" id="weights-note">{_e(RANDOM_WEIGHTS_NOTE)}</p>')
    by_reason: dict[str, list[str]] = {}
    for name, reason in run_wide_unavailable(outcome).items():
        by_reason.setdefault(reason, []).append(name.replace("_", " "))
    for reason, names in by_reason.items():
        parts.append(f'<p class="note unavailable-note">{_e(" and ".join(names))}: unavailable for every image: '
                     f"{_e(reason)}</p>")
    parts.append("</header>")
    return "\n".join(parts)


def run_wide_unavailable(outcome: RunOutcome) -> dict[str, str]:
    """Scores missing from every image for one reason (no scorer, no aesthetic head): a fact about
    the run, said once in the header instead of in every card."""
    if not outcome.images:
        return {}
    first = outcome.images[0].quality.unavailable
    return {name: reason for name, reason in first.items()
            if all(f.quality.unavailable.get(name) == reason for f in outcome.images)}


def _card(final: FinalImage, primary: bool, run_wide: dict[str, str]) -> str:
    task, quality = final.image.task, final.quality
    badges = ('<span class="badge primary">Primary</span>' if primary else "") + (
        '<span class="badge below">below threshold</span>' if final.below_threshold else "")
    rows = [
        ("Model", _e(task.model)),
        ("Seed", _e(_seed(task.seed))),
        ("Variation", _e(task.prompt_variation)),
        ("Time", _e(f"{final.image.seconds:.2f} s")),
        ("Quality", f"{_e(_num(quality.overall))} ({_e(quality.tier)})"),
    ]
    for name, value in quality.detailed.items():
        if value is None and name in run_wide:
            shown = '<span class="unavailable">unavailable (see above)</span>'
        elif value is None:
            reason = quality.unavailable.get(name, "no reason recorded")
            shown = f'<span class="unavailable">unavailable: {_e(reason)}</span>'
        else:
            shown = _e(_num(value))
        rows.append((_e(name.replace("_", " ")), shown))
    alt = f"{task.model}, seed {_seed(task.seed)}"
    return "\n".join([
        f'<article class="card{" primary" if primary else ""}" data-index="{final.position}" '
        f'id="image-{final.position + 1}">',
        f"<div>{badges}</div>" if badges else "",
        f'<img src="images/{_e(final.filename)}" alt="{_e(alt)}" width="{final.image.width}" '
        f'height="{final.image.height}">',
        "<dl>" + "".join(f"<dt>{k}</dt><dd>{v}</dd>" for k, v in rows) + "</dl>",
        "</article>",
    ])


def _failed(outcome: RunOutcome) -> str:
    items = [
        f'<li class="failed" data-planned-index="{f.task.index}">planned #{f.task.index} on '
        f"<strong>{_e(f.task.model)}</strong>: <code>{_e(f.code)}</code> {_e(f.message)}</li>"
        for f in outcome.failures
    ]
    return '<section id="failed"><h2>Failed generations</h2><ul>' + "\n".join(items) + "</ul></section>"


def _comparison(outcome: RunOutcome, report: dict) -> str:
    tasks = [f.image.task for f in outcome.images] + [f.task for f in outcome.failures]
    # models that only failed keep a row: an empty row is itself the comparison's finding
    models = list(dict.fromkeys(t.model for t in tasks))
    seeds = sorted({t.seed for t in tasks}, key=lambda s: (s is None, s or 0))
    cells: dict[tuple[str, int | None], FinalImage] = {}
    for final in outcome.images:
        cells.setdefault((final.model, final.image.task.seed), final)
    per_model = report.get("model_comparison", {}).get("per_model", {})
    head = "".join(f"<th>seed {_e(_seed(s))}</th>" for s in seeds)
    rows = []
    for model in models:
        tds = []
        for seed in seeds:
            final = cells.get((model, seed))
            if final is None:
                tds.append("<td>—</td>")
            else:
                alt = f"{model}, seed {_seed(seed)}"
                tds.append(f'<td><a href="#image-{final.position + 1}"><img src="images/{_e(final.filename)}" '
                           f'alt="{_e(alt)}"></a></td>')
        mean = per_model.get(model, {}).get("mean_quality")
        rows.append(f'<tr data-model="{_e(model)}"><th>{_e(model)}</th>{"".join(tds)}<td>{_e(_num(mean))}</td></tr>')
    return ('<section><h2>Model comparison</h2><table id="comparison"><thead><tr><th>model</th>'
            f"{head}<th>mean score</th></tr></thead><tbody>" + "\n".join(rows) + "</tbody></table></section>")


def render_gallery(outcome: RunOutcome, report: dict) -> str:
    run_wide = run_wide_unavailable(outcome)
    cards = [_card(f, f.position == outcome.primary, run_wide) for f in outcome.images]
    body = [_header(outcome, report), '<main><div class="grid">', *cards, "</div></main>"]
    if outcome.request.enable_comparison:
        body.append(_comparison(outcome, report))
    if outcome.failures:
        body.append(_failed(outcome))
    return "\n".join([
        "<!DOCTYPE html>",
        '<html lang="en">',
        "<head>",
        '<meta charset="utf-8">',
        f'<meta http-equiv="Content-Security-Policy" content="{_e(CSP)}">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        "<title>kamui-multi-image gallery</title>",
        f"<style>{_CSS}</style>",
        "</head>",
        "<body>",
        *body,
        f"<script>{_SELF_CHECK}</script>",
        "</body>",
        "</html>",
        "",
    ])
