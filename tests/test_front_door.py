"""The warm cluster's front door: `generate` and `batch` on this machine hand their runs to the
cluster's long-lived process instead of becoming Ray drivers, with the same folder, outputs, exit
statuses, signals and resumption as the direct path; only the cluster's owner gets in.

The front door is the real one (a detached actor on the session's Ray instance, its socket in the
session's runtime folder); every client is a real `multi-image` process."""

from __future__ import annotations

import json
import os
import signal
import socket
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest
from PIL import Image

from cluster.output.durability.journal import journal_dir
from cluster.output.github_output import OUTPUT_NAMES, parse_outputs
from cluster.output.png import read_parameters
from tests.helpers import read_json, scripted_registry
from tests.scripted_backend import max_overlap, read_log

ROOT = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.usefixtures("ray_session", "tiny_models")
# Runs the CLI in this process's interpreter and says, on its last stderr line, which heavy
# packages the client imported.
CLIENT = ("import sys; from cluster.entrypoints.cli import main; code = main(sys.argv[1:]); "
          "print('IMPORTED', sorted(m for m in ('ray', 'torch', 'diffusers', 'pydantic', 'numpy', 'py3langid') "
          "if m in sys.modules), file=sys.stderr); sys.exit(code)")


@pytest.fixture(scope="module")
def front_door(ray_session, tiny_models):
    """tiny-flux resident and the front door open, as after `cluster up --models tiny-flux`."""
    from cluster.entrypoints.frontdoor.actor import start_front_door, stop_front_door
    from cluster.entrypoints.warm import bring_down, bring_up
    from cluster.planning.limits import load_limits
    from models.registry import load_registry
    from models.scorers import load_scoring

    bring_up(load_registry(), ["tiny-flux"], load_scoring(), "none", load_limits())
    info = start_front_door()
    yield info
    stop_front_door()
    bring_down()


def client_env(**extra) -> dict:
    env = {**os.environ, "PYTHONPATH": str(ROOT), **extra}
    env.pop("RAY_ADDRESS", None)
    return env


def client(*args: str, cwd: Path, env: dict | None = None, **popen) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", CLIENT, *args], cwd=cwd, env=env or client_env(),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **popen)


def lines(stdout: str) -> list[dict]:
    return [json.loads(line) for line in stdout.splitlines() if line.startswith("{")]


def door_idle(timeout: float = 30) -> dict:
    """The front door once no run is in progress there."""
    from cluster.entrypoints.frontdoor.actor import front_door_status

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        state = front_door_status()
        if state and state.get("running") == 0:
            return state
        time.sleep(0.2)
    raise AssertionError(f"a run is still in progress in the front door: {front_door_status()}")


def _report_view(folder: Path) -> dict:
    """A report without what differs between any two runs (times, prices of time, the run's own cluster view)."""
    report = read_json(folder / "metadata/generation-report.json")
    for key in ("cluster", "metrics", "timing", "started_at", "finished_at", "cost_usd", "cost", "models"):
        report.pop(key, None)
    return _timeless(report)


def _timeless(value):
    if isinstance(value, dict):
        return {k: _timeless(v) for k, v in value.items()
                if not any(w in k for w in ("time", "seconds", "usd")) and not k.endswith("_at")}
    if isinstance(value, list):
        return [_timeless(v) for v in value]
    return value


