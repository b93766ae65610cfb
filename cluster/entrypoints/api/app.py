"""The HTTP front: a Ray Serve deployment speaking the OpenAI Images API over the warm cluster.

Every generation is a run (cluster.pipeline.run) with `resident=True`: the same warm replicas, placement,
memory plans, limits, scoring, journal and history as `generate`, and each request's images in the
design card's folder layout under the server's data directory. Concurrent requests for one model
and size share pipeline calls at the replica (actors.core.coalescing). No traceback ever reaches a
client: every failure is an OpenAI error envelope carrying its IMG code.
"""


import asyncio
import base64
import json
import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

# no `from __future__ import annotations` here: FastAPI reads the endpoints' annotations at runtime
# (a postponed `Request` would be taken for a query parameter)
from fastapi import FastAPI, Request
from fastapi.responses import FileResponse, JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from ray import serve

from cluster.entrypoints.api.keys import Caller, Hold, KeyBudgets, KeyCheck, digest  # noqa: F401 - digest: the CLI's and tests' import
from cluster.entrypoints.api.schema import (ApiError, check_text, envelope, max_body_bytes, multi_image_inputs,
                                parse_images_request, raw_inputs, retry_helps, status_for)
from cluster.entrypoints.api.storage import DataDir
from cluster.entrypoints.api.wording import public_error, public_report, server_timing
from cluster.errors import ImageGenError, describe_exception

# no schema or docs routes: they would be the one thing served without a key
api = FastAPI(title="kamui-multi-image", docs_url=None, redoc_url=None, openapi_url=None)


@dataclass(frozen=True)
class ServerConfig:
    data_dir: str
    key_digests: tuple[str, ...] = ()  # SHA-256 of each accepted key: the keys themselves never leave the CLI
    max_queue: int = 16  # generation requests in flight or waiting; past it, 429
    url_ttl_s: float = 3600.0  # how long request images and multi-image folders are kept
    scorer: str | None = None
    config: str | None = None
    limits: str | None = None
    history_db: str | None = None
    budget_usd_per_key_day: float | None = None  # what each API key may spend per UTC day
    upload_uri: str | None = None  # gs://bucket/prefix: `url` responses point at GCS
    body_timeout_s: float = 10.0  # a request body that takes longer to arrive is refused (408)
    public_url: str | None = None  # where clients reach the server (a TLS proxy in front): `url` answers use it
    # cluster.env.forwarded() of the `serve` process; holds secrets, so never in a repr
    environment: tuple[tuple[str, str], ...] = field(default=(), repr=False)


@dataclass(eq=False)  # one per request, kept in a set by identity
class Job:
    """One request's run: the event that stops it, its budget hold, and what it made."""

    stop: threading.Event = field(default_factory=threading.Event)
    abandoned: bool = False
    result: object = None
    hold: Hold | None = None
    prices: dict[str, float] = field(default_factory=dict)  # estimated USD per image, by model
    made: list[str] = field(default_factory=list)  # the model of each image made so far

    def abandon(self) -> None:
        self.abandoned = True
        self.stop.set()

    def on_event(self, event: dict) -> None:
        if event["event"] == "image_done":
            self.made.append(event["model"])

    def spent(self) -> float:
        """What the run cost: as priced when it finished, else (it failed after generating) its
        images at their estimates."""
        if self.result is not None:
            return sum(self.result.outcome.costs.values())
        fallback = max(self.prices.values(), default=0.0)
        return sum(self.prices.get(model, fallback) for model in self.made)


def model_object(spec) -> dict:
    """A model as OpenAI's model object, with what this server adds (its availability here, and the
    other names clients may call it by)."""
    from models import availability

    from models.adapters import load_adapters

    return {"id": spec.id, "object": "model", "created": 0, "owned_by": "kamui-multi-image",
            "available": availability.check(spec).ok, "backend": spec.backend, "weights": spec.weights,
            "aliases": list(spec.aliases), "adapters": [a.id for a in load_adapters().fitting(spec)]}


def adapter_objects(registry) -> list[dict]:
    """The LoRA adapters requests may name (the `adapters` field), with the models each fits."""
    from cluster import env
    from models.adapter_files import missing_reason
    from models.adapters import fits, load_adapters

    return [{"id": a.id, "object": "adapter", "family": a.family, "scale": a.scale,
             "trigger_words": list(a.trigger_words), "description": a.description, "license": a.license,
             "available": not missing_reason(a, env.cache_dir()), "models": [s.id for s in registry if fits(a, s)]}
            for a in load_adapters()]


