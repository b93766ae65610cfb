"""Failures, proven by injecting them: killed replicas, failing models, a full disk, signals,
hostile input, and a soak with no leaks."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cluster.entrypoints.cli import main
from cluster.errors import ImageGenError
from cluster.output.github_output import parse_outputs
from cluster.planning.request import parse_request
from cluster.pipeline.run import run_generation
from tests.helpers import make_request, quick_limits, read_json, scripted_registry
from tests.scripted_backend import read_log

ROOT = Path(__file__).resolve().parent.parent


def wait_for(predicate, timeout: float = 60.0, interval: float = 0.1):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError("condition not met in time")


@pytest.mark.usefixtures("ray_session")
def test_a_replica_killed_mid_run_is_restarted_and_the_run_completes(tmp_path):
    registry = scripted_registry(tmp_path, {"local": {"script": {"latency": 0.6}}})
    request = make_request(registry, tmp_path, models="local", image_count=10, max_parallel=1)
    log = tmp_path / "calls.jsonl"
    results = {}
    runner = threading.Thread(target=lambda: results.update(r=run_generation(request, registry, quick_limits())))
    runner.start()
    # kill the replica's worker process while its third call runs
    third = wait_for(lambda: [e for e in read_log(log) if e["event"] == "start"][2:3])
    os.kill(third[0]["pid"], signal.SIGKILL)
    runner.join(timeout=120)
    result = results["r"]
    assert len(result.outcome.images) == 10 and result.exit_code == 0
    indices = [f.image.task.index for f in result.outcome.images]
    assert sorted(indices) == list(range(10))  # every image once: nothing lost, nothing twice
    report = read_json(tmp_path / "out/metadata/generation-report.json")
    assert report["models"]["local"]["replicas"][0]["restarts"] >= 1
    retried = [i for i in report["images"] if len(i["attempts"]) > 1]
    assert retried and retried[0]["attempts"][0]["error_code"] == "IMG_020"
    assert "died" in retried[0]["attempts"][0]["message"]
    pids = {e["pid"] for e in read_log(log) if e["event"] == "start"}
    assert len(pids) == 2  # the killed process and its restarted successor
    assert len(list((tmp_path / "out/images").glob("generated-image-*.png"))) == 10


@pytest.mark.usefixtures("ray_session")
def test_a_failing_model_hands_its_images_to_another(tmp_path):
    registry = scripted_registry(tmp_path, {
        "flaky": {"speed": 4, "script": {"latency": 0.05, "fail_calls": [1], "fail_code": "IMG_020"}},
        "steady": {"speed": 2, "script": {"latency": 0.05}},
    })
    request = make_request(registry, tmp_path, models="flaky,steady", image_count=1)
    result = run_generation(request, registry, quick_limits())
    assert len(result.outcome.images) == 2
    moved = [f for f in result.outcome.images if len(f.image.attempts) > 1]
    assert [(a.model, a.code) for a in moved[0].image.attempts] == [("flaky", "IMG_020"), ("steady", None)]
    report = read_json(tmp_path / "out/metadata/generation-report.json")
    assert any(d["strategy"] == "fallback_model" and d["from_model"] == "flaky" for d in report["degradations"])


@pytest.mark.usefixtures("ray_session")
def test_all_models_failing_exits_1_with_a_report_and_no_primary(tmp_path, monkeypatch, capsys):
    registry = scripted_registry(tmp_path, {
        "bad-a": {"script": {"latency": 0.02, "fail_calls": list(range(1, 20)), "fail_code": "IMG_020"}},
        "bad-b": {"script": {"latency": 0.02, "fail_calls": list(range(1, 20)), "fail_code": "IMG_020"}},
    })
    monkeypatch.setenv("GITHUB_OUTPUT", str(tmp_path / "gh"))
    code = main(["generate", "--image-prompt", "a fox", "--folder-name", "out", "--models", "bad-a,bad-b",
                 "--config", str(registry.path), "--image-count", "2"])
    err = capsys.readouterr().err
    assert code == 1
    assert err.strip().splitlines()[-1].startswith("error IMG_020: ")
    report = read_json(tmp_path / "out/metadata/generation-report.json")
    assert report["generation_summary"]["status"] == "failed"
    assert report["generation_summary"]["primary_image_index"] is None
    assert report["generation_summary"]["error"]["code"] == "IMG_020"
    assert len(report["failed_images"]) == 4
    for failed in report["failed_images"]:
        assert {a["model"] for a in failed["attempts"]} == {"bad-a", "bad-b"}  # tried the other model too
        assert all(a["error_code"] == "IMG_020" and a["duration_seconds"] >= 0 for a in failed["attempts"])
    assert not (tmp_path / "out/images/generated-image.png").exists()
    outputs = parse_outputs((tmp_path / "gh").read_text())
    assert outputs["image-completed"] == "false" and outputs["images-completed"] == "0"


def mount_tmpfs(mount: Path, size: str) -> None:
    """A small filesystem to fill. Mounting needs root: elsewhere the test skips, but CI (root)
    sets KAMUI_REQUIRE_TMPFS so that a failed mount fails the test instead of hiding it."""
    mount.mkdir()
    try:
        done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(mount)], capture_output=True)
        why = "" if done.returncode == 0 else done.stderr.decode().strip() or f"mount exited {done.returncode}"
    except OSError as exc:  # no `mount` at all
        why = str(exc)
    if why:
        why = f"cannot mount a tmpfs here: {why}"
        if os.environ.get("KAMUI_REQUIRE_TMPFS"):
            pytest.fail(f"KAMUI_REQUIRE_TMPFS is set but {why} (run as root, or with CAP_SYS_ADMIN)")
        pytest.skip(f"{why}; set KAMUI_REQUIRE_TMPFS to require it")


@pytest.fixture
def tiny_disk(tmp_path):
    mount = tmp_path / "disk"
    mount_tmpfs(mount, "4m")
    yield mount
    subprocess.run(["umount", "-l", str(mount)], capture_output=True)


@pytest.mark.parametrize("required, outcome", [("1", pytest.fail.Exception), ("", pytest.skip.Exception)])
def test_a_tmpfs_that_cannot_be_mounted_fails_where_it_is_required(tmp_path, monkeypatch, required, outcome):
    monkeypatch.setenv("PATH", str(tmp_path))  # no `mount` to run
    monkeypatch.setenv("KAMUI_REQUIRE_TMPFS", required)
    with pytest.raises(outcome, match="cannot mount a tmpfs"):
        mount_tmpfs(tmp_path / "disk", "4m")


def test_ci_requires_the_disk_tests_and_chromium():
    exported = [line.strip() for line in (ROOT / ".ci/run").read_text().splitlines() if line.startswith("export ")]
    assert "export KAMUI_REQUIRE_TMPFS=1" in exported and "export KAMUI_REQUIRE_CHROMIUM=1" in exported


def test_a_full_disk_is_img_005_before_any_generation(tmp_path, tiny_disk, registry):
    (tiny_disk / "filler").write_bytes(b"\0" * (3 * 1024 * 1024))
    scripted = scripted_registry(tmp_path, {"local": {}})
    request = make_request(scripted, tmp_path, models="local", folder_name=str(tiny_disk / "out"))
    with pytest.raises(ImageGenError) as info:
        run_generation(request, scripted, quick_limits())
    assert info.value.code == "IMG_005" and str(tiny_disk) in info.value.message
    assert not (tiny_disk / "out").exists() and not (tmp_path / "calls.jsonl").exists()


@pytest.mark.usefixtures("ray_session")
def test_a_disk_that_fills_during_the_run_is_img_005_and_leaves_no_temporary_files(tmp_path):
    mount = tmp_path / "disk"
    mount_tmpfs(mount, "64m")
    try:
        registry = scripted_registry(tmp_path, {"local": {"script": {"latency": 0.05, "fill_disk": str(mount / "hog")}}})
        request = make_request(registry, tmp_path, models="local", folder_name=str(mount / "out"), image_count=2)
        with pytest.raises(ImageGenError) as info:
            run_generation(request, registry, quick_limits())
        assert info.value.code == "IMG_005" and "temporary files were removed" in info.value.message
        # no staging folder, no half-written output; the journal keeps what finished, for a rerun once
        # there is room again
        assert sorted(p.name for p in mount.iterdir()) == [".out.multi-image-journal", "hog"]
        journal = (mount / ".out.multi-image-journal" / "journal.jsonl").read_text().splitlines()
        for line in journal[1:]:  # every image a line names is whole
            entry = json.loads(line)
            data = (mount / ".out.multi-image-journal" / entry["file"]).read_bytes()
            assert hashlib.sha256(data).hexdigest() == entry["sha256"]
    finally:
        subprocess.run(["umount", "-l", str(mount)], capture_output=True)


@pytest.mark.usefixtures("ray_session")
# SIGINT to a joined run's driver; SIGTERM to the driver alone is test_durability's `timeout` case
@pytest.mark.parametrize("signum,exit_code", [(signal.SIGINT, 130)])
def test_a_signal_stops_new_work_and_writes_a_consistent_partial_report(tmp_path, signum, exit_code):
    import ray

    registry = scripted_registry(tmp_path, {"slow": {"script": {"latency": 0.8}}})
    out = tmp_path / "out"
    command = [sys.executable, "-m", "cluster.entrypoints.cli", "generate", "--image-prompt", "a fox", "--folder-name", str(out),
               "--models", "slow", "--image-count", "8", "--max-parallel", "1", "--config", str(registry.path),
               "--address", ray.get_runtime_context().gcs_address]
    # run from the repository root: the joined cluster's workers import the scripted model from there
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    process = subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    wait_for(lambda: len([e for e in read_log(tmp_path / "calls.jsonl") if e["event"] == "end"]) >= 2)
    process.send_signal(signum)
    stdout, stderr = process.communicate(timeout=60)
    assert process.returncode == exit_code, stderr
    assert "Traceback" not in stderr
    report = read_json(out / "metadata/generation-report.json")
    summary = report["generation_summary"]
    made = summary["successful_generations"]
    assert summary["stopped"] == "interrupted" and summary["status"] == "partial" and 2 <= made < 8
    assert made + summary["failed_generations"] == 8
    assert {f["error_code"] for f in report["failed_images"]} <= {"IMG_021"}
    assert sorted(p.name for p in (out / "images").glob("generated-image-*.png")) == \
        [f"generated-image-{i}.png" for i in range(1, made + 1)]
    # no staging or retired folder left; the journal stays, so the same request run again resumes
    assert [p.name for p in tmp_path.iterdir() if ".multi-image-" in p.name] == [".out.multi-image-journal"]
    # a different request into the same folder starts clean
    rerun = subprocess.run([*command, "--image-count", "1"], cwd=ROOT, env=env, capture_output=True,
                           text=True, timeout=120)
    assert rerun.returncode == 0, rerun.stderr
    assert read_json(out / "metadata/generation-report.json")["generation_summary"]["successful_generations"] == 1
    assert sorted(p.name for p in (out / "images").iterdir()) == ["generated-image-1.png", "generated-image.png"]
    assert not [p for p in tmp_path.iterdir() if ".multi-image-" in p.name]


# --- hostile input -------------------------------------------------------------------------

FIELDS = ("image_prompt", "folder_name", "image_count", "models", "generation_strategy", "enable_comparison",
          "quality_threshold", "max_parallel", "seed", "width", "height", "steps", "upload_uri", "signed_urls",
          "scorer")
values = st.one_of(
    st.none(),
    st.text(max_size=40),
    st.sampled_from(["", " ", "0", "1", "-1", "10", "11", "1e9", "nan", "inf", "true", "auto", "tiny-flux",
                     "tiny-flux,tiny-sd", "..", "/", "../x", "gs://b", "gs://bucket-x/p", "\x00", "é", "９",
                     "1_0", "0x10", " 5 ", "smart", "none", "tiny-clip"]),
    st.integers(min_value=-10**20, max_value=10**20).map(str),
    st.floats(allow_nan=True, allow_infinity=True).map(str),
)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(raw=st.fixed_dictionaries({}, optional={f: values for f in FIELDS}))
def test_any_input_validates_or_gives_an_img_error(registry, tmp_path, raw):
    try:
        request = parse_request(raw, registry, cwd=tmp_path)
    except ImageGenError as exc:
        assert exc.code.startswith("IMG_0") and exc.message
        return
    assert 1 <= request.image_count <= 10 and 0.0 <= request.quality_threshold <= 1.0
    assert request.image_prompt.strip() == request.image_prompt and request.image_prompt
    assert ".." not in request.folder_name.parts


@settings(max_examples=150, deadline=None)
@given(argv=st.lists(st.one_of(st.sampled_from(["--image-count", "--models", "--folder-name", "--image-prompt",
                                                "--seed", "--bogus", "-x", "--", "--max-parallel=2"]),
                               st.text(max_size=12)), max_size=8))
def test_any_command_line_gives_a_request_or_an_img_error(argv):
    from cluster.entrypoints.cli import build_parser

    if any(a in ("-h", "--help") or a.startswith("--h") for a in argv):
        return
    try:
        build_parser().parse_args(["generate", *argv])
    except ImageGenError as exc:
        assert exc.code == "IMG_011"


# --- soak ----------------------------------------------------------------------------------


@pytest.mark.slow  # about a minute: `./scripts/test.sh -m slow`
@pytest.mark.usefixtures("ray_session")
def test_twenty_runs_against_one_ray_instance_do_not_leak(tmp_path):
    import psutil

    registry = scripted_registry(tmp_path, {"local": {"script": {"latency": 0.01}}})

    def ray_workers() -> list[psutil.Process]:
        return [p for p in psutil.process_iter(["name", "cmdline"])
                if "default_worker.py" in " ".join(p.info["cmdline"] or []) or (p.info["name"] or "").startswith("ray::")]

    def settle() -> tuple[int, int]:
        time.sleep(1.0)  # killed actors' processes take a moment to exit
        procs = ray_workers()
        return len(procs), sum(p.memory_info().rss for p in procs if p.is_running())

    driver = psutil.Process()
    counts, rss = [], []
    for i in range(20):
        request = make_request(registry, tmp_path, models="local", folder_name=f"soak-{i}")
        assert run_generation(request, registry, quick_limits()).exit_code == 0
        if i in (4, 19):
            count, memory = settle()
            counts.append(count)
            rss.append(driver.memory_info().rss + memory)
    assert counts[1] <= counts[0], f"Ray worker processes grew: {counts}"
    assert rss[1] - rss[0] < 150 * 2**20, f"memory grew by {(rss[1] - rss[0]) / 2**20:.0f} MiB over 15 runs"
