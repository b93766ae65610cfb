"""The command line as a user meets it: a separate process, exit codes, one error line."""

from __future__ import annotations

import subprocess
import sys

import pytest

BAD_INPUTS = [
    (["--image-count", "11"], "IMG_001"),
    (["--models", "dall-e"], "IMG_002"),
    (["--models", "flux-schnell"], "IMG_002"),  # weights not downloaded
    (["--image-prompt", "   "], "IMG_009"),
    (["--quality-threshold", "2"], "IMG_012"),
    (["--generation-strategy", "random"], "IMG_013"),
    (["--max-parallel", "0"], "IMG_014"),
    (["--enable-comparison", "perhaps"], "IMG_015"),
    (["--folder-name", "../escape"], "IMG_016"),
    (["--width", "1000"], "IMG_017"),
    (["--config", "/nonexistent/models.yaml"], "IMG_018"),
    (["--timeout-per-image", "-5"], "IMG_025"),
    (["--unknown-flag", "1"], "IMG_011"),
]


def run(args: list[str], cwd) -> subprocess.CompletedProcess:
    base = ["--image-prompt", "a red fox", "--folder-name", "out", "--models", "tiny-flux"]
    # later flags win in argparse, so the bad value overrides the good default
    return subprocess.run([sys.executable, "-m", "cluster.cli", "generate", *base, *args],
                          cwd=cwd, capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize("args,code", BAD_INPUTS, ids=[c for _, c in BAD_INPUTS])
def test_bad_input_exits_2_with_one_line_and_writes_nothing(tmp_path, args, code):
    result = run(args, tmp_path)
    assert result.returncode == 2, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith(f"error {code}: "), result.stderr
    assert "Traceback" not in result.stderr
    assert list(tmp_path.iterdir()) == []


def test_debug_shows_the_traceback(tmp_path):
    result = run(["--image-count", "0", "--debug"], tmp_path)
    assert result.returncode == 2
    assert "Traceback" in result.stderr and "error IMG_001" in result.stderr


def test_help_lists_every_action_input():
    result = subprocess.run([sys.executable, "-m", "cluster.cli", "generate", "--help"],
                            capture_output=True, text=True, timeout=60)
    for flag in ("--image-prompt", "--folder-name", "--image-count", "--models", "--generation-strategy",
                 "--enable-comparison", "--quality-threshold", "--max-parallel", "--seed", "--width", "--height",
                 "--steps", "--address", "--config", "--debug"):
        assert flag in result.stdout


def test_driver_side_modules_import_without_torch():
    code = (
        "import sys, cluster.cli, cluster.run, cluster.scheduler, cluster.writer, models.registry, "
        "models.selection; assert 'torch' not in sys.modules and 'diffusers' not in sys.modules, 'heavy import'"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


def test_readme_documents_every_flag_of_every_command():
    """The README cannot fall behind the CLI: every option of every (sub)command is named there."""
    import argparse
    from pathlib import Path

    from cluster.cli import build_parser

    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text(encoding="utf-8")
    readme += (Path(__file__).resolve().parent.parent / "docs" / "warm-cluster.md").read_text(encoding="utf-8")

    def parsers(parser):
        yield parser
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                for sub in action.choices.values():
                    yield from parsers(sub)

    missing = sorted({flag for p in parsers(build_parser()) for a in p._actions for flag in a.option_strings
                      if flag.startswith("--") and flag != "--help" and flag not in readme})
    assert not missing, f"README does not mention: {missing}"