def test_generate_through_the_front_door_writes_what_the_direct_path_writes(tmp_path, monkeypatch, front_door):
    from cluster.entrypoints.cli import main

    args = ["generate", "--image-prompt", "a lighthouse at dusk, oil painting", "--folder-name", "run",
            "--models", "tiny-flux", "--seed", "3", "--image-count", "2", "--scorer", "none"]
    door_out = tmp_path / "door-output"
    door_cwd = tmp_path / "door"
    door_cwd.mkdir()
    process = client(*args, "--json", cwd=door_cwd, env=client_env(GITHUB_OUTPUT=str(door_out)))
    stdout, stderr = process.communicate(timeout=120)
    assert process.returncode == 0, stderr
    assert stderr.splitlines()[-1] == "IMPORTED []"  # no Ray, torch, diffusers, pydantic: the front door ran it
    events = lines(stdout)
    assert events[-1]["event"] == "summary" and events[-1]["path"] == "front-door" and events[-1]["exit_code"] == 0
    (started,) = [e for e in events if e["event"] == "run_started"]
    assert started["path"] == "front-door"
    # the client's environment and folder: its $GITHUB_OUTPUT, its history file, its cwd
    door_outputs = parse_outputs(door_out.read_text(encoding="utf-8"))
    assert set(door_outputs) == set(OUTPUT_NAMES) and door_outputs == events[-1]["outputs"]
    assert door_outputs["generation-report"] == "run/metadata/generation-report.json"
    assert Path(os.environ["KAMUI_HISTORY_DB"]).is_file()

    # the same request on the direct path (no front door found), joined to the same warm cluster
    monkeypatch.setenv("KAMUI_RUNTIME_DIR", str(tmp_path / "no-front-door"))
    direct_out = tmp_path / "direct-output"
    direct_out.touch()
    monkeypatch.setenv("GITHUB_OUTPUT", str(direct_out))
    direct_cwd = tmp_path / "direct"
    direct_cwd.mkdir()
    monkeypatch.chdir(direct_cwd)
    import ray

    assert main([*args, "--address", ray.get_runtime_context().gcs_address]) == 0
    direct_outputs = parse_outputs(direct_out.read_text(encoding="utf-8"))
    assert {k: v.replace(str(direct_cwd), "CWD") for k, v in direct_outputs.items()} == \
        {k: v.replace(str(door_cwd), "CWD") for k, v in door_outputs.items()}
    door_folder, direct_folder = door_cwd / "run", direct_cwd / "run"
    files = sorted(str(p.relative_to(door_folder)) for p in door_folder.rglob("*"))
    assert files == sorted(str(p.relative_to(direct_folder)) for p in direct_folder.rglob("*"))
    assert json.loads(json.dumps(_report_view(door_folder)).replace(str(door_cwd), "CWD")) == \
        json.loads(json.dumps(_report_view(direct_folder)).replace(str(direct_cwd), "CWD"))
    for name in ("generated-image-1.png", "generated-image-2.png", "generated-image.png"):
        door_png, direct_png = (door_folder / "images" / name).read_bytes(), (direct_folder / "images" / name).read_bytes()
        assert read_parameters(door_png) == read_parameters(direct_png)
        assert Image.open(door_folder / "images" / name).tobytes() == Image.open(direct_folder / "images" / name).tobytes()
    report = read_json(door_folder / "metadata/generation-report.json")
    assert report["cluster"]["path"] == "front-door" and report["models"]["tiny-flux"]["warm"] is True
    assert read_json(direct_folder / "metadata/generation-report.json")["cluster"]["path"] == "direct"


def test_bad_input_through_the_front_door_is_the_same_one_line_and_status(tmp_path, capsys, monkeypatch, front_door):
    from cluster.entrypoints.cli import main

    args = ["generate", "--image-prompt", "a cat", "--folder-name", "out", "--image-count", "42"]
    process = client(*args, cwd=tmp_path)
    stdout, stderr = process.communicate(timeout=60)
    monkeypatch.setenv("KAMUI_RUNTIME_DIR", str(tmp_path / "no-front-door"))
    assert main(args) == process.returncode == 2
    direct = capsys.readouterr().err.strip()
    assert direct.startswith("error IMG_001:") and stderr.splitlines()[0] == direct
    assert stdout == "" and not (tmp_path / "out").exists()


@pytest.fixture
def slow_model(tmp_path):
    """0.7 s an image, one call at a time: a run of 10 lasts long enough to stop."""
    return scripted_registry(tmp_path, {"slow": {"script": {"latency": 0.7}}})


def slow_args(registry, folder: Path, *extra: str) -> list[str]:
    return ["generate", "--image-prompt", "a lighthouse at dusk", "--folder-name", str(folder), "--models", "slow",
            "--image-count", "10", "--max-parallel", "1", "--config", str(registry.path), "--scorer", "none", "--json",
            *extra]


def wait_for_images(process: subprocess.Popen, count: int, timeout: float = 60) -> list[dict]:
    seen, deadline = [], time.monotonic() + timeout
    for line in process.stdout:
        if line.startswith("{"):
            seen.append(json.loads(line))
            if len([e for e in seen if e["event"] == "image_done"]) >= count:
                return seen
        assert time.monotonic() < deadline, "the run made no images in time"
    raise AssertionError(f"the run ended early: {process.stderr.read()[-2000:]}")


def partial_report(folder: Path) -> dict:
    report = read_json(folder / "metadata/generation-report.json")
    summary = report["generation_summary"]
    made = summary["successful_generations"]
    assert 2 <= made < 10 and made + summary["failed_generations"] == 10
    assert summary["stopped"] == "interrupted" and summary["error"]["code"] == "IMG_021"
    assert [e["filename"] for e in report["images"]] == [f"generated-image-{i}.png" for i in range(1, made + 1)]
    assert journal_dir(folder).is_dir()  # kept: the same command resumes
    return report


