"""The HTTP front: a Ray Serve deployment speaking the OpenAI Images API over the warm cluster.

Every generation is a `run_generation` with `resident=True`: the same warm replicas, placement,
memory plans, limits, scoring, journal and history as `generate`, and each request's images in the
design card's folder layout under the server's data directory. Concurrent requests for one model
and size share pipeline calls at the replica (actors.coalescing). No traceback ever reaches a
client: every failure is an OpenAI error envelope carrying its IMG code.
"""


import asyncio
import base64
import hashlib
import hmac
import json
import os
import shutil
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

# no `from __future__ import annotations` here: FastAPI reads the endpoints' annotations at runtime
# (a postponed `Request` would be taken for a query parameter)
from fastapi import FastAPI, Request
from fastapi.responses import FileResponse, JSONResponse
from ray import serve

from cluster.api.schema import MAX_BODY_BYTES, envelope, multi_image_inputs, parse_images_request, raw_inputs, status_for
from cluster.errors import ImageGenError, describe_exception

api = FastAPI(title="kamui-multi-image", docs_url=None, redoc_url=None)


@dataclass(frozen=True)
class ServerConfig:
    data_dir: str
    key_digests: tuple[str, ...] = ()  # SHA-256 of each accepted key: the keys themselves never leave the CLI
    max_queue: int = 16  # generation requests in flight or waiting; past it, 429
    url_ttl_s: float = 3600.0
    scorer: str | None = None
    config: str | None = None
    limits: str | None = None
    history_db: str | None = None
    budget_usd_per_key_day: float | None = None  # what each API key may spend per UTC day
    upload_uri: str | None = None  # gs://bucket/prefix: `url` responses point at GCS
    # cluster.env.forwarded() of the `serve` process; holds secrets, so never in a repr
    environment: tuple[tuple[str, str], ...] = field(default=(), repr=False)


