"""The compatibility writer: layout, report schema, step outputs, atomic replacement."""

from __future__ import annotations

import json

import pytest

from cluster.output import writer as writer_module
from cluster.output.github_output import OUTPUT_NAMES, format_outputs, parse_outputs
from cluster.output.png import read_parameters
from cluster.planning.request import parse_request
from cluster.pipeline.stages.publish import step_outputs
from cluster.work import Attempt, FailedImage, ImageTask
from cluster.output.writer import write_run
from tests.helpers import generated, outcome_for, read_json

SEED_IMAGE_FIELDS = {"index", "filename", "model_used", "generation_time_seconds", "google_url", "quality_score",
                     "file_size_bytes", "resolution", "prompt_variation"}
SEED_SUMMARY_FIELDS = {"total_images", "successful_generations", "failed_generations", "total_time_seconds",
                       "average_time_per_image", "primary_image_index"}
SEED_COMPARISON_FIELDS = {"models_tested", "best_quality_model", "fastest_model", "most_consistent_model"}


@pytest.fixture
def request_(registry, tmp_path):
    return parse_request({"image_prompt": "a red fox", "folder_name": "out", "models": "tiny-flux,tiny-sd"},
                         registry, cwd=tmp_path)


def test_layout_and_report_schema(request_, tmp_path):
    images = [generated(0, "tiny-flux", 1), generated(1, "tiny-flux", 2), generated(2, "tiny-sd", 3)]
    outcome = outcome_for(request_, images)
    written = write_run(outcome)
    folder = tmp_path / "out"
    assert sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file()) == [
        "google-image-url.txt", "image-urls.json",
        "images/generated-image-1.png", "images/generated-image-2.png", "images/generated-image-3.png",
        "images/generated-image.png",
        "metadata/generation-report.json", "metadata/model-comparison.md", "metadata/quality-analysis.json",
    ]
    report = read_json(folder / "metadata/generation-report.json")
    assert SEED_SUMMARY_FIELDS <= set(report["generation_summary"])
    assert SEED_COMPARISON_FIELDS <= set(report["model_comparison"])
    for i, entry in enumerate(report["images"]):
        assert SEED_IMAGE_FIELDS <= set(entry)
        assert entry["index"] == i and entry["filename"] == f"generated-image-{i + 1}.png"
        assert entry["file_size_bytes"] == (folder / "images" / entry["filename"]).stat().st_size
        assert entry["resolution"] == "32x32"
        assert entry["google_url"] == (folder / "images" / entry["filename"]).as_uri()
    primary = report["generation_summary"]["primary_image_index"]
    assert primary == outcome.primary
    primary_bytes = (folder / "images" / "generated-image.png").read_bytes()
    assert primary_bytes == (folder / "images" / f"generated-image-{primary + 1}.png").read_bytes()
    assert (folder / "google-image-url.txt").read_text().strip() == (folder / "images/generated-image.png").as_uri()
    assert json.loads((folder / "image-urls.json").read_text()) == [e["google_url"] for e in report["images"]]
    assert report["model_comparison"]["models_tested"] == ["tiny-flux", "tiny-sd"]
    qa = read_json(folder / "metadata/quality-analysis.json")
    assert [i["overall_score"] for i in qa["images"]] == [e["quality_score"] for e in report["images"]]
    assert written.report_path == folder / "metadata/generation-report.json"


def test_pngs_carry_what_reproduces_them(request_, tmp_path):
    write_run(outcome_for(request_, [generated(0, "tiny-flux", 77, prompt="夕焼け \"sea\"")]))
    params = read_parameters((tmp_path / "out/images/generated-image-1.png").read_bytes())
    assert params["prompt"] == "夕焼け \"sea\"" and params["seed"] == 77 and params["model"] == "tiny-flux"
    assert (params["steps"], params["width"], params["height"]) == (2, 32, 32)


def test_step_outputs_are_the_nine_of_the_design_card(request_, tmp_path):
    outcome = outcome_for(request_, [generated(0, "tiny-flux", 1), generated(1, "tiny-sd", 2)])
    written = write_run(outcome)
    outputs = step_outputs(outcome, written)
    assert tuple(outputs) == OUTPUT_NAMES
    assert outputs["image-completed"] == "true" and outputs["images-completed"] == "2"
    assert json.loads(outputs["models-used"]) == ["tiny-flux", "tiny-sd"]
    assert json.loads(outputs["image-urls"]) == written.urls
    assert len(json.loads(outputs["quality-scores"])) == 2
    assert outputs["primary-image-index"] == str(outcome.primary)
    assert outputs["used-model"] == outcome.images[outcome.primary].model
    assert outputs["generation-report"] == "out/metadata/generation-report.json"
    assert parse_outputs(format_outputs(outputs)) == outputs


