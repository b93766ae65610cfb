"""Shared fixtures: one Ray instance per session, user state in temporary folders,
no credentials leaking in from the environment, tiny models built once."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

SESSION_CPUS = 8
# Logical GPUs (no hardware needed): two 24 GB cards, so placement, GPU bundles and the
# gpu_memory_gb resource are exercised exactly as on a GPU node.
SESSION_GPUS = 2
SESSION_CARD_GB = 24
# Logical host RAM of the session node (Ray's `memory` resource), as on a GPU machine: memory
# plans check a host's RAM, and a 2-core CI machine has less than a FLUX box (no real allocation).
SESSION_HOST_GB = 64
SESSION_INFO: dict = {}

_CLEARED = (
    "GOOGLE_API_KEY", "GOOGLE_CLOUD_PROJECT", "GOOGLE_CLOUD_LOCATION", "GOOGLE_APPLICATION_CREDENTIALS",
    "GOOGLE_VERTEX_BASE_URL", "GITHUB_OUTPUT", "RAY_ADDRESS", "STORAGE_EMULATOR_HOST", "GOOGLE_GENAI_USE_VERTEXAI",
)


def pytest_configure(config):
    # Before anything starts Ray: the session cache (tiny models) and no stray credentials,
    # so the Ray workers started below inherit the same environment.
    cache = Path(os.environ.get("KAMUI_TEST_CACHE", "/tmp/kamui-test-cache"))
    cache.mkdir(parents=True, exist_ok=True)
    os.environ["KAMUI_CACHE_DIR"] = str(cache)
    os.environ["HF_HUB_OFFLINE"] = "1"
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    # export Ray metrics every second (default 10 s) so the Prometheus test need not wait long
    os.environ.setdefault("RAY_metrics_report_interval_ms", "1000")
    for name in _CLEARED:
        os.environ.pop(name, None)
    # a warm cluster's front door on this machine (a user's, another test run's) is not the tests':
    # runs find only a front door a test opened, in this session's own folder (0700, short for a socket)
    import tempfile

    os.environ["KAMUI_RUNTIME_DIR"] = tempfile.mkdtemp(prefix="kfd", dir="/tmp")
    # keep the Hugging Face cache of the machine out of availability checks
    os.environ["HF_HOME"] = str(cache / "hf-home")
    # Workers of the session cluster serve drivers started elsewhere too (CLI subprocesses joining
    # with --address): they must import the scripted test model from the repository.
    root = str(Path(__file__).resolve().parent.parent)
    os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (root, os.environ.get("PYTHONPATH")) if p)


def pytest_unconfigure(config):
    import shutil

    runtime = os.environ.get("KAMUI_RUNTIME_DIR", "")
    if os.path.basename(runtime).startswith("kfd"):
        shutil.rmtree(runtime, ignore_errors=True)


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch, tmp_path):
    for name in _CLEARED:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("KAMUI_HISTORY_DB", str(tmp_path / "history.sqlite"))
    monkeypatch.chdir(tmp_path)


@pytest.fixture(scope="session")
def ray_session():
    """The one Ray instance of the test session."""
    import logging

    import ray

    from cluster.planning.placement import GPU_MEMORY_RESOURCE
    from cluster.engine.ray_runtime import NAMESPACE

    if not ray.is_initialized():
        # "local": a Ray cluster running on the machine (a warm cluster, another test run) is not joined
        SESSION_INFO["context"] = ray.init(address="local", num_cpus=SESSION_CPUS, num_gpus=SESSION_GPUS,
                 resources={GPU_MEMORY_RESOURCE: SESSION_GPUS * SESSION_CARD_GB}, _memory=SESSION_HOST_GB * 2**30,
                 include_dashboard=False, namespace=NAMESPACE, log_to_driver=False, logging_level=logging.ERROR)
    yield ray
    ray.shutdown()


@pytest.fixture(scope="session")
def tiny_models():
    """Build the tiny pipelines once, in the driver, before actors need them."""
    from cluster import env
    from models.tiny import tiny_pipeline_dir

    return {name: tiny_pipeline_dir(name, env.cache_dir()) for name in ("tiny-flux", "tiny-sd")}


@pytest.fixture(scope="session")
def registry():
    from models.registry import load_registry

    return load_registry()


@pytest.fixture
def limits():
    from cluster.planning.limits import load_limits

    return load_limits()


API_KEY = "AIzaTEST-secret-key-never-printed-0123456789"


@pytest.fixture(scope="session")
def fake_vertex_server():
    from tests.fake_vertex import FakeVertex

    server = FakeVertex().start()
    yield server
    server.stop()


@pytest.fixture
def vertex(fake_vertex_server, monkeypatch):
    """The loopback Vertex endpoint, with a key in the environment as a user would set it."""
    fake_vertex_server.reset()
    monkeypatch.setenv("GOOGLE_API_KEY", API_KEY)
    monkeypatch.setenv("GOOGLE_VERTEX_BASE_URL", fake_vertex_server.base_url)
    return fake_vertex_server


@pytest.fixture(scope="session")
def gcs_emulator():
    """gcp-storage-emulator on 127.0.0.1 with a bucket `kamui-test`; the real client talks to it."""
    import socket

    from gcp_storage_emulator.server import create_server

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = create_server("127.0.0.1", port, in_memory=True, default_bucket="kamui-test")
    server.start()
    yield f"127.0.0.1:{port}"
    server.stop()


def _resident_registry():
    import ray

    if not ray.is_initialized():
        return None
    from cluster.engine.ray_runtime import NAMESPACE
    from cluster.engine.resident import REGISTRY_NAME

    try:
        return ray.get_actor(REGISTRY_NAME, namespace=NAMESPACE)
    except ValueError:
        return None


@pytest.fixture(autouse=True)
def _release_resident_replicas():
    """Runs joining the session cluster with --address leave warm replicas behind, as they should
    on a real cluster; here they would hold the next test's resources, so the ones a test made go
    when it ends (a module's own warm replicas, made before, stay for its other tests)."""
    import ray

    def entries(registry) -> set[str]:
        try:
            return {e["name"] for e in ray.get(registry.entries.remote())} if registry else set()
        except ray.exceptions.RayActorError:  # a registry a test's `cluster down` just killed
            return set()

    before = entries(_resident_registry())
    yield
    registry = _resident_registry()
    made = sorted(entries(registry) - before)
    if made:
        ray.get(registry.release.remote(names=made))
