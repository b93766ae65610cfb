"""What README states about behaviour, checked against the behaviour itself."""

from __future__ import annotations

import re
from pathlib import Path

from cluster.output.gallery import render_gallery
from cluster.output.writer import write_run
from tests.helpers import generated, make_request, outcome_for

ROOT = Path(__file__).resolve().parent.parent


def readme_section(title: str) -> str:
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    start = text.index(f"## {title}\n")
    end = text.find("\n## ", start + 1)
    return text[start:end if end != -1 else None]


def test_the_exit_status_paragraph_names_each_signals_status():
    # The CLI returns 130 on SIGINT and 143 on SIGTERM (tests/test_resilience.py sends both).
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    paragraph = text[text.index("Exit status:"):].split("\n\n", 1)[0]
    stated = {signal: code for code, signal in re.findall(r"`(\d+)` when [^`]*?\b(SIGINT|SIGTERM)\b", paragraph)}
    assert stated == {"SIGINT": "130", "SIGTERM": "143"}


def layout_paths(block: str) -> set[str]:
    """The files of the README's tree drawing, as paths relative to the run's folder."""
    paths, parents = set(), []
    for line in block.splitlines()[1:]:
        name = line.lstrip("│├└─ \u00a0").split("#", 1)[0].strip()
        if not name or name == "...":
            continue
        depth = (len(line) - len(line.lstrip("│├└─ \u00a0"))) // 4 - 1
        parents = parents[:depth]
        if name.endswith("/"):
            parents.append(name.rstrip("/"))
        else:
            paths.add("/".join([*parents, name]))
    return paths


def test_the_output_layout_lists_every_file_a_run_writes(registry, tmp_path):
    block = re.search(r"```\n(\{folder-name\}/\n.*?)```", readme_section("Output layout"), re.S).group(1)
    request = make_request(registry, tmp_path, models="tiny-flux")
    write_run(outcome_for(request, [generated(0, "tiny-flux", 5)]), gallery=render_gallery)
    folder = tmp_path / "out"
    written = {str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file()}
    assert "gallery.html" in written
    assert layout_paths(block) == written


def test_the_memory_plan_table_is_the_planners_at_the_batch_it_states():
    from cluster.planning.memory.planner import Need, choose
    from cluster.planning.memory.sizes import architecture_sizes

    text = readme_section("Real models on your GPU")
    assert "**batch 1**" in text
    table = re.search(r"\| card \(GiB\) \| host RAM (\d+) GiB \| host RAM (\d+) GiB \|\n.*?\n((?:\s*\|.*\|\n)+)", text)
    hosts = [int(table.group(1)), int(table.group(2))]
    sizes = architecture_sizes("flux1-schnell")
    rows = [[cell.strip() for cell in line.strip().strip("|").split("|")] for line in table.group(3).splitlines()]
    assert len(rows) == 4
    for card, *cells in rows:
        bounds = [int(n) for n in re.findall(r"\d+", card)]
        cards = list(range(bounds[0], bounds[-1] + 1))  # every whole GiB the row names
        if "and up" in card:
            cards.append(141)  # the largest card people have
        for host, cell in zip(hosts, cells):
            for card_gb in cards:
                plan = choose(sizes, Need(card_gb, host, 1)).plan
                if cell == "none fits":
                    assert plan is None, (card_gb, host)
                    continue
                label, footprint = re.fullmatch(r"`(.+)` \((\S+) GiB\)", cell).groups()
                assert plan is not None and (plan.label, plan.gpu_gb) == (label, float(footprint)), (card_gb, host)