def test_a_failed_run_still_writes_a_report_that_says_why(request_, tmp_path):
    task = ImageTask(0, "tiny-flux", "a red fox", 1, 32, 32, 2, 0.0)
    failure = FailedImage(task, "IMG_020", "boom", [Attempt("tiny-flux", "tiny-flux-0", 0.1, "IMG_020", "boom")])
    outcome = outcome_for(request_, [], [failure])
    written = write_run(outcome)
    outputs = step_outputs(outcome, written)
    assert outputs["image-completed"] == "false" and outputs["primary-image-index"] == "-1"
    report = read_json(tmp_path / "out/metadata/generation-report.json")
    assert report["generation_summary"]["status"] == "failed"
    assert report["failed_images"][0]["error_code"] == "IMG_020"
    assert report["failed_images"][0]["attempts"][0]["error_code"] == "IMG_020"
    assert not (tmp_path / "out/images/generated-image.png").exists()
    assert (tmp_path / "out/google-image-url.txt").read_text() == ""


def test_rerun_replaces_the_previous_result_as_a_whole(request_, tmp_path):
    write_run(outcome_for(request_, [generated(i, "tiny-flux", i) for i in range(3)]))
    write_run(outcome_for(request_, [generated(0, "tiny-sd", 9)]))
    files = sorted(p.name for p in (tmp_path / "out/images").iterdir())
    assert files == ["generated-image-1.png", "generated-image.png"]
    assert read_json(tmp_path / "out/metadata/generation-report.json")["images"][0]["model_used"] == "tiny-sd"
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".out")]


def test_a_write_that_fails_midway_leaves_the_previous_result_intact(request_, tmp_path, monkeypatch):
    write_run(outcome_for(request_, [generated(0, "tiny-flux", 1)]))
    before = {p.relative_to(tmp_path): p.read_bytes() for p in (tmp_path / "out").rglob("*") if p.is_file()}
    real_write = writer_module.write_durably
    calls = {"n": 0}

    def flaky(path, data):
        calls["n"] += 1
        if calls["n"] == 3:
            raise OSError(28, "No space left on device")
        real_write(path, data)

    monkeypatch.setattr(writer_module, "write_durably", flaky)
    with pytest.raises(OSError):
        write_run(outcome_for(request_, [generated(i, "tiny-sd", i) for i in range(4)]))
    after = {p.relative_to(tmp_path): p.read_bytes() for p in (tmp_path / "out").rglob("*") if p.is_file()}
    assert after == before
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".out")]  # staging cleaned up


def test_multiline_and_hostile_output_values_round_trip():
    outputs = {"a": "one line", "b": "two\nlines", "c": "x\nghadelimiter_fake\nEOF", "d": "k=v<<EOF"}
    text = format_outputs(outputs)
    assert parse_outputs(text) == outputs


@pytest.mark.parametrize("umask", [0o022, 0o002, 0o077])
def test_the_results_folder_honours_the_umask(request_, tmp_path, umask):
    import os
    import stat

    previous = os.umask(umask)
    try:
        write_run(outcome_for(request_, [generated(0, "tiny-flux", 1)]))
    finally:
        os.umask(previous)
    folder = tmp_path / "out"
    for path in (folder, folder / "images", folder / "metadata"):
        assert stat.S_IMODE(path.stat().st_mode) == 0o777 & ~umask, path
    assert stat.S_IMODE((folder / "images/generated-image-1.png").stat().st_mode) == 0o666 & ~umask


def test_a_durable_write_that_runs_out_of_space_leaves_no_partial_file(tmp_path, monkeypatch):
    """A full disk fails the fsync after the bytes went to the page cache: the half-written file
    (a journal's `parts/*.tmp`) goes too, so "temporary files were removed" stays true."""
    import os

    def full(fd):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "fsync", full)
    target = tmp_path / "parts" / "3.png.tmp"
    target.parent.mkdir()
    with pytest.raises(OSError):
        writer_module.write_durably(target, b"\x89PNG" * 1000)
    assert list(target.parent.iterdir()) == []


def test_a_scratch_folder_is_the_same_folder_without_fsyncs(request_, tmp_path, monkeypatch):
    """An API answer's scratch folder (durable=False) has every file, byte for byte, that a durable
    write makes; only the fsyncs are skipped (it is removed once the answer is read)."""
    import os

    outcome = outcome_for(request_, [generated(0, "tiny-flux", 1), generated(1, "tiny-sd", 2)])

    def written(durable: bool) -> dict[str, bytes]:
        write_run(outcome, durable=durable)
        folder = tmp_path / "out"
        return {p.relative_to(folder).as_posix(): p.read_bytes() for p in folder.rglob("*") if p.is_file()}

    synced = []
    real_fsync = os.fsync
    monkeypatch.setattr(os, "fsync", lambda fd: (synced.append(fd), real_fsync(fd)))
    durable = written(True)
    assert len(synced) >= 7  # each file, each folder, the swap
    synced.clear()
    assert written(False) == durable and not synced
