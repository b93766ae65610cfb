"""`multi-image`: the command line. The one place an `ImageGenError` becomes a line on stderr.

Flags of `generate` are named exactly as the Action's inputs. Every value is taken as a
string and validated by `cluster.planning.request`, so the command line, the Action and batch
manifests share one set of rules and messages.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import signal
import sys
import traceback
from collections.abc import Sequence

from cluster.errors import ImageGenError

REQUEST_FLAGS = (
    ("--image-prompt", "The image generation prompt (required)."),
    ("--folder-name", "Folder for the images and metadata; relative or absolute, no '..' (required)."),
    ("--image-count", "Images per listed model, or in all with auto: 1-10 (default 1)."),
    ("--models", "Comma-separated model ids, or auto (default auto)."),
    ("--generation-strategy", "smart, sequential or parallel (default smart)."),
    ("--enable-comparison", "Same seeds and prompt for every model, side by side; alone or true/false (default false)."),
    ("--quality-threshold", "Minimum quality score, 0.0-1.0 (default 0.7)."),
    ("--max-parallel", "Most generation calls in flight at once, 1-MAX_PARALLEL (default 3)."),
    ("--seed", "Base seed; image k uses seed + k (default: random, recorded)."),
    ("--width", "Image width in pixels, a multiple of 16 (default: the model's)."),
    ("--height", "Image height in pixels, a multiple of 16 (default: the model's)."),
    ("--steps", "Denoising steps (default: the model's)."),
    ("--address", "Ray cluster to join (host:port or auto), or local for an embedded instance; default: the "
                  "cluster running on this machine (through its front door when `cluster up` opened one), else an "
                  "embedded instance."),
    ("--config", "Another models.yaml (default: configs/models.yaml)."),
    ("--upload-uri", "gs://bucket/prefix: upload images to Google Cloud Storage (default: configs/output.yaml)."),
    ("--signed-urls", "V4 signed URLs instead of public ones; alone or true/false (default: configs/output.yaml)."),
    ("--scorer", "CLIP scorer from configs/scoring.yaml (vit-l-14, tiny-clip) or none (default: vit-l-14)."),
    ("--memory-plan", "How local models are held: auto (the first plan that fits the card; default), resident, "
                      "fp8-storage, model-offload, group-offload or sequential-offload."),
    ("--budget-usd", "Most the run may spend, in US dollars (local GPU time and remote list prices)."),
    ("--budget-policy", "degrade (cheaper models, fewer images; default) or refuse a plan estimated over budget."),
    ("--translate", "auto (default), off, required, or a translator id: English for models that cannot read the "
                    "prompt's language."),
    ("--adapters", "LoRA adapters from configs/adapters.yaml, ID[:SCALE][,ID[:SCALE]...] (default: none): one look "
                   "across runs; auto picks only models they fit."),
)
BOOLEAN_FLAGS = ("--enable-comparison", "--signed-urls")
REQUIRED_FLAGS = ("--image-prompt", "--folder-name")
LIMIT_FLAGS = (
    ("--timeout-per-image", "timeout_per_image", "Seconds a generation call may run (default 300)."),
    ("--total-timeout", "total_workflow_timeout", "Seconds the whole run may take (default 1800)."),
    ("--disk-space-limit", "disk_space_limit", "Most bytes the run may write, e.g. 10GB."),
    ("--memory-limit-per-image", "memory_limit_per_image", "Host memory reserved per image, e.g. 2GB."),
)


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # argparse's own usage errors, as one IMG line
        raise ImageGenError("IMG_011", f"{message} (see `{self.prog} --help`)")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="multi-image", description="Multi-image generation on a Ray cluster of local GPUs and Imagen.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    for add in (_add_generate, _add_batch, _add_cluster, _add_serve, _add_history):
        add(sub)
    return parser


def _add_generate(sub) -> None:
    gen = sub.add_parser("generate", help="Generate images for one prompt.",
                         description="Generate images for one prompt into the design card's folder layout.")
    from cluster.planning.bounds import MAX_PARALLEL

    for flag, help_text in REQUEST_FLAGS:
        help_text = help_text.replace("MAX_PARALLEL", str(MAX_PARALLEL))  # the range request validation enforces
        if flag in BOOLEAN_FLAGS:  # the Action's boolean inputs: `--flag` alone means true
            gen.add_argument(flag, default=None, nargs="?", const="true", metavar="true|false", help=help_text)
        else:
            gen.add_argument(flag, default=None, metavar="VALUE", help=help_text)
    gen.add_argument("--limits", default=None, metavar="FILE", help="Another limits.yaml (default: configs/limits.yaml).")
    for flag, _, help_text in LIMIT_FLAGS:
        gen.add_argument(flag, default=None, metavar="VALUE", help=help_text)
    gen.add_argument("--history-db", default=None, metavar="FILE",
                     help="Run history (SQLite); default $KAMUI_HISTORY_DB or ~/.cache/kamui-multi-image/history.sqlite.")
    gen.add_argument("--json", action="store_true", help="Print events and the summary as JSON lines on stdout.")
    gen.add_argument("--debug", action="store_true", help="Show Ray's logs and tracebacks.")
    gen.add_argument("--no-resume", action="store_true",
                     help="Start afresh even when an interrupted run of the same request left finished images.")
    gen.add_argument("--dry-run", action="store_true",
                     help="Validate and plan only: per model, the memory plan, bundle and nodes it would use, and "
                          "whether its weights are here. Generates and writes nothing.")
    gen.add_argument("--card-memory", default=None, metavar="GIB",
                     help="With --dry-run: plan for one card of this many GiB (what torch.cuda.mem_get_info "
                          "reports over 2**30) instead of the cluster's.")
    gen.add_argument("--host-memory", default=None, metavar="GIB",
                     help="With --dry-run and --card-memory: that machine's free RAM in GiB (default: this "
                          "machine's).")
    gen.set_defaults(handler=_generate)


def _add_batch(sub) -> None:
    batch = sub.add_parser("batch", help="Run a manifest of requests on shared warm replicas (resumable).",
                           description="Run every request of a JSON Lines or YAML manifest. Finished entries are "
                                       "skipped on a rerun; a bad entry never stops the others.")
    batch.add_argument("manifest", metavar="MANIFEST", help="JSON Lines (.jsonl) or YAML (.yaml) manifest.")
    batch.add_argument("--address", default=None, metavar="VALUE",
                       help="Ray cluster to join (auto or host:port), or local; default: the cluster running here (through "
                            "its front door when `cluster up` opened one), else an embedded instance.")
    batch.add_argument("--entries-at-once", default="2", metavar="N", help="Entries running at the same time (default 2).")
    batch.add_argument("--budget-usd", default=None, metavar="USD",
                       help="The whole manifest's budget: entries get what is left; none starts once it is spent.")
    batch.add_argument("--config", default=None, metavar="FILE", help="Another models.yaml.")
    batch.add_argument("--limits", default=None, metavar="FILE", help="Another limits.yaml.")
    batch.add_argument("--scorer", default=None, metavar="ID", help="Scorer for entries that name none.")
    batch.add_argument("--history-db", default=None, metavar="FILE", help="Run history file.")
    batch.add_argument("--json", action="store_true", help="Events and the summary as JSON lines on stdout.")
    batch.add_argument("--debug", action="store_true", help="Show Ray's logs and tracebacks.")
    batch.set_defaults(handler=_batch)


def _add_cluster(sub) -> None:
    cluster = sub.add_parser("cluster", help="A warm cluster that keeps models resident across runs.")
    cluster_sub = cluster.add_subparsers(dest="cluster_command", metavar="ACTION", parser_class=_Parser)
    up = cluster_sub.add_parser("up", help="Start (or join) a Ray cluster, load models resident and open its front door.")
    up.add_argument("--address", default=None, metavar="VALUE", help="Join this cluster instead of starting one here.")
    up.add_argument("--models", default=None, metavar="IDS",
                    help="Comma-separated models to load (default: every available model `auto` may pick).")
    up.add_argument("--scorer", default=None, metavar="ID", help="Scorer to keep resident (default: scoring.yaml's).")
    up.add_argument("--replicas", default="1", metavar="N", help="Replicas per local model (default 1).")
    up.add_argument("--keep-alive", default=None, metavar="SECONDS",
                    help="Idle seconds before a resident model releases its GPU (default: limits.yaml, 1800).")
    up.add_argument("--config", default=None, metavar="FILE", help="Another models.yaml.")
    up.add_argument("--limits", default=None, metavar="FILE", help="Another limits.yaml.")
    up.set_defaults(handler=_cluster_up)
    st = cluster_sub.add_parser("status", help="Nodes, GPUs, GPU memory, resident models and their queues.")
    st.add_argument("--address", default=None, metavar="VALUE", help="The cluster (default: the one on this machine).")
    st.add_argument("--json", action="store_true", help="Print the status as JSON.")
    st.set_defaults(handler=_cluster_status)
    down = cluster_sub.add_parser("down", help="Release every resident model.")
    down.add_argument("--address", default=None, metavar="VALUE", help="The cluster (default: the one on this machine).")
    down.add_argument("--stop", action="store_true", help="Also stop the Ray node on this machine (`ray stop`).")
    down.set_defaults(handler=_cluster_down)


def _add_serve(sub) -> None:
    srv = sub.add_parser("serve", help="An OpenAI-compatible image API (Ray Serve) over the warm cluster.",
                         description="Serve POST /v1/images/generations, GET /v1/models, POST /v1/multi-image and "
                                     "GET /healthz on Ray Serve, with the same warm replicas as generate.")
    srv.add_argument("--address", default=None, metavar="VALUE",
                     help="Ray cluster to join (auto or host:port); default: the cluster running here, else embedded.")
    srv.add_argument("--host", default="127.0.0.1", metavar="HOST",
                     help="Address to bind (default 127.0.0.1; any other needs an API key).")
    srv.add_argument("--port", default="8000", metavar="PORT", help="Port (default 8000).")
    srv.add_argument("--models", default=None, metavar="IDS", help="Models to load resident before serving.")
    srv.add_argument("--api-key-env", default=None, metavar="NAME",
                     help="Environment variable holding the accepted API key(s), comma-separated.")
    srv.add_argument("--api-key-file", default=None, metavar="FILE", help="File of accepted API keys, one per line.")
    srv.add_argument("--data-dir", default=None, metavar="DIR",
                     help="Where request images and multi-image folders go (default ~/.cache/kamui-multi-image/serve).")
    srv.add_argument("--queue", default="16", metavar="N",
                     help="Generation requests in progress at once; past it, 429 (default 16).")
    srv.add_argument("--url-ttl", default="3600", metavar="SECONDS",
                     help="How long `url` images are kept and served (default 3600).")
    srv.add_argument("--scorer", default=None, metavar="ID", help="Scorer for requests (default: scoring.yaml's).")
    srv.add_argument("--upload-uri", default=None, metavar="URI",
                     help="gs://bucket/prefix: upload every image to Google Cloud Storage; `url` responses point there "
                          "(default: configs/output.yaml).")
    srv.add_argument("--public-url", default=None, metavar="URL",
                     help="Where clients reach the server, e.g. https://images.example.com behind a TLS proxy "
                          "(default: the address of each request).")
    srv.add_argument("--budget-usd-per-key-day", default=None, metavar="USD",
                     help="What each API key may spend per UTC day; past it, 429 with IMG_029.")
    srv.add_argument("--config", default=None, metavar="FILE", help="Another models.yaml.")
    srv.add_argument("--limits", default=None, metavar="FILE", help="Another limits.yaml.")
    srv.add_argument("--history-db", default=None, metavar="FILE", help="Run history file.")
    srv.set_defaults(handler=_serve)


def _add_history(sub) -> None:
    hist = sub.add_parser("history", help="Per-model summary of earlier runs.",
                          description="Per-model summary of earlier runs (most recent 50 runs per model).")
    hist.add_argument("--history-db", default=None, metavar="FILE", help="The history file (default as for generate).")
    hist.add_argument("--json", action="store_true", help="Print the summary as JSON.")
    hist.set_defaults(handler=_history)


def _positive_int(value: str, flag: str) -> int:
    from cluster.entrypoints.inputs import positive_int

    return positive_int(value, flag)


def _batch(args: argparse.Namespace) -> int:
    import os

    from cluster.entrypoints.inputs import BatchInputs

    inputs = BatchInputs(args.manifest, os.getcwd(), args.entries_at_once, args.budget_usd, args.config, args.limits,
                         args.scorer, args.history_db)
    from cluster.entrypoints.frontdoor.client import open_door

    door, note = open_door(args.address, args.debug)
    if door is not None:
        return door.batch(inputs, args.json)
    return _batch_direct(args, inputs, note)


def _batch_direct(args: argparse.Namespace, inputs, note: str) -> int:
    from cluster.entrypoints.batch import run_batch, summary_table
    from cluster.entrypoints.inputs import prepare_batch
    from cluster.observability.events import Events
    from cluster.observability.progress import choose_sinks
    from cluster.engine.ray_runtime import RayRuntime
    from cluster.engine.resident import REGISTRY_TIMEOUT, RELEASE_TIMEOUT, registry_actor

    batch = prepare_batch(inputs)
    import ray

    from cluster.output.durability.guard import RunGuard, SignalWatch

    # entries journal their images; a batch stopped past the guard's deadline resumes where it was
    guard = RunGuard(deadline_s=9.0)
    with SignalWatch(guard), machine_stdout(args.json) as out, RayRuntime(args.address, args.debug) as runtime:
        events = Events(*choose_sinks(args.json, out=out))
        if note:
            events.emit("front_door_skipped", reason=note)
        before = {e["name"] for e in ray.get(registry_actor().entries.remote(), timeout=REGISTRY_TIMEOUT)}
        try:
            results = run_batch(batch.entries, batch.registry, batch.limits, events=events, stop=guard.stop,
                                entries_at_once=batch.at_once, budget_usd=batch.budget, history=batch.history)
        finally:
            if runtime.embedded:  # an embedded cluster's warm replicas end with the batch
                created = [e["name"] for e in ray.get(registry_actor().entries.remote(), timeout=REGISTRY_TIMEOUT)
                           if e["name"] not in before]
                ray.get(registry_actor().release.remote(names=created), timeout=RELEASE_TIMEOUT)
        if args.json:
            print(json.dumps({"event": "batch_summary", "entries": [r.__dict__ for r in results]}), file=out,
                  flush=True)
    if not args.json:
        print(summary_table(results))
    if guard.stop.is_set():
        return 130 if guard.signal != signal.SIGTERM else 143
    return 0 if all(r.ok for r in results) else 1


def _cluster_connect(address):
    from cluster.entrypoints.warm import connect

    return connect(address, start=False)


def _cluster_up(args: argparse.Namespace) -> int:
    from cluster.planning.limits import load_limits
    from cluster.entrypoints.warm import bring_up, connect, open_front_door
    from models.registry import load_registry
    from models.scorers import load_scoring

    registry = load_registry(args.config)
    limits = load_limits(args.limits)
    if args.models:
        from cluster.planning.request import parse_models

        model_ids = list(parse_models(args.models, registry))
    else:
        from models import availability

        model_ids = [s.id for s in registry if s.auto_select and availability.check(s).ok]
        if not model_ids:  # nothing to keep warm: say so before any Ray starts
            from models.hub_cli import download_command

            raise ImageGenError("IMG_002", "cluster up found no model to load: none that `auto` may pick is available "
                                           f"here. Fetch FLUX.1-schnell (`{download_command('black-forest-labs/FLUX.1-schnell')}`), "
                                           "set GOOGLE_API_KEY for Imagen, or name models with --models (--models "
                                           "tiny-flux for the random-weight demo).")
    replicas = _positive_int(args.replicas, "--replicas")
    keep_alive = float(_positive_int(args.keep_alive, "--keep-alive")) if args.keep_alive else None
    address = connect(args.address, start=True)
    report = bring_up(registry, model_ids, load_scoring(), args.scorer, limits, replicas, keep_alive)
    door, why_not = open_front_door()
    print(f"cluster at {address} (namespace kamui-multi-image)")
    if door is not None:
        print(f"  front door: {door['socket']} (generate and batch on this machine hand their runs to it)")
    else:
        print(f"  front door not opened: {why_not}; runs join the cluster directly", file=sys.stderr)
    for model, row in report.models.items():
        print(f"  {model}: {row['replicas']} replica(s) resident on {row['device']}, loaded in {row['load_seconds']:.1f}s")
    if report.scorer:
        print(f"  scorer {report.scorer.get('name')}: resident on {report.scorer.get('device')}")
    for model, message in report.short.items():
        print(f"  {model}: {message}", file=sys.stderr)
    for model, message in report.errors.items():
        print(f"  {model}: not resident: {message}", file=sys.stderr)
    if not report.models and model_ids:
        return 1
    print("use it with: multi-image generate --address auto ...")
    return 0


def _serve(args: argparse.Namespace) -> int:
    from pathlib import Path

    from cluster import env
    from cluster.entrypoints.api.app import ServerConfig, digest
    from cluster.entrypoints.api.server import check_bind, check_budget_keys, deploy, drain, load_keys, parse_public_url, undeploy
    from cluster.planning.request import parse_budget
    from cluster.output.durability.guard import RunGuard, SignalWatch
    from cluster.planning.limits import load_limits
    from cluster.engine.ray_runtime import RayRuntime
    from models.registry import load_registry
    from models.scorers import load_scoring

    keys = load_keys(args.api_key_env, args.api_key_file)
    check_bind(args.host, keys)
    budget_per_key_day = parse_budget(args.budget_usd_per_key_day)
    check_budget_keys(budget_per_key_day, keys)
    public_url = parse_public_url(args.public_url)
    port = _positive_int(args.port, "--port")
    queue = _positive_int(args.queue, "--queue")
    ttl = _positive_int(args.url_ttl, "--url-ttl")
    registry = load_registry(args.config)
    limits = load_limits(args.limits)
    scoring = load_scoring()
    if args.scorer:
        from cluster.planning.request import parse_scorer

        parse_scorer(args.scorer)
    model_ids = []
    if args.models:
        from cluster.planning.request import parse_models

        model_ids = list(parse_models(args.models, registry))
    if args.upload_uri:
        from cluster.planning.request import parse_gcs_uri

        parse_gcs_uri(args.upload_uri)
    data_dir = Path(args.data_dir).expanduser().resolve() if args.data_dir else env.cache_dir() / "serve"
    config = ServerConfig(data_dir=str(data_dir), key_digests=tuple(digest(k) for k in keys), max_queue=queue,
                          url_ttl_s=float(ttl), scorer=args.scorer, config=str(registry.path),
                          limits=args.limits, history_db=args.history_db,
                          budget_usd_per_key_day=budget_per_key_day,
                          upload_uri=args.upload_uri, public_url=public_url, environment=env.forwarded())
    # a server stopping gets time to let its requests finish
    guard = RunGuard(deadline_s=30.0, stop_message="stopping the API (signal again to stop at once)")
    with SignalWatch(guard), RayRuntime(args.address):
        if model_ids:
            from cluster.entrypoints.warm import bring_up

            report = bring_up(registry, model_ids, scoring, args.scorer, limits)
            for model, message in report.errors.items():
                print(f"  {model}: not resident: {message}", file=sys.stderr)
        deployment = deploy(config, args.host, port)
        public = f", public at {public_url}/v1" if public_url else ""
        print(f"serving the OpenAI Images API at {deployment.url}/v1{public} "
              f"({'API key required' if keys else 'no API key'}); images under {data_dir}", flush=True)
        guard.stop.wait()
        drain()
        undeploy(deployment)
        print("the API stopped", flush=True)
    return 0


def _cluster_status(args: argparse.Namespace) -> int:
    from cluster.entrypoints.warm import status

    _cluster_connect(args.address)
    state = status()
    if args.json:
        print(json.dumps(state, indent=2))
        return 0
    for node in state["nodes"]:
        gpu = f"{node['gpus']:g} GPU, {node['gpu_memory_gb']:g} GB GPU memory" if node["gpus"] else "no GPU"
        print(f"node {node['address']}: {node['cpus']:g} CPU, {gpu}")
    free = state["available"]
    print(f"free: {free['CPU']:g} CPU, {free['GPU']:g} GPU, {free['gpu_memory_gb']:g} GB GPU memory")
    if not state["resident"]:
        print("no resident models")
    for row in state["resident"]:
        if row["kind"] == "scorer":
            print(f"scorer {row['model']} ({row['name']})")
            continue
        detail = row.get("state") or (f"running {row['running']}, queued {row['queued']}, {row['calls']} calls, "
                                      f"idle {row['idle_seconds']:.0f}s")
        plan = row.get("memory_plan")
        if plan:
            peak = row.get("peak_gpu_memory_bytes")
            measured = f", peak {peak / 2**30:.1f} GB" if peak else ""
            detail += f"; memory plan {plan['label']} ({plan['footprint_gb']:g} GB planned{measured}): {plan['reason']}"
        print(f"model {row['model']} ({row['name']}): {detail}")
    door = state.get("front_door")
    if door is None:
        print("front door: none (runs join the cluster directly)")
    elif "socket" in door:
        print(f"front door: {door['socket']}, {door['running']} run(s) in progress, {door['served']} served")
    else:
        print(f"front door: {door.get('state')}")
    for group in state["placement_groups"]:
        if group["held_by"] is None:
            print(f"placement group {group['name']} ({group['state']}): held by no live replica; "
                  "`multi-image cluster down` frees it")
    return 0


def _cluster_down(args: argparse.Namespace) -> int:
    from cluster.entrypoints.warm import bring_down

    _cluster_connect(args.address)
    released = bring_down(stop_ray=args.stop)
    print(f"released {len(released)} resident actor(s)" + (" and stopped Ray on this machine" if args.stop else ""))
    return 0


def _history(args: argparse.Namespace) -> int:
    from cluster.observability.history import History
    from cluster.planning.costs.money import format_usd

    history = History(args.history_db)
    summary = history.summary()
    months = history.monthly()
    if args.json:
        print(json.dumps({"models": summary, "months": months}, indent=2))
        return 0
    if not summary:
        print(f"no runs recorded yet in {history.path}")
        return 0
    header = ("model", "runs", "images", "failed", "ok/attempt", "s/image", "quality", "cost", "cost/image")
    rows = [(key, str(r["runs"]), str(r["images"]), str(r["failed"]),
             "—" if r["success_rate"] is None else f"{r['success_rate'] * 100:.0f}%",
             "—" if r["seconds_per_image"] is None else f"{r['seconds_per_image']:.2f}",
             "—" if r["mean_quality"] is None else f"{r['mean_quality']:.3f}", format_usd(r["cost_usd"]),
             format_usd(r["cost_usd"] / r["images"]) if r["images"] else "—")
            for key, r in summary.items()]
    _print_table(header, rows)
    print("ok/attempt: the share of generation attempts that made an image (a retried image counts each try)")
    print("\nspending by month")
    _print_table(("month", "model", "images", "cost"),
                 [(m["month"], m["model"], str(m["images"]), format_usd(m["cost_usd"])) for m in months])
    print(f"\n{history.path}")
    return 0


def _print_table(header: tuple, rows: list[tuple]) -> None:
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]
    for row in [header, *rows]:
        print("  ".join(cell.ljust(w) if i == 0 else cell.rjust(w) for i, (cell, w) in enumerate(zip(row, widths))))


def _generate(args: argparse.Namespace) -> int:
    missing = [flag for flag in REQUIRED_FLAGS if getattr(args, flag.lstrip("-").replace("-", "_")) is None]
    if missing:
        raise ImageGenError("IMG_011", f"generate needs {' and '.join(missing)} (e.g. --image-prompt \"a lighthouse at "
                                       "dusk\" --folder-name out); see `multi-image generate --help`.")
    inputs = _generate_inputs(args)
    note = ""
    if not (args.dry_run or args.card_memory or args.host_memory):
        from cluster.entrypoints.frontdoor.client import open_door

        door, note = open_door(args.address, args.debug)
        if door is not None:
            return door.generate(inputs, args.json)
    return _generate_direct(args, inputs, note)


def _generate_inputs(args: argparse.Namespace):
    """What the command line says, as strings: every request flag, whatever flags there are."""
    import os

    from cluster.entrypoints.inputs import GenerateInputs

    raw = {flag.lstrip("-").replace("-", "_"): getattr(args, flag.lstrip("-").replace("-", "_"))
           for flag, _ in REQUEST_FLAGS}
    raw["debug"] = "true" if args.debug else None
    raw["no_resume"] = "true" if args.no_resume else None
    overrides = {key: getattr(args, flag.lstrip("-").replace("-", "_")) for flag, key, _ in LIMIT_FLAGS}
    return GenerateInputs(raw, os.getcwd(), args.limits, overrides, args.history_db)


def _generate_direct(args: argparse.Namespace, inputs, note: str) -> int:
    """The run with this process as its Ray driver (no front door, or one not to use)."""
    from cluster.entrypoints.inputs import prepare_generate
    from cluster.entrypoints.summary import error_line, summary_event
    from cluster.observability.events import Events
    from cluster.observability.progress import choose_sinks
    from cluster.pipeline.context import RunContext
    from cluster.pipeline.run import run_request

    request, registry, limits, history = prepare_generate(inputs)
    if args.dry_run or args.card_memory or args.host_memory:
        return _dry_run(args, request, registry, limits)

    from cluster.output.durability.guard import RunGuard, SignalWatch

    guard = RunGuard()
    with SignalWatch(guard), machine_stdout(args.json) as out:
        events = Events(*choose_sinks(args.json, out=out))
        if note:
            events.emit("front_door_skipped", reason=note)
        context = RunContext(registry, limits, events=events, stop=guard.stop, history=history, guard=guard)
        result = run_request(request, context)
        if args.json:
            print(json.dumps(summary_event(result, "direct"), ensure_ascii=False), file=out, flush=True)
    if not args.json:
        _print_summary(result)
    error = error_line(result)
    if error:
        print(error, file=sys.stderr)
    if guard.signal == signal.SIGTERM:
        return 143
    return result.exit_code


def _dry_run(args: argparse.Namespace, request, registry, limits) -> int:
    """The run's verdict without running: its exit status, and its error line when it would stop."""
    from cluster.entrypoints.dry_run import Hypothetical, dry_run, parse_memory, render
    from cluster.observability.history import History
    from cluster.observability.progress import one_line

    if not args.dry_run:
        raise ImageGenError("IMG_011", "--card-memory and --host-memory only go with --dry-run.")
    card = parse_memory(args.card_memory, "--card-memory")
    host = parse_memory(args.host_memory, "--host-memory")
    if host is not None and card is None:
        raise ImageGenError("IMG_011", "--host-memory describes the machine of --card-memory; give both.")
    machine = Hypothetical(card, host) if card is not None else None
    result = dry_run(request, registry, limits, machine, History(args.history_db))
    if args.json:
        print(json.dumps(result, ensure_ascii=False))
    else:
        for line in render(result).splitlines():
            print(one_line(line))
    verdict = result["verdict"]
    if verdict is None:
        return 0
    print(f"error {verdict['code']}: {one_line(verdict['message'])}", file=sys.stderr)
    return verdict["exit_status"]


