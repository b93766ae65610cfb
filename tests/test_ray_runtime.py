"""Where a run's Ray comes from: the cards this machine has, a cluster already running on it
(a warm cluster from `ray start`), a separate embedded instance, and what each leaves behind.

The running cluster here is a real `ray start --head` with one logical GPU of 24 GB, in its own
RAY_TMPDIR so neither the test session's Ray nor anything else on the machine sees it."""

from __future__ import annotations

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
import yaml

from cluster.engine.ray_runtime import Card, LocalGpus, detect_local_gpus, find_running_cluster, visible_cards

ROOT = Path(__file__).resolve().parent.parent
CARDS = [Card("0", "GPU-8a3f0c1e-1111-2222-3333-444455556666", 24.0),
         Card("1", "GPU-5b7d9e2f-aaaa-bbbb-cccc-ddddeeeeffff", 80.0)]


@pytest.mark.parametrize("visible, count, memory, note", [
    (None, 2, 104.0, ""),
    ("1", 1, 80.0, ""),
    ("1,0", 2, 104.0, ""),
    ("GPU-5b7d9e2f-aaaa-bbbb-cccc-ddddeeeeffff", 1, 80.0, ""),  # a full UUID, as schedulers set it
    ("GPU-8a3f", 1, 24.0, ""),                                  # a unique prefix, as CUDA accepts
    ("GPU-8a3f,GPU-ffff", 1, 24.0, "'GPU-ffff' names no single card"),  # CUDA stops at a bad entry
    ("GPU-", 0, 0.0, "names no single card"),                   # a prefix of both: ambiguous
    ("MIG-0f6c7d2a-1234", 0, 0.0, "is a MIG instance"),
    ("7", 0, 0.0, "'7' names no single card"),
])
def test_cuda_visible_devices_is_read_as_cuda_reads_it(visible, count, memory, note):
    found = visible_cards(CARDS, visible)
    assert (found.count, found.memory_gb) == (count, memory)
    assert note in found.note and bool(found.note) == bool(note)
    if note:  # what was found, so the user can fix the variable
        assert "GPU-8a3f0c1e-1111-2222-3333-444455556666" in found.note


def test_detection_through_nvidia_smi_says_why_no_gpu_is_used(tmp_path, monkeypatch):
    fake = tmp_path / "bin" / "nvidia-smi"
    fake.parent.mkdir()
    rows = "\\n".join(f"{c.index}, {c.uuid}, {int(c.memory_gb * 1024)}" for c in CARDS)
    fake.write_text(f"#!/bin/sh\nprintf '{rows}\\n'\n")
    fake.chmod(0o755)
    monkeypatch.setenv("PATH", f"{fake.parent}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "GPU-5b7d9e2f-aaaa-bbbb-cccc-ddddeeeeffff")
    assert detect_local_gpus() == LocalGpus(1, 80.0)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "GPU-00000000-dead-beef")
    nothing = detect_local_gpus()
    assert nothing.count == 0 and "no GPU is used" in nothing.note
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    assert "empty" in detect_local_gpus().note


