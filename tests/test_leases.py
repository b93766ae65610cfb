"""Warm-replica leases (cluster.engine.leases): a long-lived process's runs reach the warm replicas
without asking the registry, and a lease never outlives its replica (death, keep-alive)."""

from __future__ import annotations

import os
import signal
import time

import pytest
import ray

from cluster.engine.leases import WarmLeases
from cluster.engine.replicas import ReplicaPool
from cluster.engine.resident import actor_handle, registry_actor
from cluster.entrypoints.warm import bring_down, bring_up
from cluster.pipeline.run import run_generation
from models.scorers import load_scoring
from tests.helpers import make_request, quick_limits, read_json, scripted_registry
from tests.scripted_backend import read_log

pytestmark = pytest.mark.usefixtures("ray_session")


@pytest.fixture
def clean_cluster():
    yield
    bring_down()


@pytest.fixture
def registry_asks(monkeypatch):
    """How many times runs asked the cluster's registry for replicas (the real call still made)."""
    asks = []
    original = ReplicaPool._ask_registry

    def counted(self, *args, **kwargs):
        asks.append(args[0].id)
        return original(self, *args, **kwargs)

    monkeypatch.setattr(ReplicaPool, "_ask_registry", counted)
    return asks


def resident_names() -> list[str]:
    return [e["name"] for e in ray.get(registry_actor().entries.remote())]


def run(registry, tmp_path, folder, limits, leases):
    request = make_request(registry, tmp_path, models="local", folder_name=folder)
    result = run_generation(request, registry, limits, resident=True, leases=leases)
    assert result.exit_code == 0 and len(result.outcome.images) == 1, result.outcome.error
    return read_json(tmp_path / folder / "metadata/generation-report.json")


def call_pids(tmp_path) -> list[int]:
    return [e["pid"] for e in read_log(tmp_path / "calls.jsonl") if e["event"] == "start"]


def keys(value) -> object:
    """The report's shape: every key, recursively (values differ between runs: times, seeds)."""
    if isinstance(value, dict):
        return {k: keys(v) for k, v in value.items()}
    if isinstance(value, list):
        return [keys(v) for v in value[:1]]
    return type(value).__name__


def test_leased_runs_skip_the_registry_and_write_the_same_report(tmp_path, clean_cluster, registry_asks):
    registry = scripted_registry(tmp_path, {"local": {"script": {"latency": 0.05}}})
    limits = quick_limits()
    bring_up(registry, ["local"], load_scoring(), "none", limits)
    registry_asks.clear()
    plain = run(registry, tmp_path, "plain", limits, leases=None)
    leases = WarmLeases()
    reports = [run(registry, tmp_path, f"leased-{n}", limits, leases) for n in range(3)]
    assert registry_asks == ["local", "local"]  # the run without a lease, and the first leased one
    assert len(leases.keys()) == 1
    assert len(set(call_pids(tmp_path))) == 1  # every run on the one warm replica
    for report in reports:
        assert report["models"]["local"]["warm"] is True
        assert keys(report) == keys(plain)


def test_a_leased_replica_that_died_is_replaced_and_the_next_run_succeeds(tmp_path, clean_cluster, registry_asks):
    registry = scripted_registry(tmp_path, {"local": {"script": {"latency": 0.05}}})
    limits = quick_limits(actor_max_restarts=0)  # one SIGKILL is more than its restarts allow
    bring_up(registry, ["local"], load_scoring(), "none", limits)
    leases = WarmLeases()
    run(registry, tmp_path, "before", limits, leases)
    (name,) = resident_names()
    os.kill(ray.get(actor_handle(name).pid.remote()), signal.SIGKILL)
    deadline = time.monotonic() + 30
    while name in resident_names() and time.monotonic() < deadline:
        time.sleep(0.2)
    registry_asks.clear()
    assert run(registry, tmp_path, "after-death", limits, leases)["models"]["local"]["warm"] is False
    assert registry_asks == ["local"]  # the dead lease dropped, the registry asked once, a new replica made
    run(registry, tmp_path, "again", limits, leases)
    assert registry_asks == ["local"]  # and leased again
    pids = call_pids(tmp_path)
    assert pids[0] != pids[1] == pids[2]


def test_a_lease_does_not_keep_a_retired_replica(tmp_path, clean_cluster):
    registry = scripted_registry(tmp_path, {"local": {"script": {"latency": 0.05}}})
    limits = quick_limits()
    bring_up(registry, ["local"], load_scoring(), "none", limits, keep_alive_s=1.5)
    leases = WarmLeases()
    run(registry, tmp_path, "first", limits, leases)
    deadline = time.monotonic() + 30
    while resident_names() and time.monotonic() < deadline:
        time.sleep(0.5)
    assert not resident_names()  # keep-alive retired it although the lease still names it
    assert run(registry, tmp_path, "after", limits, leases)["models"]["local"]["warm"] is False
    assert len(set(call_pids(tmp_path))) == 2
