"""gallery.html: structure, escaping and self-containment; then a real headless Chromium load."""

from __future__ import annotations

import os
import re
import subprocess
from dataclasses import dataclass, field, replace
from html.parser import HTMLParser
from pathlib import Path

import pytest

from cluster.output.gallery import RANDOM_WEIGHTS_NOTE, render_gallery
from cluster.planning.request import parse_request
from cluster.work import FailedImage, ImageTask
from cluster.output.writer import write_run
from tests.helpers import generated, outcome_for

CHROMIUM = Path("/usr/bin/chromium")
TITLE = "kamui-multi-image gallery"
HOSTILE_PROMPT = "<script>alert('x')</script> & \"quotes\""
# what the browser test feeds in: each would change the title if it ever ran
PWN_PROMPT = "<script>document.title='pwned'</script> & \"quotes\""
PWN_MESSAGE = "<img src=x onerror=\"document.title='pwned-message'\">"
PWN_VARIATION = "\"><script>document.title='pwned-variation'</script>"


@dataclass
class Page:
    """What a test needs from the page, read with the standard library's parser."""

    title: str = ""
    prompt: str = ""
    body: dict = field(default_factory=dict)
    cards: list[dict] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)
    tables: dict[str, list[list[str]]] = field(default_factory=dict)
    links: list[str] = field(default_factory=list)
    imgs: list[dict] = field(default_factory=list)
    scripts: int = 0
    csp: str = ""


class _Reader(HTMLParser):
    VOID = {"img", "meta", "br", "hr", "input", "link", "source", "wbr"}

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.page = Page()
        self._capture: list[list] = []  # [tag, depth, sink] per open capture
        self._row: list[str] | None = None
        self._table: str | None = None

    def handle_starttag(self, tag, attrs):
        a = {k: (v or "") for k, v in attrs}
        p = self.page
        for cap in self._capture:
            if cap[0] == tag and tag not in self.VOID:
                cap[1] += 1
        classes = a.get("class", "").split()
        if tag == "title":
            self._open(tag, "title")
        elif a.get("id") == "prompt":
            self._open(tag, "prompt")
        elif tag == "body":
            p.body = a
        elif tag == "article" and "card" in classes:
            p.cards.append({**a, "classes": classes, "text": ""})
            self._open(tag, "card")
        elif tag == "li" and "failed" in classes:
            p.failed.append("")
            self._open(tag, "failed")
        elif tag == "table":
            self._table = a.get("id", "")
            p.tables[self._table] = []
        elif tag == "tr" and self._table is not None:
            self._row = []
        elif tag in ("td", "th") and self._row is not None:
            self._row.append("")
        elif tag == "script":
            p.scripts += 1
        elif tag == "meta" and a.get("http-equiv", "").lower() == "content-security-policy":
            p.csp = a.get("content", "")
        if tag == "img":
            p.imgs.append(a)
            if self._row:
                self._row[-1] += f"[img {a.get('src')}]"
        for name in ("src", "href"):
            if name in a:
                p.links.append(a[name])

    def _open(self, tag: str, sink: str) -> None:
        self._capture.append([tag, 1, sink])

    def handle_endtag(self, tag):
        for cap in list(self._capture):
            if cap[0] == tag:
                cap[1] -= 1
                if cap[1] == 0:
                    self._capture.remove(cap)
        if tag == "tr" and self._row is not None:
            self.page.tables[self._table].append(self._row)
            self._row = None
        elif tag == "table":
            self._table = None

    def handle_data(self, data):
        p = self.page
        for _, _, sink in self._capture:
            if sink == "title":
                p.title += data
            elif sink == "prompt":
                p.prompt += data
            elif sink == "card":
                p.cards[-1]["text"] += data
            elif sink == "failed":
                p.failed[-1] += data
        if self._row:
            self._row[-1] += data.strip()


def parse_page(text: str) -> Page:
    reader = _Reader()
    reader.feed(text)
    reader.close()
    return reader.page


def make_request(registry, tmp_path, prompt="a red fox", comparison=False):
    return parse_request({"image_prompt": prompt, "folder_name": "out", "models": "tiny-flux,tiny-sd",
                          "enable_comparison": "true" if comparison else "false"}, registry, cwd=tmp_path)


def failure(index: int, model: str, seed: int | None, code="IMG_003", message="timed out after 60 s") -> FailedImage:
    return FailedImage(ImageTask(index, model, "a red fox", seed, 32, 32, 2, 0.0), code, message)


def comparison_run(registry, tmp_path, prompt="a red fox", comparison=True, message="timed out after 60 s"):
    """Same seeds for both models, one of tiny-sd's images failed."""
    images = [generated(0, "tiny-flux", 10), generated(1, "tiny-flux", 11), generated(2, "tiny-sd", 10)]
    return outcome_for(make_request(registry, tmp_path, prompt, comparison), images,
                       [failure(3, "tiny-sd", 11, "IMG_020", message)])