def test_cards_are_numbered_in_pci_order_as_nvidia_smi_numbers_them(tmp_path, monkeypatch):
    """nvidia-smi lists cards in PCI bus order; CUDA (and so CUDA_VISIBLE_DEVICES) numbers the
    fastest first unless told otherwise: the project's processes, and the Ray it starts, are told."""
    fake = tmp_path / "bin" / "nvidia-smi"
    fake.parent.mkdir()
    rows = "\\n".join(f"{c.index}, {c.uuid}, {int(c.memory_gb * 1024)}" for c in CARDS)
    fake.write_text(f"#!/bin/sh\nprintf '{rows}\\n'\n")
    fake.chmod(0o755)
    monkeypatch.setenv("PATH", f"{fake.parent}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    monkeypatch.delenv("CUDA_DEVICE_ORDER", raising=False)
    found = detect_local_gpus()
    assert os.environ["CUDA_DEVICE_ORDER"] == "PCI_BUS_ID" and found.count == len(CARDS) and not found.note
    monkeypatch.setenv("CUDA_DEVICE_ORDER", "FASTEST_FIRST")  # the user's own: kept, and said
    found = detect_local_gpus()
    assert os.environ["CUDA_DEVICE_ORDER"] == "FASTEST_FIRST" and "nvidia-smi" in found.note


# --- a cluster running on this machine -------------------------------------------------------

def ray_env(temp: str) -> dict:
    env = dict(os.environ, RAY_TMPDIR=temp, PYTHONPATH=str(ROOT), RAY_USAGE_STATS_ENABLED="0")
    env.pop("RAY_ADDRESS", None)
    return env


@pytest.fixture(scope="module")
def running_cluster():
    """`ray start --head` with one 24 GB logical GPU, as `multi-image cluster up` starts on a
    one-card machine; stopped by killing its own processes (`ray stop` would stop every Ray here)."""
    from cluster.entrypoints.warm import ray_cli

    temp = tempfile.mkdtemp(prefix="kr", dir="/tmp")  # short: Ray's socket paths live under it
    env = ray_env(temp)
    process = subprocess.Popen(
        [ray_cli(), "start", "--head", "--block", "--port=0", "--num-cpus=8", "--num-gpus=1",
         "--resources=" + json.dumps({"gpu_memory_gb": 24}), "--include-dashboard=false", "--disable-usage-stats"],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    address_file = Path(temp) / "ray" / "ray_current_cluster"
    deadline = time.monotonic() + 90
    while not address_file.is_file() and time.monotonic() < deadline:
        time.sleep(0.2)
    assert address_file.is_file(), "ray start did not come up"
    yield {"temp": temp, "env": env, "address": address_file.read_text().strip()}
    for sig, wait in ((signal.SIGTERM, 5), (signal.SIGKILL, 10)):
        try:
            os.killpg(process.pid, sig)
        except ProcessLookupError:
            break
        try:
            process.wait(timeout=wait)
            break
        except subprocess.TimeoutExpired:
            continue
    shutil.rmtree(temp, ignore_errors=True)


@pytest.fixture(scope="module")
def one_gpu_registry(tmp_path_factory, tiny_models):
    """A model declared `gpus: 1` (FLUX's shape in models.yaml) whose memory fits the card beside the scorer."""
    path = tmp_path_factory.mktemp("registry") / "models.yaml"
    path.write_text(yaml.safe_dump({"models": {"one-card-flux": {
        "backend": "diffusers", "source": "builtin:tiny-flux", "pipeline": "FluxPipeline", "weights": "random",
        "dtype": "float32", "steps": 2, "guidance": 0.0, "width": 64, "height": 64,
        "call_args": {"max_sequence_length": 32}, "gpus": 1, "gpu_memory_gb": 12, "gpu_memory_per_image_gb": 1,
        "max_batch_size": 2, "auto_select": False}}}))
    return path


def cli(cluster: dict, cwd: Path, *args: str, timeout: float = 240) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "cluster.entrypoints.cli", *args], cwd=cwd, env=cluster["env"],
                          capture_output=True, text=True, timeout=timeout)


def generate(cluster: dict, cwd: Path, registry: Path, folder: str, *extra: str) -> dict:
    done = cli(cluster, cwd, "generate", "--image-prompt", "a lighthouse at dusk", "--folder-name", folder,
               "--models", "one-card-flux", "--image-count", "2", "--config", str(registry), "--scorer", "tiny-clip",
               "--history-db", str(cwd / "history.sqlite"), *extra)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads((cwd / folder / "metadata/generation-report.json").read_text())


def sessions(cluster: dict) -> set[str]:
    return {p.name for p in (Path(cluster["temp"]) / "ray").glob("session_2*")}


def test_a_run_without_address_joins_the_cluster_running_here(running_cluster, one_gpu_registry, tmp_path):
    before = sessions(running_cluster)
    report = generate(running_cluster, tmp_path, one_gpu_registry, "joined")
    assert report["generation_summary"]["successful_generations"] == 2
    assert report["cluster"]["joined_running_cluster"] is True
    assert report["cluster"]["address"] == running_cluster["address"]
    assert any("joined the Ray cluster running on this machine" in n for n in report["cluster"]["notes"])
    # the model (one card at most, 12 GB + its batch) and the scorer shared the one card: Ray gave both its id
    (replica,) = report["models"]["one-card-flux"]["replicas"]
    assert report["quality"]["scorer"]["name"] == "tiny-clip"
    assert replica["gpu_ids"] == report["quality"]["scorer"]["gpu_ids"] == ["0"]
    assert sessions(running_cluster) == before  # no second Ray instance was started


def test_cluster_up_on_one_card_places_the_model_and_the_scorer(running_cluster, one_gpu_registry, tmp_path):
    # an explicit host:port, as on a runner told where its cluster is (token auth must still work)
    up = cli(running_cluster, tmp_path, "cluster", "up", "--address", running_cluster["address"], "--models", "one-card-flux",
             "--scorer", "tiny-clip", "--config", str(one_gpu_registry))
    try:
        assert up.returncode == 0, up.stderr[-3000:]
        assert "one-card-flux: 1 replica(s) resident" in up.stdout and "scorer tiny-clip: resident" in up.stdout
        report = generate(running_cluster, tmp_path, one_gpu_registry, "warm")
        assert report["models"]["one-card-flux"]["warm"] is True
        assert report["generation_summary"]["successful_generations"] == 2
    finally:
        down = cli(running_cluster, tmp_path, "cluster", "down", "--address", "auto")
    assert down.returncode == 0, down.stderr[-2000:]


