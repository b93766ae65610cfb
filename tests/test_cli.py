"""The command line as a user meets it: a separate process, exit codes, one error line."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

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
    return subprocess.run([sys.executable, "-m", "cluster.entrypoints.cli", "generate", *base, *args],
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
    result = subprocess.run([sys.executable, "-m", "cluster.entrypoints.cli", "generate", "--help"],
                            capture_output=True, text=True, timeout=60)
    for flag in ("--image-prompt", "--folder-name", "--image-count", "--models", "--generation-strategy",
                 "--enable-comparison", "--quality-threshold", "--max-parallel", "--seed", "--width", "--height",
                 "--steps", "--address", "--config", "--debug"):
        assert flag in result.stdout


def test_driver_side_modules_import_without_torch():
    code = (
        "import sys, cluster.entrypoints.cli, cluster.pipeline.run, cluster.engine.scheduler, cluster.output.writer, models.registry, "
        "models.selection; assert 'torch' not in sys.modules and 'diffusers' not in sys.modules, 'heavy import'"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


def test_readme_documents_every_flag_of_every_command():
    """The README cannot fall behind the CLI: every option of every (sub)command is named there."""
    import argparse
    from pathlib import Path

    from cluster.entrypoints.cli import build_parser

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


def test_generate_without_arguments_names_the_missing_required_flags(tmp_path):
    done = subprocess.run([sys.executable, "-m", "cluster.entrypoints.cli", "generate"], cwd=tmp_path, capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 2
    (line,) = [line for line in done.stderr.splitlines() if line.strip()]
    assert line.startswith("error IMG_011: ") and "--image-prompt" in line and "--folder-name" in line
    assert "empty" not in line and list(tmp_path.iterdir()) == []


def test_help_states_the_max_parallel_range_that_is_enforced():
    import re

    from cluster.entrypoints.cli import build_parser
    from cluster.errors import ImageGenError
    from cluster.planning.request import parse_max_parallel

    generate = next(a for a in build_parser()._actions if a.dest == "command").choices["generate"]
    (action,) = [a for a in generate._actions if "--max-parallel" in a.option_strings]
    low, high = map(int, re.search(r"(\d+)-(\d+)", action.help).groups())
    assert parse_max_parallel(str(low)) == low and parse_max_parallel(str(high)) == high
    for outside in (low - 1, high + 1):
        with pytest.raises(ImageGenError):
            parse_max_parallel(str(outside))


@pytest.mark.parametrize("flag, field", [("--enable-comparison", "enable_comparison"), ("--signed-urls", "signed_urls")])
def test_the_actions_boolean_flags_work_alone_or_with_a_value(registry, tmp_path, flag, field):
    from cluster.entrypoints.cli import REQUEST_FLAGS, build_parser
    from cluster.planning.request import parse_request

    def request(*extra):
        args = build_parser().parse_args(["generate", "--image-prompt", "a fox", *extra, "--folder-name", "out"])
        raw = {f.lstrip("-").replace("-", "_"): getattr(args, f.lstrip("-").replace("-", "_")) for f, _ in REQUEST_FLAGS}
        return parse_request(raw, registry, cwd=tmp_path)

    assert getattr(request(flag), field) is True  # bare, followed by another flag
    assert getattr(request(flag, "false"), field) is False and getattr(request(flag, "true"), field) is True
    assert getattr(request(), field) in (None, False)


def test_cluster_up_with_nothing_to_load_is_an_error_before_ray_starts(tmp_path):
    import os
    import shutil
    import tempfile

    temp = tempfile.mkdtemp(prefix="kr", dir="/tmp")  # where a `ray start` would record itself
    env = {**os.environ, "RAY_TMPDIR": temp}  # no weights (HF_HOME is the tests' own), no credentials
    try:
        done = subprocess.run([sys.executable, "-m", "cluster.entrypoints.cli", "cluster", "up", "--scorer", "none"], cwd=tmp_path,
                              env=env, capture_output=True, text=True, timeout=120)
        assert done.returncode == 2, done.stdout + done.stderr
        assert done.stderr.startswith("error IMG_002: ") and "--models tiny-flux" in done.stderr
        assert not (Path(temp) / "ray" / "ray_current_cluster").exists()  # no Ray was started
    finally:
        shutil.rmtree(temp, ignore_errors=True)