def digest(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


class KeyCheck:
    def __init__(self, digests: tuple[str, ...]):
        self.digests = digests

    def refuse(self, request: Request) -> ImageGenError | None:
        """None when the request may pass; else why not. Compared in constant time, on digests."""
        if not self.digests:
            return None
        header = request.headers.get("authorization", "")
        scheme, _, key = header.partition(" ")
        if scheme.lower() != "bearer" or not key.strip():
            return ImageGenError("IMG_007", "missing API key: send `Authorization: Bearer <key>`.")
        presented = digest(key.strip())
        if not any(hmac.compare_digest(presented, known) for known in self.digests):  # noqa: SIM110 - all compared
            return ImageGenError("IMG_007", "the API key is not valid for this server.")
        return None


class KeyBudgets:
    """What each API key may still spend today (UTC), over this server's life."""

    def __init__(self, per_day_usd: float):
        self.per_day_usd = per_day_usd
        self._spent: dict[tuple[str, str], float] = {}
        self._lock = threading.Lock()

    def reserve(self, key: str) -> tuple[tuple[str, str], float]:
        """(the key's slot today, what it has left), all of it held for this request until `settle`,
        so concurrent requests of one key cannot each spend the same remainder; IMG_029 when nothing is."""
        slot = (digest(key) if key else "anonymous", time.strftime("%Y-%m-%d", time.gmtime()))
        with self._lock:
            left = self.per_day_usd - self._spent.get(slot, 0.0)
            if left <= 1e-9:
                raise ImageGenError("IMG_029", f"this API key's budget for today (${self.per_day_usd:g}) is spent.")
            self._spent[slot] = self.per_day_usd
        return slot, left

    def settle(self, slot: tuple[str, str], held: float, spent: float) -> None:
        with self._lock:
            self._spent[slot] = self._spent.get(slot, 0.0) - held + spent


def error_response(error: ImageGenError, param: str | None = None, status: int | None = None) -> JSONResponse:
    status = status or status_for(error)
    return JSONResponse(envelope(error, param, status), status_code=status)


@serve.deployment(name="images", max_ongoing_requests=64, graceful_shutdown_timeout_s=5)
@serve.ingress(api)
class ImageAPI:
    def __init__(self, config: ServerConfig):
        from cluster.limits import load_limits
        from models.registry import load_registry

        # this replica is the server's own process: it reads credentials and caches as `serve` was given them
        os.environ.update(dict(config.environment))
        self.config = config
        self.registry = load_registry(config.config)
        self.limits = load_limits(config.limits)
        self.keys = KeyCheck(config.key_digests)
        self.data = Path(config.data_dir)
        (self.data / "images").mkdir(parents=True, exist_ok=True)
        self._busy = 0
        self._swept = float("-inf")
        self._lock = threading.Lock()
        limit = config.budget_usd_per_key_day
        self.budgets = KeyBudgets(limit) if limit is not None else None

    # --- plumbing -----------------------------------------------------------------------

    async def _body(self, request: Request):
        length = request.headers.get("content-length")
        if length is not None and (not length.isdigit() or int(length) > MAX_BODY_BYTES):
            raise ImageGenError("IMG_011", f"the request body is larger than {MAX_BODY_BYTES // 1024} KB.")
        body = await request.body()
        if len(body) > MAX_BODY_BYTES:
            raise ImageGenError("IMG_011", f"the request body is larger than {MAX_BODY_BYTES // 1024} KB.")
        try:
            return json.loads(body or b"null")
        except ValueError:
            raise ImageGenError("IMG_011", "the request body is not JSON.") from None

    def _admit(self) -> bool:
        with self._lock:
            if self._busy >= self.config.max_queue:
                return False
            self._busy += 1
            return True

    def _done(self) -> None:
        with self._lock:
            self._busy -= 1

    def _run(self, raw: dict):
        """One generation, as `generate` runs it (in a worker thread; blocking)."""
        from cluster.events import Events
        from cluster.history import History
        from cluster.request import parse_request
        from cluster.run import run_generation

        request = parse_request(raw, self.registry)
        return run_generation(request, self.registry, self.limits, events=Events(), resident=True,
                              history=History(self.config.history_db))

    async def _generate(self, raw: dict, request: Request):
        if not self._admit():
            raise ImageGenError("IMG_006", f"the server is busy ({self.config.max_queue} requests in progress); "
                                           "retry shortly.")
        slot = held = None
        try:
            if self.budgets is not None:  # what this key has left today becomes the run's budget
                key = request.headers.get("authorization", "").partition(" ")[2].strip()
                slot, held = self.budgets.reserve(key)
                raw["budget_usd"] = f"{held:.6f}"
        except BaseException:
            self._done()
            raise
        work = asyncio.ensure_future(asyncio.to_thread(self._run, raw))

        def finished(future) -> None:
            # a run past the timeout goes on in its thread: its queue slot and its spending end with it
            self._done()
            if slot is not None:
                result = None if future.cancelled() or future.exception() else future.result()
                self.budgets.settle(slot, held, sum(result.outcome.costs.values()) if result else 0.0)

        work.add_done_callback(finished)
        timeout = self.limits.perf.total_workflow_timeout + 60
        try:
            return await asyncio.wait_for(asyncio.shield(work), timeout=timeout)
        except asyncio.TimeoutError:
            raise ImageGenError("IMG_003", f"the request did not finish within {timeout:g}s.") from None

    def _sweep(self) -> None:
        """Images past their time to live go, so a long-running server does not fill its disk; at
        most once a minute, since it lists every kept request."""
        now = time.monotonic()
        if now - self._swept < 60:
            return
        self._swept = now
        cutoff = time.time() - self.config.url_ttl_s
        for folder in (self.data / "images").iterdir():
            try:
                if folder.stat().st_mtime < cutoff:
                    shutil.rmtree(folder, ignore_errors=True)
            except OSError:
                continue

    async def _guarded(self, request: Request, handler):
        refused = self.keys.refuse(request)
        if refused is not None:
            return error_response(refused, status=401)
        try:
            return await handler()
        except ImageGenError as exc:
            return error_response(exc)
        except Exception as exc:  # noqa: BLE001 - never a traceback to a client
            return error_response(ImageGenError("IMG_020", f"unexpected failure: {describe_exception(exc)}"))

    # --- endpoints ----------------------------------------------------------------------

    @api.get("/healthz")
    async def healthz(self):
        return {"status": "ok", "busy": self._busy, "queue": self.config.max_queue}

    @api.get("/v1/models")
    async def models(self, request: Request):
        async def handler():
            from models import availability

            data = [{"id": s.id, "object": "model", "created": 0, "owned_by": "kamui-multi-image",
                     "available": availability.check(s).ok, "backend": s.backend, "weights": s.weights}
                    for s in self.registry]
            return {"object": "list", "data": data}

        return await self._guarded(request, handler)

    @api.post("/v1/images/generations")
    async def images(self, request: Request):
        async def handler():
            body = parse_images_request(await self._body(request))
            self._sweep()
            request_id = uuid.uuid4().hex
            folder = self.data / "images" / request_id
            result = await self._generate(raw_inputs(body, str(folder), self.config.scorer, self.config.upload_uri), request)
            outcome = result.outcome
            if not outcome.images:
                raise outcome.error or ImageGenError("IMG_020", "no image was made.")
            (folder / "request.json").write_text(json.dumps(
                {"user": body.user, "model": body.model, "size": body.size, "n": body.n, "quality": body.quality,
                 "style": body.style, "created": int(time.time())}))
            data = []
            for final in outcome.images:
                path = folder / "images" / final.filename
                if body.response_format == "url":
                    url = final.url if final.url.startswith("https://") else \
                        f"{str(request.base_url).rstrip('/')}/v1/files/{request_id}/{final.filename}"
                    data.append({"url": url, "revised_prompt": final.image.task.prompt})
                else:
                    data.append({"b64_json": base64.b64encode(path.read_bytes()).decode("ascii"),
                                 "revised_prompt": final.image.task.prompt})
            return {"created": int(time.time()), "data": data}

        return await self._guarded(request, handler)

    @api.post("/v1/multi-image")
    async def multi_image(self, request: Request):
        async def handler():
            body = await self._body(request)
            name = str((body or {}).get("folder-name") or uuid.uuid4().hex) if isinstance(body, dict) else ""
            if not name or "/" in name or name.startswith(".") or len(name) > 128:
                raise ImageGenError("IMG_016", "folder-name must be one plain folder name (no '/', not hidden).")
            folder = self.data / "multi-image" / name
            result = await self._generate(multi_image_inputs(body, str(folder), self.config.scorer, self.config.upload_uri), request)
            base = str(request.base_url).rstrip("/")
            return {"report": result.written.report, "outputs": result.outputs,
                    "image_urls": [f"{base}/v1/multi-image/{name}/images/{f.filename}" for f in result.outcome.images]}

        return await self._guarded(request, handler)

    @api.get("/v1/files/{request_id}/{filename}")
    async def file(self, request_id: str, filename: str):
        return self._file(self.data / "images" / request_id, request_id, filename, ttl=True)

    @api.get("/v1/multi-image/{name}/images/{filename}")
    async def multi_image_file(self, name: str, filename: str):
        return self._file(self.data / "multi-image" / name, name, filename, ttl=False)

    def _file(self, folder: Path, name: str, filename: str, ttl: bool):
        plain = all(c.isalnum() or c in "-_." for c in name + filename) and not name.startswith(".")
        path = folder / "images" / filename
        if not plain or not filename.endswith(".png") or not path.is_file():
            return error_response(ImageGenError("IMG_002", "no such image (or it expired)."), status=404)
        if ttl and path.stat().st_mtime < time.time() - self.config.url_ttl_s:
            return error_response(ImageGenError("IMG_002", "the image expired."), status=404)
        return FileResponse(path, media_type="image/png")