@api.exception_handler(StarletteHTTPException)
async def _routing_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
    """No such route, or not with this method: the error envelope, as for every other answer."""
    what = {404: f"no route {request.url.path}; the API serves /v1/images/generations, /v1/models, "
                 "/v1/multi-image and /healthz.",
            405: f"{request.method} is not a method of {request.url.path}."}.get(exc.status_code, str(exc.detail))
    return error_response(ApiError("IMG_011", what, status=exc.status_code))


def error_response(error: ImageGenError, param: str | None = None, status: int | None = None) -> JSONResponse:
    status = status or status_for(error)
    # the openai client retries 408, 409, 429 and 5xx twice by default: each retry is a whole new run
    headers = {} if retry_helps(error, status) else {"x-should-retry": "false"}
    return JSONResponse(envelope(error, param, status), status_code=status, headers=headers)


# Serve's own queue in front of the replica is bounded too: past it, Serve answers 503 itself
@serve.deployment(name="images", max_ongoing_requests=64, max_queued_requests=64, graceful_shutdown_timeout_s=10)
@serve.ingress(api)
class ImageAPI:
    def __init__(self, config: ServerConfig):
        from cluster.engine.leases import WarmLeases
        from cluster.observability.history import History
        from cluster.output.uploader import load_upload_config
        from cluster.pipeline.context import RunContext
        from cluster.planning.costs.config import load_costs
        from cluster.planning.limits import load_limits
        from models.registry import load_registry
        from models.scorers import load_scoring

        # this replica is the server's own process: it reads credentials and caches as `serve` was given them
        os.environ.update(dict(config.environment))
        self.config = config
        self.registry = load_registry(config.config)
        self.max_body = max_body_bytes(self.registry)
        self.limits = load_limits(config.limits)
        # what every request's run shares, on the cluster's warm replicas: configs read once, as the
        # registry and limits are (not per request), and the warm replicas leased across requests
        self.context = RunContext(self.registry, self.limits, history=History(config.history_db), resident=True,
                                  costs=load_costs(), scoring=load_scoring(), upload_config=load_upload_config(),
                                  leases=WarmLeases())
        self.keys = KeyCheck(config.key_digests)
        self.data = DataDir(Path(config.data_dir), config.url_ttl_s)
        self.data.start()
        self._busy = 0
        self._jobs: set[Job] = set()
        self._stopping = False
        self._lock = threading.Lock()
        # runs block their thread for minutes: a pool of their own, so they never hold up the short
        # work (parsing, sweeps, encoding) that the default pool does, however many are admitted
        self._runs = ThreadPoolExecutor(max_workers=config.max_queue, thread_name_prefix="kamui-run")
        limit = config.budget_usd_per_key_day
        self.budgets = KeyBudgets(limit) if limit is not None else None

    # --- plumbing -----------------------------------------------------------------------

    async def _body(self, request: Request):
        """The request's JSON: at most `max_body` bytes (room for the longest prompt), counted as it
        streams in (a chunked body declares no length), within the body timeout."""
        limit = self.max_body
        too_large = ApiError("IMG_011", f"the request body is larger than {limit // 1024} KB.", status=413)
        length = request.headers.get("content-length")
        if length is not None and (not length.isdigit() or int(length) > limit):
            raise too_large

        async def read() -> bytes:
            chunks, size = [], 0
            async for chunk in request.stream():
                size += len(chunk)
                if size > limit:
                    raise too_large
                chunks.append(chunk)
            return b"".join(chunks)

        try:
            body = await asyncio.wait_for(read(), timeout=self.config.body_timeout_s)
        except asyncio.TimeoutError:
            raise ApiError("IMG_011", f"the request body did not arrive within {self.config.body_timeout_s:g}s.",
                           status=408) from None
        try:
            parsed = json.loads(body or b"null")
        except RecursionError:
            raise ApiError("IMG_011", "the request body nests too deeply.") from None
        except ValueError:
            raise ApiError("IMG_011", "the request body is not JSON.") from None
        check_text(parsed)
        return parsed

    def _admit(self) -> bool:
        with self._lock:
            if self._busy >= self.config.max_queue:
                return False
            self._busy += 1
            return True

    def _done(self) -> None:
        with self._lock:
            self._busy -= 1

    def _parse(self, raw: dict):
        from cluster.planning.request import parse_request

        return parse_request(raw, self.registry)

    async def _generate(self, raw: dict, caller: Caller, folder: Path, answer, keep):
        """`raw` run into `folder`, and `answer(result)`, in a worker thread; what it answers.
        Bad input is refused before the request takes a queue slot. The run stops when nobody waits
        for it any more (the client left, the request timed out); `keep(answered)` says whether the
        folder stays once the request is over."""
        request = await asyncio.to_thread(self._parse, raw)
        if self._stopping:
            raise ImageGenError("IMG_021", "the server is stopping")
        if not self._admit():
            raise ImageGenError("IMG_006", f"the server is busy ({self.config.max_queue} requests in progress); "
                                           "retry shortly.")
        job, claimed = Job(), False
        try:
            self.data.claim(folder)
            claimed = True
            if self.budgets is not None:  # the run's estimate is held of what the key has left today
                job.prices, planned = await asyncio.to_thread(self._estimate, request)
                job.hold = self.budgets.reserve(caller.owner, planned)
                request = request.model_copy(update={"budget_usd": max(job.hold.usd, 1e-9)})
        except BaseException:
            self._done()
            if claimed:
                self.data.release(folder, keep=True)
            raise
        self._jobs.add(job)
        if self._stopping:  # the drain began while this request was being admitted
            job.stop.set()
        work = asyncio.get_running_loop().run_in_executor(self._runs, self._work, request, job, folder, answer, keep)
        work.add_done_callback(lambda future: self._finished(future, job))
        timeout = self.limits.perf.total_workflow_timeout + 60
        try:
            return await asyncio.wait_for(asyncio.shield(work), timeout=timeout)
        except asyncio.TimeoutError:
            job.abandon()
            raise ImageGenError("IMG_003", f"the request did not finish within {timeout:g}s.") from None
        except asyncio.CancelledError:  # the client went away: nobody will read the images
            job.abandon()
            raise

    def _work(self, request, job: "Job", folder: Path, answer, keep):
        from cluster.observability.events import Events
        from cluster.pipeline.run import run_request

        answered = False
        try:
            # a folder that goes once answered (keep(True) is False) is scratch: not fsynced
            context = self.context.for_run(events=Events(job.on_event), stop=job.stop, durable_folder=keep(True))
            result = run_request(request, context)
            job.result = result
            if job.abandoned:
                return None
            value = answer(result)
            answered = True
            return value
        finally:
            self.data.release(folder, keep(answered))

    def _finished(self, future, job: "Job") -> None:
        """The run is over (answered, failed or abandoned): its queue slot and its spending end with it."""
        self._jobs.discard(job)
        self._done()
        if job.hold is not None:
            self.budgets.settle(job.hold, job.spent())

    def _estimate(self, request) -> tuple[dict[str, float], float]:
        """(estimated USD per image by model, the whole plan's estimate), as `generate` prices a plan."""
        from cluster.observability.history import safely
        from cluster.pipeline.stages.budget import runs_on_cpu
        from cluster.planning.costs.budget import estimate
        from cluster.planning.planner import make_plan, planned_counts

        history = self.context.history
        plan = make_plan(request, self.registry, history=safely(history.score))
        priced = estimate(planned_counts(plan), {s.id: s for s in self.registry}, safely(history.summary)() or {},
                          self.context.cost_config(), runs_on_cpu(request))
        return {model: e.usd_per_image for model, e in priced.items()}, sum(e.usd for e in priced.values())

    async def _guarded(self, request: Request, handler, route: str = "images"):
        """`handler(caller)` for a request whose key is good; every failure an error envelope in
        `route`'s terms, with nothing of the server's insides."""
        try:
            caller = self.keys.caller(request.headers.get("authorization", ""))
        except ImageGenError as refused:
            return error_response(refused, status=401)
        try:
            await asyncio.to_thread(self.data.sweep_if_due)
            return await handler(caller)
        except ImageGenError as exc:
            return error_response(public_error(exc, route))
        except Exception as exc:  # noqa: BLE001 - never a traceback to a client
            return error_response(public_error(ImageGenError("IMG_020", describe_exception(exc)), route))

    def _base(self, request: Request) -> str:
        """Where clients reach this server: --public-url behind a proxy, else the request's own."""
        return self.config.public_url or str(request.base_url).rstrip("/")

    async def drain(self, timeout_s: float) -> int:
        """The server stops (called before its app is deleted): new generation requests answer 503,
        runs in progress stop and answer with what they made (or 503), within `timeout_s`.
        Returns how many were still running then."""
        self._stopping = True
        for job in list(self._jobs):
            job.stop.set()
        loop = asyncio.get_running_loop()
        end = loop.time() + timeout_s
        while self._busy and loop.time() < end:
            await asyncio.sleep(0.1)
        return self._busy

    # --- endpoints ----------------------------------------------------------------------

    @api.get("/healthz")
    async def healthz(self):
        return {"status": "stopping" if self._stopping else "ok", "busy": self._busy, "queue": self.config.max_queue}

    @api.get("/v1/models")
    async def models(self, request: Request):
        async def handler(caller: Caller):
            data = await asyncio.to_thread(lambda: [model_object(s) for s in self.registry])
            adapters = await asyncio.to_thread(adapter_objects, self.registry)
            return {"object": "list", "data": data, "adapters": adapters}

        return await self._guarded(request, handler)

    @api.get("/v1/models/{model_id}")
    async def model(self, model_id: str, request: Request):
        async def handler(caller: Caller):
            spec = self.registry.resolve(model_id)
            if spec is None:
                raise ApiError("IMG_002", f"model {model_id!r} is not a model of this server; GET /v1/models "
                                          "lists them.", "model")
            return await asyncio.to_thread(model_object, spec)

        return await self._guarded(request, handler)

    @api.post("/v1/images/generations")
    async def images(self, request: Request):
        async def handler(caller: Caller):
            body = parse_images_request(await self._body(request), self.registry)
            token, folder = self.data.new_request()
            base = self._base(request)
            url = body.response_format == "url"
            data, timing = await self._generate(
                raw_inputs(body, str(folder), self.config.scorer, self.config.upload_uri), caller, folder,
                lambda result: (self._answer_images(body, result, folder, token, base), server_timing(result.events)),
                keep=lambda answered: answered and url)
            return JSONResponse({"created": int(time.time()), "data": data}, headers={"Server-Timing": timing})

        return await self._guarded(request, handler)

    def _answer_images(self, body, result, folder: Path, token: str, base: str) -> list[dict]:
        """The answer's `data` (blocking: PNGs read and encoded off the event loop)."""
        outcome = result.outcome
        if not outcome.images:
            raise outcome.error or ImageGenError("IMG_020", "no image was made.")
        if body.response_format == "url":
            (folder / "request.json").write_text(json.dumps(
                {"user": body.user, "model": body.model, "size": body.size, "n": body.n, "quality": body.quality,
                 "style": body.style, "created": int(time.time())}))
        data = []
        for final in outcome.images:
            if body.response_format == "url":
                url = final.url if final.url.startswith("https://") else \
                    f"{base}/v1/files/{token}/{final.filename}"
                item = {"url": url, "revised_prompt": final.image.task.prompt}
            else:
                png = (folder / "images" / final.filename).read_bytes()
                item = {"b64_json": base64.b64encode(png).decode("ascii"), "revised_prompt": final.image.task.prompt}
            if final.image.prompt_truncation:  # beyond OpenAI's fields: what the model's encoders cut of the prompt
                item["prompt_truncated"] = final.image.prompt_truncation
            data.append(item)
        return data

    @api.post("/v1/multi-image")
    async def multi_image(self, request: Request):
        async def handler(caller: Caller):
            body = await self._body(request)
            name = body.get("folder-name") if isinstance(body, dict) else None
            folder = self.data.multi_folder(caller.owner, name)
            base = self._base(request)

            def answer(result) -> dict:
                images = f"{base}/v1/multi-image/{folder.name}/images"
                return {"report": public_report(result.written.report, str(folder), images),
                        "outputs": public_report(result.outputs, str(folder), images), "folder-name": folder.name,
                        "image_urls": [f"{images}/{f.filename}" for f in result.outcome.images]}

            raw = multi_image_inputs(body, str(folder), self.config.scorer, self.registry, self.config.upload_uri)
            return await self._generate(raw, caller, folder, answer, keep=lambda answered: True)

        return await self._guarded(request, handler, "multi-image")

    @api.get("/v1/files/{token}/{filename}")
    async def file(self, token: str, filename: str):
        """A `url` answer's image: the 128-bit random token in the path is the capability (as a
        signed URL's), so a browser or an <img> tag can fetch it without the key, until it expires."""
        try:
            return FileResponse(self.data.request_image(token, filename), media_type="image/png")
        except ImageGenError as exc:
            return error_response(exc, status=404)

    @api.get("/v1/multi-image/{name}/images/{filename}")
    async def multi_image_file(self, name: str, filename: str, request: Request):
        async def handler(caller: Caller):
            return FileResponse(self.data.multi_image(caller.owner, name, filename), media_type="image/png")

        return await self._guarded(request, handler, "multi-image")
