"""Starting and stopping the API: keys, the bind address, Ray Serve on the embedded instance or a
joined cluster, the models kept resident.

Ray Serve runs one HTTP proxy per cluster, whose address is fixed when Serve first starts: a later
`serve.start` with another host or port keeps the old proxy (Ray only logs that the new config is
ignored). So the address asked for is checked against the proxy that really serves, a server
already deployed on the cluster is never replaced, and the proxy this command started stops with it.
"""

from __future__ import annotations

import ipaddress
import time
from dataclasses import dataclass
from pathlib import Path

from cluster import env
from cluster.errors import ImageGenError

APP_NAME = "kamui-multi-image"
LOOPBACK = {"localhost"}
# How long a stopping server waits for its requests to answer before its app is deleted
DRAIN_S = 20.0


@dataclass(frozen=True)
class Deployment:
    """Where the API really serves, and whether this command started Ray Serve (then it stops it)."""

    host: str
    port: int
    started_serve: bool

    @property
    def url(self) -> str:
        shown = "127.0.0.1" if self.host in ("0.0.0.0", "::") else self.host
        shown = f"[{shown}]" if ":" in shown else shown
        return f"http://{shown}:{self.port}"


def load_keys(env_name: str | None, file: str | None) -> list[str]:
    """API keys from an environment variable (comma-separated) and/or a file (one per line). The
    variable is removed once read: the Ray processes an embedded instance starts inherit this
    environment, and have no use for the keys."""
    keys: list[str] = []
    if env_name:
        value = env.take(env_name)
        if not value:
            raise ImageGenError("IMG_011", f"--api-key-env {env_name!r}: that environment variable is not set.")
        keys += [k.strip() for k in value.split(",") if k.strip()]
    if file:
        try:
            keys += [line.strip() for line in Path(file).read_text(encoding="utf-8").splitlines()
                     if line.strip() and not line.startswith("#")]
        except OSError as exc:
            raise ImageGenError("IMG_011", f"--api-key-file {file!r} cannot be read ({exc.strerror}).") from None
    if any(len(k) < 16 for k in keys):
        raise ImageGenError("IMG_011", "API keys must be at least 16 characters long.")
    return keys


def is_loopback(host: str) -> bool:
    if host in LOOPBACK:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_bind(host: str, keys: list[str]) -> None:
    if not keys and not is_loopback(host):
        raise ImageGenError("IMG_011", f"--host {host!r} is reachable from other machines: give it an API key "
                                       "(--api-key-env or --api-key-file), or bind 127.0.0.1.")


def check_budget_keys(budget_per_key_day: float | None, keys: list[str]) -> None:
    """Per-key budgets count spending by key: without configured keys any bearer string would be a
    fresh key with a fresh day's budget."""
    if budget_per_key_day is not None and not keys:
        raise ImageGenError("IMG_011", "--budget-usd-per-key-day needs API keys to count spending by "
                                       "(--api-key-env or --api-key-file).")


def parse_public_url(value: str | None) -> str | None:
    """--public-url: the scheme, host and path prefix clients use (a TLS-terminating proxy in
    front of the server); `url` answers and image URLs start with it."""
    from urllib.parse import urlsplit

    if value is None or not value.strip():
        return None
    text = value.strip().rstrip("/")
    parts = urlsplit(text)
    if parts.scheme not in ("http", "https") or not parts.hostname or parts.query or parts.fragment:
        raise ImageGenError("IMG_011", f"--public-url {value!r} must be http(s)://HOST[:PORT][/PATH], e.g. "
                                       "https://images.example.com.")
    return text


def deploy(config, host: str, port: int, *, replace: bool = False) -> Deployment:
    """Ray Serve on the connected cluster, the API deployed; where it really serves. Refused when
    Serve already runs with its proxy elsewhere, or (unless `replace`) when a server is deployed."""
    from ray import serve

    from cluster.entrypoints.api.app import ImageAPI

    running = _running_serve()
    if running is not None:
        _check_proxy(running.http_config, host, port)
        if not replace and APP_NAME in serve.status().applications:
            raise ImageGenError("IMG_011", f"a multi-image server already runs on this cluster "
                                           f"({Deployment(host, port, False).url}); stop it first, since a second "
                                           "one would replace its application and keys.")
    serve.start(http_options={"host": host, "port": port}, logging_config={"log_level": "WARNING"})
    deployment = Deployment(host, port, started_serve=running is None)
    try:
        _check_proxy(_running_serve().http_config, host, port)  # another process may have started it meanwhile
        serve.run(ImageAPI.bind(config), name=APP_NAME, route_prefix="/")
    except BaseException:
        if deployment.started_serve or not replace:  # what this call made (none of it was another's)
            undeploy(deployment)
        raise
    return deployment


def _running_serve():
    """The cluster's Serve controller client, or None when Serve does not run there."""
    from ray.serve.context import _get_global_client

    return _get_global_client(raise_if_no_controller_running=False)


def _check_proxy(http_config, host: str, port: int) -> None:
    actual = (http_config.host, int(http_config.port))
    if actual != (host, port):
        raise ImageGenError("IMG_011", f"Ray Serve already runs on this cluster with its HTTP proxy on "
                                       f"{actual[0]}:{actual[1]}, not the {host}:{port} asked for: ask for that "
                                       "address (--host, --port), or stop that Serve first (`serve shutdown`).")


def drain(timeout_s: float = DRAIN_S) -> None:
    """Ask the deployed server to stop: new requests answer 503, runs in progress end with what they
    have made, and every request in progress gets its answer (within `timeout_s`)."""
    from ray import serve

    try:
        handle = serve.get_app_handle(APP_NAME)
        handle.drain.remote(timeout_s).result(timeout_s=timeout_s + 10)
    except Exception:  # noqa: BLE001 - a server already gone has nothing to drain
        pass


def undeploy(deployment: Deployment | None) -> None:
    """The app deleted, and Ray Serve shut down when this command started it."""
    from ray import serve

    try:
        serve.delete(APP_NAME)
        if deployment is not None and deployment.started_serve:
            serve.shutdown()
            _wait_closed(deployment)
    except Exception:  # noqa: BLE001 - the cluster may be going away with us
        pass


def _wait_closed(deployment: Deployment, timeout_s: float = 10.0) -> None:
    """The proxy's port closes a moment after Serve shut down: the next start may ask for it again."""
    import socket

    host = "127.0.0.1" if deployment.host in ("0.0.0.0", "::") else deployment.host
    end = time.monotonic() + timeout_s
    while time.monotonic() < end:
        try:
            with socket.create_connection((host, deployment.port), timeout=0.5):
                pass
        except OSError:
            return
        time.sleep(0.2)