def render(outcome, tmp_path) -> tuple[str, Page, Path]:
    write_run(outcome, gallery=render_gallery)
    path = tmp_path / "out" / "gallery.html"
    text = path.read_text(encoding="utf-8")
    return text, parse_page(text), path


def test_one_card_per_image_with_its_scores(registry, tmp_path):
    images = [generated(0, "tiny-flux", 1), generated(1, "tiny-sd", 2), generated(2, "tiny-flux", 3)]
    outcome = outcome_for(make_request(registry, tmp_path), images)
    text, page, path = render(outcome, tmp_path)
    assert text.startswith("<!DOCTYPE html>")
    assert page.title == TITLE and page.prompt == "a red fox"
    assert [c["data-index"] for c in page.cards] == ["0", "1", "2"]
    assert [i["src"] for i in page.imgs] == [f"images/generated-image-{n}.png" for n in (1, 2, 3)]
    for img, final in zip(page.imgs, outcome.images):
        assert (path.parent / img["src"]).read_bytes() == final.image.png
        assert final.model in img["alt"] and f"seed {final.image.task.seed}" in img["alt"]
    for card, final in zip(page.cards, outcome.images):
        assert final.model in card["text"] and f"{final.quality.overall:.3f}" in card["text"]
        assert final.quality.tier in card["text"] and f"{final.image.seconds:.2f} s" in card["text"]
        assert "original" in card["text"]
        assert f"{final.quality.detailed['technical_quality']:.3f}" in card["text"]
        # weight-free scoring: alignment and aesthetics are unavailable; the reason is the run's, said once
        assert card["text"].count("unavailable (see above)") == 2 and "no CLIP scorer" not in card["text"]
    assert text.count("no CLIP scorer in this run") == 1
    assert "prompt alignment and aesthetic appeal: unavailable for every image: no CLIP scorer in this run" in text
    # counts and the random-weights warning in the header
    assert re.search(r"Made</dt><dd>3<.*Planned</dt><dd>3<.*Failed</dt><dd>0<", text, re.S)
    assert "1.50 s" in text and RANDOM_WEIGHTS_NOTE in text
    assert 'id="failed"' not in text and 'id="comparison"' not in text


def test_primary_card_is_marked(registry, tmp_path):
    images = [generated(0, "tiny-flux", 1), generated(1, "tiny-sd", 2), generated(2, "tiny-flux", 3)]
    outcome = outcome_for(make_request(registry, tmp_path), images)
    outcome.primary = 1  # not whatever the scores chose, so the mark must follow outcome.primary
    _, page, _ = render(outcome, tmp_path)
    marked = [c for c in page.cards if "primary" in c["classes"]]
    assert [c["data-index"] for c in marked] == ["1"]
    assert "Primary" in marked[0]["text"]
    assert all("Primary" not in c["text"] for c in page.cards if c is not marked[0])


def test_missing_seed_and_below_threshold(registry, tmp_path):
    image = generated(0, "tiny-flux", 1)
    image.task = replace(image.task, seed=None, prompt_variation="lighting")
    outcome = outcome_for(make_request(registry, tmp_path), [image, generated(1, "tiny-sd", 2)])
    outcome.images[0].below_threshold = True
    _, page, _ = render(outcome, tmp_path)
    assert "Seed—" in page.cards[0]["text"].replace("\n", "") and "seed —" in page.imgs[0]["alt"]
    assert "lighting" in page.cards[0]["text"]
    assert "below threshold" in page.cards[0]["text"] and "below threshold" not in page.cards[1]["text"]


def test_no_weights_note_for_real_weights(registry, tmp_path):
    image = generated(0, "tiny-flux", 1)
    image.weights = "real"
    text, _, _ = render(outcome_for(make_request(registry, tmp_path), [image]), tmp_path)
    assert RANDOM_WEIGHTS_NOTE not in text


def test_failed_generations_are_listed(registry, tmp_path):
    outcome = comparison_run(registry, tmp_path, comparison=False)
    outcome.failures.append(failure(4, "tiny-flux", 12, "IMG_003", "timed out after 60 s"))
    outcome.planned_total += 1
    text, page, _ = render(outcome, tmp_path)
    assert 'id="failed"' in text
    assert len(page.failed) == 2
    assert "#3" in page.failed[0] and "tiny-sd" in page.failed[0] and "IMG_020" in page.failed[0]
    assert "#4" in page.failed[1] and "IMG_003" in page.failed[1] and "timed out after 60 s" in page.failed[1]
    assert re.search(r"Made</dt><dd>3<.*Planned</dt><dd>5<.*Failed</dt><dd>2<", text, re.S)