@contextlib.contextmanager
def machine_stdout(json_mode: bool):
    """With --json, stdout carries JSON lines only: anything else printed meanwhile (Ray's own
    messages from the cluster, for one) goes to stderr."""
    real = sys.stdout
    if not json_mode:
        yield real
        return
    sys.stdout = sys.stderr
    try:
        yield real
    finally:
        sys.stdout = real


def _print_summary(result) -> None:
    from cluster.entrypoints.summary import summary_lines

    for line in summary_lines(result):
        print(line)


def main(argv: Sequence[str] | None = None) -> int:
    from cluster.observability.progress import one_line

    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
        if not getattr(args, "handler", None):
            parser.print_help()
            return 2
        return args.handler(args)
    except ImageGenError as exc:
        if debug:
            traceback.print_exc()
        # messages quote user values (paths, flags): whatever they hold, the error stays one line
        print(f"error {exc.code}: {one_line(exc.message)}", file=sys.stderr)
        return exc.exit_status
    except KeyboardInterrupt:
        print("error IMG_021: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:  # noqa: BLE001 - a bug must still end in one line, not a traceback
        if debug:
            traceback.print_exc()
        print(f"error IMG_020: unexpected failure: {one_line(' '.join(str(exc).split())[:300])} "
              "(run again with --debug for the traceback)", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
