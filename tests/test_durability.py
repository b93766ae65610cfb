"""Crash safety, as users stop runs: a signal to the whole process group (what `timeout`, a
cancelled CI job and `systemctl stop` send), a second signal, SIGKILL of the driver, a warm
cluster's head dying under a joined run; and resuming from the journal.

Every run here is a real `multi-image generate` process with its own embedded Ray (or a joined
`ray start` cluster in its own RAY_TMPDIR), started in a session of its own like a CI job."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
from PIL import Image

from cluster.output.durability.journal import RunJournal, journal_dir
from tests.helpers import generated, read_json, scripted_registry

ROOT = Path(__file__).resolve().parent.parent
IMAGES = 10


# --- the journal itself --------------------------------------------------------------------

def test_the_journal_keeps_what_verifies_and_only_for_the_same_request(tmp_path):
    folder = tmp_path / "out"
    images = [generated(i, "m", 100 + i) for i in range(3)]
    journal = RunJournal(folder)
    journal.start("key-1", [i.task for i in images], {"base_seed": 100}, None)
    for image in images:
        journal.record(image)
    journal.close()
    resumed = RunJournal(folder).load("key-1")
    assert [i.png for i in resumed.images] == [i.png for i in images]
    assert [i.task for i in resumed.images] == [i.task for i in images] and resumed.tasks == [i.task for i in images]
    # a truncated PNG (a disk that filled, a torn write) is not kept: it will be made again
    entry = json.loads((journal_dir(folder) / "journal.jsonl").read_text().splitlines()[2])
    part = journal_dir(folder) / entry["file"]
    part.write_bytes(part.read_bytes()[:100])
    resumed = RunJournal(folder).load("key-1")
    assert [i.task.index for i in resumed.images] == [0, 2]
    assert resumed.discarded == [{"index": 1, "reason": "its file does not match the hash journaled with it"}]
    # another request's journal is not resumed, and is gone
    assert RunJournal(folder).load("key-2") is None and not journal_dir(folder).exists()


# --- real runs, stopped the ways runs are stopped --------------------------------------------

@pytest.fixture
def slow_model(tmp_path):
    """A model that takes 0.7 s an image, one call at a time: a run of 10 lasts long enough to stop."""
    return scripted_registry(tmp_path, {"slow": {"script": {"latency": 0.7}}})


def command(registry, folder: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "cluster.entrypoints.cli", "generate", "--image-prompt", "a lighthouse at dusk",
            "--folder-name", str(folder), "--models", "slow", "--image-count", str(IMAGES), "--max-parallel", "1",
            "--config", str(registry.path), "--scorer", "none", "--json", *extra]


def run_env(**extra) -> dict:
    env = {**os.environ, "PYTHONPATH": str(ROOT), **extra}
    env.pop("RAY_ADDRESS", None)
    return env


def start(cmd: list[str], env: dict | None = None) -> subprocess.Popen:
    # a session of its own: the run, its Ray processes and nothing else get a group signal
    return subprocess.Popen(cmd, cwd=ROOT, env=env or run_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, start_new_session=True)


def wait_for_images(process: subprocess.Popen, count: int, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    done = 0
    for line in process.stdout:
        if line.startswith("{") and json.loads(line).get("event") == "image_done":
            done += 1
            if done >= count:
                return
        assert time.monotonic() < deadline, "the run made no images in time"
    raise AssertionError(f"the run ended after {done} images: {process.stderr.read()[-2000:]}")


def finish(process: subprocess.Popen, within: float) -> tuple[float, str]:
    started = time.monotonic()
    _, stderr = process.communicate(timeout=within + 30)
    return time.monotonic() - started, stderr


def consistent_partial_report(folder: Path) -> dict:
    """Every listed image on disk, decodable, counts matching; no staging left beside the folder."""
    report = read_json(folder / "metadata/generation-report.json")
    summary = report["generation_summary"]
    made = summary["successful_generations"]
    assert 2 <= made < IMAGES and made + summary["failed_generations"] == IMAGES
    assert [e["filename"] for e in report["images"]] == [f"generated-image-{i}.png" for i in range(1, made + 1)]
    for entry in report["images"]:
        with Image.open(folder / "images" / entry["filename"]) as image:
            image.load()
    staging = [p.name for p in folder.parent.iterdir() if "staging" in p.name or "retired" in p.name]
    assert not staging
    return report


@pytest.mark.parametrize("signum, status", [
    (signal.SIGTERM, 143),
    pytest.param(signal.SIGINT, 130, marks=pytest.mark.slow),  # the same path; its own embedded Ray (15 s)
])
def test_a_signal_to_the_whole_process_group_still_writes_the_report(tmp_path, slow_model, signum, status):
    folder = tmp_path / "out"
    process = start(command(slow_model, folder))
    wait_for_images(process, 2)
    os.killpg(process.pid, signum)  # the run and its Ray processes, all at once
    seconds, stderr = finish(process, within=10)
    assert process.returncode == status and seconds < 10, stderr[-2000:]
    report = consistent_partial_report(folder)
    assert report["generation_summary"]["stopped"] == "interrupted"
    assert report["generation_summary"]["error"]["code"] == "IMG_021"
    assert "Traceback" not in stderr
    assert journal_dir(folder).is_dir()  # kept, so the same command resumes


def test_timeout_and_a_second_signal_during_shutdown(tmp_path, slow_model):
    folder = tmp_path / "out"
    # `timeout` signals its child; the second signal lands while that run is shutting down
    process = start(["timeout", "-s", "TERM", "--kill-after=60", "3600", *command(slow_model, folder)])
    wait_for_images(process, 2)
    child = next(p for p in _children(process.pid) if "cluster.entrypoints.cli" in _cmdline(p))
    os.kill(child, signal.SIGTERM)
    time.sleep(0.3)
    os.kill(child, signal.SIGTERM)
    seconds, stderr = finish(process, within=10)
    assert process.returncode == 143 and seconds < 10, stderr[-2000:]
    consistent_partial_report(folder)


@pytest.mark.slow  # three CLI runs: `./scripts/test.sh -m slow`, and CI
def test_sigkill_then_the_same_command_resumes_with_the_planned_seeds(tmp_path, slow_model):
    folder = tmp_path / "out"
    cmd = command(slow_model, folder, "--seed", "500")
    process = start(cmd)
    wait_for_images(process, 3)
    os.kill(process.pid, signal.SIGKILL)  # the driver only, as the kernel's OOM killer does
    process.communicate(timeout=30)
    assert not (folder / "metadata").exists()  # nothing was swapped in: only the journal holds the images
    journal = journal_dir(folder)
    kept = {json.loads(line)["task"]["index"]: json.loads(line)["sha256"]
            for line in (journal / "journal.jsonl").read_text().splitlines()[1:]}
    assert len(kept) >= 3
    # one journaled image torn (a write the kill cut short on another filesystem): made again
    torn_index = max(kept)
    torn = next(journal.glob(f"parts/{torn_index:03d}-*.png"))
    torn.write_bytes(torn.read_bytes()[:64])
    # the killed run's replica may start one more call before Ray sees its driver gone: not the rerun's
    first_run = {e["pid"] for e in _calls(slow_model)}
    rerun = subprocess.run(cmd, cwd=ROOT, env=run_env(), capture_output=True, text=True, timeout=180)
    assert rerun.returncode == 0, rerun.stderr[-2000:]
    report = read_json(folder / "metadata/generation-report.json")
    assert report["generation_summary"]["successful_generations"] == IMAGES
    assert [e["seed"] for e in report["images"]] == list(range(500, 500 + IMAGES))  # as first planned
    assert report["resumed"]["images_kept"] == sorted(set(kept) - {torn_index})
    assert [d["index"] for d in report["resumed"]["images_discarded"]] == [torn_index]
    for index in set(kept) - {torn_index}:  # byte-identical to what the first run made
        data = (folder / "images" / f"generated-image-{index + 1}.png").read_bytes()
        assert hashlib.sha256(data).hexdigest() == kept[index]
    made_again = [e for e in _calls(slow_model) if e["event"] == "start" and e["pid"] not in first_run]
    assert sorted(i for e in made_again for i in e["indices"]) == sorted(set(range(IMAGES)) - set(kept) | {torn_index})
    assert not journal.exists()  # complete now: nothing left to resume


@pytest.mark.usefixtures("ray_session")
def test_no_resume_starts_afresh_and_a_different_request_starts_clean(tmp_path):
    from cluster.pipeline.run import run_generation
    from tests.helpers import make_request, quick_limits

    registry = scripted_registry(tmp_path, {"local": {"script": {"latency": 0.05}}})

    def run(**raw):
        request = make_request(registry, tmp_path, models="local", image_count=3, seed=7, **raw)
        return run_generation(request, registry, quick_limits()), read_json(tmp_path / "out/metadata/generation-report.json")

    def leave_a_journal():  # what a killed run of the same request leaves
        journal = RunJournal(tmp_path / "out")
        journal.start(key, [generated(0, "local", 7).task], {"base_seed": 7, "models": ["local"],
                                                           "strategy": "smart", "selection_reason": "x"}, None)
        journal.record(generated(0, "local", 7))
        journal.close()

    key = _key_of(registry, tmp_path)
    leave_a_journal()
    _, report = run()
    assert report["resumed"]["images_kept"] == [0]
    leave_a_journal()
    _, report = run(no_resume="true")
    assert report["resumed"] is None and not journal_dir(tmp_path / "out").exists()
    leave_a_journal()
    _, report = run(image_prompt="another prompt")
    assert report["resumed"] is None and not journal_dir(tmp_path / "out").exists()


def _key_of(registry, tmp_path) -> str:
    from cluster.output.durability.journal import request_key
    from cluster.pipeline.stages.preflight import journal_key_fields as _journal_key_fields
    from tests.helpers import make_request

    request = make_request(registry, tmp_path, models="local", image_count=3, seed=7)
    return request_key(_journal_key_fields(request, registry))


@pytest.mark.slow  # a cluster of its own: `-m slow`, and CI
def test_a_joined_clusters_head_dying_mid_run_is_img_019_with_a_partial_report(tmp_path, slow_model):
    from cluster.entrypoints.warm import ray_cli

    temp = tempfile.mkdtemp(prefix="kd", dir="/tmp")
    env = run_env(RAY_TMPDIR=temp)
    head = subprocess.Popen([ray_cli(), "start", "--head", "--block", "--port=0", "--num-cpus=4",
                             "--include-dashboard=false", "--disable-usage-stats"], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        address_file = Path(temp) / "ray" / "ray_current_cluster"
        deadline = time.monotonic() + 90
        while not address_file.is_file() and time.monotonic() < deadline:
            time.sleep(0.2)
        folder = tmp_path / "out"
        process = start(command(slow_model, folder, "--address", address_file.read_text().strip()), env)
        wait_for_images(process, 2)
        os.killpg(head.pid, signal.SIGKILL)  # the whole head node, as a crash or a reboot takes it
        seconds, stderr = finish(process, within=10)
        assert process.returncode == 1 and seconds < 10, stderr[-2000:]
        report = consistent_partial_report(folder)
        assert report["generation_summary"]["error"]["code"] == "IMG_019"
        assert "error IMG_019" in stderr or "IMG_019" in stderr
    finally:
        try:
            os.killpg(head.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        head.wait(timeout=30)
        shutil.rmtree(temp, ignore_errors=True)


def _calls(registry) -> list[dict]:
    from tests.scripted_backend import read_log

    return read_log(Path(registry.path).parent / "calls.jsonl")


def _children(pid: int) -> list[int]:
    out = subprocess.run(["ps", "-o", "pid=", "--ppid", str(pid)], capture_output=True, text=True).stdout
    return [int(p) for p in out.split()]


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return ""