@pytest.mark.slow  # a second Ray instance: `-m slow`, and CI
def test_address_local_runs_a_separate_instance_and_removes_its_session(running_cluster, one_gpu_registry, tmp_path):
    before = sessions(running_cluster)
    report = generate(running_cluster, tmp_path, one_gpu_registry, "separate", "--address", "local")
    assert report["cluster"]["embedded"] is True and "joined_running_cluster" not in report["cluster"]
    assert report["generation_summary"]["successful_generations"] == 2
    assert sessions(running_cluster) == before  # its own session folder went with it


def test_a_stale_address_file_is_not_joined(tmp_path, monkeypatch):
    temp = Path(tempfile.mkdtemp(prefix="kr", dir="/tmp"))
    try:
        (temp / "ray").mkdir()
        with __import__("socket").socket() as probe:  # a port nothing listens on
            probe.bind(("127.0.0.1", 0))
            port = probe.getsockname()[1]
        (temp / "ray" / "ray_current_cluster").write_text(f"127.0.0.1:{port}")
        monkeypatch.setenv("RAY_TMPDIR", str(temp))
        running, note = find_running_cluster()
        assert running is None and f"127.0.0.1:{port}" in note and "stale" in note
    finally:
        shutil.rmtree(temp, ignore_errors=True)


# --- whose Ray is joined, and what of Ray's reaches the screen --------------------------------

@pytest.mark.usefixtures("ray_session")  # a private embedded instance runs on this machine: the session's own
def test_commands_never_join_a_private_embedded_instance(tmp_path):
    import ray

    from cluster.engine.resident import registry_actor

    registry = registry_actor()
    before = set(e["name"] for e in ray.get(registry.entries.remote()))
    temp = tempfile.mkdtemp(prefix="kr", dir="/tmp")  # where no `ray start` cluster is recorded
    env = ray_env(temp)
    try:
        for args in (["cluster", "status"], ["cluster", "down"],
                     ["generate", "--image-prompt", "a fox", "--folder-name", "out", "--models", "tiny-flux",
                      "--address", "auto", "--scorer", "none"]):
            done = subprocess.run([sys.executable, "-m", "cluster.entrypoints.cli", *args], cwd=tmp_path, env=env,
                                  capture_output=True, text=True, timeout=180)
            assert done.returncode == 1, (args, done.stdout, done.stderr[-2000:])
            assert "error IMG_019: " in done.stderr and "multi-image cluster up" in done.stderr, done.stderr[-2000:]
            assert "node " not in done.stdout and "released" not in done.stdout
    finally:
        shutil.rmtree(temp, ignore_errors=True)
    assert set(e["name"] for e in ray.get(registry.entries.remote())) == before  # nothing put into it


def test_joining_says_nothing_of_rays_token_default(running_cluster, tmp_path):
    env = {k: v for k, v in running_cluster["env"].items() if k != "RAY_AUTH_MODE"}  # as in a fresh shell
    done = subprocess.run([sys.executable, "-m", "cluster.entrypoints.cli", "cluster", "status"], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "Token authentication" not in done.stdout + done.stderr and "RAY_AUTH_MODE" not in done.stderr


KILLED_MID_TASK = """
import os, signal, sys, time
import ray
from cluster.engine.ray_runtime import RayRuntime

with RayRuntime("local", debug=False):
    @ray.remote(max_restarts=1, max_task_retries=1)
    class Worker:
        def pid(self):
            return os.getpid()

        def slow(self):
            time.sleep(30)

    worker = Worker.remote()
    pid = ray.get(worker.pid.remote())
    pending = worker.slow.remote()
    time.sleep(1)
    os.kill(pid, signal.SIGKILL)  # what a Ctrl-C to the process group does to a replica
    time.sleep(5)
    print("done", flush=True)
"""


def test_without_debug_no_raylet_lines_reach_stdout_when_a_worker_dies(tmp_path):
    env = ray_env(tempfile.mkdtemp(prefix="kr", dir="/tmp"))
    try:
        done = subprocess.run([sys.executable, "-c", KILLED_MID_TASK], cwd=tmp_path, env=env, capture_output=True,
                              text=True, timeout=180)
    finally:
        shutil.rmtree(env["RAY_TMPDIR"], ignore_errors=True)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip() == "done", done.stdout
    assert "Token authentication" not in done.stderr