def test_comparison_grid_only_when_enabled(registry, tmp_path):
    text, page, _ = render(comparison_run(registry, tmp_path, comparison=False), tmp_path)
    assert 'id="comparison"' not in text and not page.tables

    outcome = comparison_run(registry, tmp_path, comparison=True)
    extra = generated(4, "tiny-sd", 99)
    extra.task = replace(extra.task, seed=None)
    outcome = outcome_for(outcome.request, [f.image for f in outcome.images] + [extra], outcome.failures)
    _, page, _ = render(outcome, tmp_path)
    rows = page.tables["comparison"]
    assert rows[0] == ["model", "seed 10", "seed 11", "seed —", "mean score"]  # sorted, None last
    flux, sd = rows[1], rows[2]
    assert flux[:4] == ["tiny-flux", "[img images/generated-image-1.png]", "[img images/generated-image-2.png]", "—"]
    # tiny-sd's seed-11 image failed: the cell says so
    assert sd[:4] == ["tiny-sd", "[img images/generated-image-3.png]", "—", "[img images/generated-image-4.png]"]
    means = {m: sum(f.quality.overall for f in outcome.images if f.model == m) / n
             for m, n in (("tiny-flux", 2), ("tiny-sd", 2))}
    assert flux[4] == f"{round(means['tiny-flux'], 4):.3f}" and sd[4] == f"{round(means['tiny-sd'], 4):.3f}"


def test_nothing_outside_the_folder_is_referenced(registry, tmp_path):
    text, page, path = render(comparison_run(registry, tmp_path), tmp_path)
    assert page.links
    for link in page.links:
        assert not re.match(r"^\s*([a-z][a-z0-9+.-]*:|//|\\\\)", link, re.I), link
        assert link.startswith("#") or (path.parent / link).is_file(), link
    assert "://" not in text and "@import" not in text and "url(" not in text
    assert "default-src 'none'" in page.csp
    assert page.scripts == 1


def test_data_strings_are_escaped(registry, tmp_path):
    outcome = comparison_run(registry, tmp_path, prompt=HOSTILE_PROMPT, message=PWN_MESSAGE)
    outcome.images[0].image.task = replace(outcome.images[0].image.task, prompt_variation=PWN_VARIATION)
    text, page, _ = render(outcome, tmp_path)
    assert "<script>alert" not in text and "<script>document" not in text and "<img src=x" not in text
    assert "&lt;script&gt;alert(&#x27;x&#x27;)&lt;/script&gt; &amp; &quot;quotes&quot;" in text
    assert page.scripts == 1  # only the page's own self-check
    assert page.prompt == HOSTILE_PROMPT
    assert PWN_MESSAGE in page.failed[0]
    assert PWN_VARIATION in page.cards[0]["text"]
    assert len(page.imgs) == 2 * len(outcome.images)  # cards + comparison cells, no injected <img>


# --- a real browser -------------------------------------------------------------------------


def chromium() -> Path:
    if CHROMIUM.is_file():
        return CHROMIUM
    if os.environ.get("KAMUI_REQUIRE_CHROMIUM"):
        pytest.fail(f"KAMUI_REQUIRE_CHROMIUM is set but {CHROMIUM} is missing (apt-get install chromium)")
    pytest.skip(f"{CHROMIUM} not installed (Debian package `chromium`); set KAMUI_REQUIRE_CHROMIUM to require it")


def chromium_command(binary: Path, profile: Path, page: Path) -> list[str]:
    return [
        str(binary), "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--disable-quic",
        "--no-first-run", "--disable-background-networking", "--disable-component-update", "--disable-sync",
        f"--user-data-dir={profile}", "--virtual-time-budget=5000", "--dump-dom", page.as_uri(),
    ]


def dump_dom(page: Path, tmp_path: Path) -> str:
    binary = chromium()
    home = tmp_path / "chromium-home"
    home.mkdir()
    env = {**os.environ, "HOME": str(home), "XDG_CONFIG_HOME": str(home / "config"),
           "XDG_CACHE_HOME": str(home / "cache")}
    done = subprocess.run(chromium_command(binary, home / "profile", page), capture_output=True, text=True,
                          timeout=60, env=env, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "<body" in done.stdout, done.stderr[-3000:]
    return done.stdout


@pytest.mark.parametrize("comparison", [False, True])
def test_chromium_loads_every_image_and_runs_no_data(registry, tmp_path, comparison):
    outcome = comparison_run(registry, tmp_path, prompt=PWN_PROMPT, comparison=comparison, message=PWN_MESSAGE)
    outcome.images[1].image.task = replace(outcome.images[1].image.task, prompt_variation=PWN_VARIATION)
    _, _, path = render(outcome, tmp_path)
    dom = parse_page(dump_dom(path, tmp_path))
    n = len(outcome.images)
    body = dom.body
    assert "data-images-loaded" in body, f"the page's self-check did not run: {body}"
    assert int(body["data-cards"]) == len(dom.cards) == n
    assert int(body["data-images-loaded"]) == int(body["data-images-total"]) == (2 * n if comparison else n)
    # none of the hostile strings ran: the title is ours and the prompt is shown as text
    assert dom.title == TITLE
    assert "<script>" in dom.prompt and dom.prompt == PWN_PROMPT
    assert dom.scripts == 1
    assert PWN_MESSAGE in dom.failed[0]