@pytest.mark.parametrize("signum, status", [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_a_signal_to_the_clients_process_group_stops_the_run_with_a_partial_report(tmp_path, slow_model, signum,
                                                                                   status, front_door):
    folder = tmp_path / "out"
    process = client(*slow_args(slow_model, folder), cwd=tmp_path, start_new_session=True)
    wait_for_images(process, 2)
    os.killpg(process.pid, signum)  # the client and whatever it started: here, nothing else
    started = time.monotonic()
    stdout, stderr = process.communicate(timeout=40)
    assert process.returncode == status and time.monotonic() - started < 10, stderr[-2000:]
    assert "Traceback" not in stderr and "stopping: writing what is finished" in stderr
    summary = lines(stdout)[-1]
    assert summary["event"] == "summary" and summary["path"] == "front-door" and summary["exit_code"] == 130
    partial_report(folder)
    door_idle()


def test_a_killed_client_stops_its_run_and_the_same_command_resumes(tmp_path, slow_model, front_door):
    folder = tmp_path / "out"
    args = slow_args(slow_model, folder, "--seed", "500")
    process = client(*args, cwd=tmp_path)
    wait_for_images(process, 2)
    process.kill()  # SIGKILL: the client says nothing; the front door sees its socket close
    process.communicate(timeout=30)
    door_idle()  # the run stopped (within the guard's deadline) instead of making the other images
    made = partial_report(folder)["generation_summary"]["successful_generations"]
    calls = len([e for e in read_log(tmp_path / "calls.jsonl") if e["event"] == "start"])
    assert calls <= made + 2  # nothing started after the client went away, beyond the call in flight
    rerun = client(*args, cwd=tmp_path)
    stdout, stderr = rerun.communicate(timeout=120)
    assert rerun.returncode == 0, stderr[-2000:]
    report = read_json(folder / "metadata/generation-report.json")
    assert report["generation_summary"]["successful_generations"] == 10
    assert report["resumed"]["images_kept"] == list(range(made))
    assert [e["seed"] for e in report["images"]] == list(range(500, 510))
    assert not journal_dir(folder).exists()


def test_two_clients_at_once_share_the_warm_replica(tmp_path, front_door):
    from cluster.entrypoints.warm import bring_up
    from cluster.planning.limits import load_limits
    from models.scorers import load_scoring

    registry = scripted_registry(tmp_path, {"local": {"script": {"latency": 0.4}}})
    bring_up(registry, ["local"], load_scoring(), "none", load_limits())  # `cluster up --models local`
    processes = [client("generate", "--image-prompt", "a fox", "--folder-name", name, "--models", "local",
                        "--image-count", "3", "--max-parallel", "3", "--config", str(registry.path), "--scorer", "none",
                        "--json", cwd=tmp_path) for name in ("job-a", "job-b")]
    results = [p.communicate(timeout=120) for p in processes]
    assert [p.returncode for p in processes] == [0, 0], [r[1][-1500:] for r in results]
    runs = [lines(stdout) for stdout, _ in results]
    assert all(run[-1]["path"] == "front-door" for run in runs)
    started = [next(e["time"] for e in run if e["event"] == "run_started") for run in runs]
    finished = [next(e["time"] for e in run if e["event"] == "run_finished") for run in runs]
    assert max(started) < min(finished)  # both in the front door at once
    log = read_log(tmp_path / "calls.jsonl")
    assert len({e["pid"] for e in log if e["event"] == "start"}) == 1  # one replica served both
    assert max_overlap(log) == 1  # the replica's own limit holds across both clients' runs
    assert any("local" in key for key in door_idle()["leased"])  # later runs reach it without the registry
    for name in ("job-a", "job-b"):
        assert read_json(tmp_path / name / "metadata/generation-report.json")["generation_summary"][
            "successful_generations"] == 3


def test_batch_through_the_front_door(tmp_path, front_door):
    registry = scripted_registry(tmp_path, {"local": {"script": {"latency": 0.05}}})
    manifest = tmp_path / "jobs.jsonl"
    manifest.write_text("\n".join(json.dumps({"id": f"e{i}", "image-prompt": f"scene {i}", "models": "local"})
                                  for i in range(2)) + "\n")
    process = client("batch", "jobs.jsonl", "--config", str(registry.path), "--scorer", "none", "--json", cwd=tmp_path)
    stdout, stderr = process.communicate(timeout=120)
    assert process.returncode == 0, stderr[-2000:]
    assert stderr.splitlines()[-1] == "IMPORTED []"
    summary = lines(stdout)[-1]
    assert summary["event"] == "batch_summary" and [e["status"] for e in summary["entries"]] == ["completed"] * 2
    for i in range(2):  # relative to the client's folder, as the direct path writes them
        assert (tmp_path / f"jobs-out/e{i}/images/generated-image.png").is_file()


def test_a_front_door_that_does_not_answer_is_passed_by_and_said(tmp_path, monkeypatch, capsys, front_door):
    import ray

    from cluster.entrypoints.cli import main

    runtime = tmp_path / "rt"
    runtime.mkdir(mode=0o700)
    silent = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    silent.bind(str(runtime / "front-door.sock"))
    silent.listen(1)  # takes the connection, never answers
    monkeypatch.setenv("KAMUI_RUNTIME_DIR", str(runtime))
    try:
        code = main(["generate", "--image-prompt", "a fox", "--folder-name", "out", "--models", "tiny-flux",
                     "--scorer", "none", "--json", "--address", ray.get_runtime_context().gcs_address])
    finally:
        silent.close()
    events = lines(capsys.readouterr().out)
    assert code == 0 and events[0]["event"] == "front_door_skipped" and "did not answer within 3s" in events[0]["reason"]
    assert events[-1]["path"] == "direct"


def test_only_the_owner_gets_in(tmp_path, front_door):
    from cluster.entrypoints.frontdoor.client import open_door
    from cluster.entrypoints.frontdoor.protocol import private_dir, socket_path

    path = Path(front_door["socket"])
    assert path == socket_path()
    assert stat.S_IMODE(os.stat(path.parent).st_mode) == 0o700 and os.stat(path.parent).st_uid == os.getuid()
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    # a folder open to others is neither listened in nor trusted
    open_folder = tmp_path / "open"
    open_folder.mkdir()
    open_folder.chmod(0o755)
    assert "open to other users" in private_dir(open_folder, create=False)
    if os.getuid() != 0:
        pytest.skip("another uid is only reachable as root")
    # another user: the folder keeps them out ...
    assert _as_nobody(lambda: _connect(path).close()).startswith("PermissionError")
    # ... and were it open, the front door itself refuses them by their uid (SO_PEERCRED)
    import shutil

    from cluster.entrypoints.frontdoor.server import FrontDoor

    folder = Path(f"/tmp/kfd-open-{os.getpid()}")
    door = FrontDoor(folder / "front-door.sock").start()
    try:
        folder.chmod(0o711)
        (folder / "front-door.sock").chmod(0o777)

        def hello() -> str:
            connection = _connect(folder / "front-door.sock")
            connection.sendall(b'{"op": "hello", "version": 1}\n')
            return connection.makefile().readline()

        answer = _as_nobody(hello)
        assert answer.startswith("ok "), answer
        refused = json.loads(answer[3:])
        assert refused["type"] == "refused" and "uid" in refused["message"]
        owner, note = open_door(None)  # the owner's own front door answers
        assert owner is not None and note == ""
        owner.wire.close()
    finally:
        door.close(timeout_s=1)
        shutil.rmtree(folder, ignore_errors=True)


def test_the_peer_check_refuses_another_uid_and_reads_the_kernels_credential():
    from cluster.entrypoints.frontdoor.protocol import peer_uid, refusal

    assert refusal(1000, owner=1000) == ""
    assert refusal(1001, owner=1000) == "this front door serves uid 1000 only, not 1001"
    assert refusal(os.getuid()) == ""
    left, right = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    with left, right:
        assert peer_uid(left) == os.getuid()  # SO_PEERCRED: what the front door checks each client by


def test_local_remote_and_debug_runs_pass_the_front_door_by(front_door):
    from cluster.entrypoints.frontdoor.client import open_door

    door, note = open_door(None)
    assert door is not None and note == "" and door.ready["gcs_address"] == front_door["gcs_address"]
    door.wire.close()
    assert open_door(front_door["gcs_address"])[0] is not None  # this machine's cluster, named
    for address, debug in (("local", False), ("10.9.8.7:6379", False), (None, True)):
        assert open_door(address, debug) == (None, "")


def _connect(path: Path) -> socket.socket:
    connection = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    connection.settimeout(10)
    connection.connect(str(path))
    return connection


def _as_nobody(action) -> str:
    """`action()` in a child process that has become `nobody`: "ok <its result>", or the exception's name and text."""
    import pwd

    user = pwd.getpwnam("nobody")
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child touches nothing but the socket, then leaves without cleanup
        try:
            os.close(read)
            os.setgroups([])
            os.setgid(user.pw_gid)
            os.setuid(user.pw_uid)
            message = f"ok {action()}"
        except BaseException as exc:  # noqa: BLE001 - reported to the parent
            message = f"{type(exc).__name__}: {exc}"
        os.write(write, message.encode())
        os._exit(0)
    os.close(write)
    with os.fdopen(read) as pipe:
        answer = pipe.read()
    os.waitpid(pid, 0)
    return answer


def test_cluster_down_closes_the_front_door(tmp_path, front_door):  # the module's last test
    from cluster.entrypoints.frontdoor.actor import front_door_status
    from cluster.entrypoints.frontdoor.client import open_door
    from cluster.entrypoints.warm import bring_down

    bring_down()
    assert front_door_status() is None
    assert not Path(front_door["socket"]).exists() and open_door(None) == (None, "")
