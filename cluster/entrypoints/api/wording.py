"""What the API says: errors in the API's own terms, answers without the server's internals. Pure.

The run beneath speaks to a person at a terminal (`--width 100 is not a multiple of 16`, "free
some space in /data/...", an actor's id and pid). A client of the API can act on the field at
fault and on whether a retry may help; the rest (paths, flags, node ids, exception text) goes to
the server's log under a reference the answer carries.
"""

from __future__ import annotations

import logging
import re
import secrets

from cluster.entrypoints.api.schema import MULTI_IMAGE_INPUTS, ApiError
from cluster.errors import ImageGenError
from cluster.planning.costs.money import format_usd

log = logging.getLogger("kamui.api")

# A CLI flag in a run's message -> the field of each route that sets it
ROUTE_FIELDS = {
    "images": {"image-prompt": "prompt", "image-count": "n", "models": "model", "width": "size", "height": "size"},
    "multi-image": {name: name for name in MULTI_IMAGE_INPUTS},
}
_FLAG = re.compile(r"`?--([a-z][a-z-]*)`?")
_MODEL = re.compile(r"model '([^']+)'")
_BUDGET = re.compile(r"--budget-usd \$([0-9.,e+-]+)")
# what a client can act on, by code, where the run's own message speaks of the server's insides
HIDDEN = {
    "IMG_005": "the server has not enough free disk space for this request; ask for fewer or smaller images, "
               "or try again later.",
    "IMG_007": "the remote model's provider refused the server's credentials.",
    "IMG_008": "a remote model's service could not be reached; try again later.",
    "IMG_010": "the server cannot place the model now (its cards are busy or too small for this request); "
               "try again later or ask for fewer or smaller images.",
    "IMG_019": "the server's cluster is not reachable now; try again later.",
    "IMG_020": "the generation failed on the server.",
    "IMG_021": "the server is stopping; try again in a moment.",
}
# keys of a report that name the server's machines and processes
PRIVATE_KEYS = {"node_id", "gcs_address", "pid", "ip", "node_ip"}


def public_error(error: ImageGenError, route: str) -> ApiError:
    """`error` as a client of `route` should read it (logged in full when anything is left out)."""
    if isinstance(error, ApiError):
        return error
    code, message = error.code, error.message
    if code in HIDDEN:
        reference = secrets.token_hex(4)
        log.warning("request failed (reference %s): %s", reference, error)
        return ApiError(code, f"{HIDDEN[code]} (reference {reference}: the server's log has the details)")
    if code == "IMG_002":
        return _model_error(error, route)
    if code == "IMG_029":
        return _budget_error(message)
    fields = ROUTE_FIELDS[route]
    param = None

    def field(match: re.Match) -> str:
        nonlocal param
        name = fields.get(match.group(1), match.group(1))
        param = param or name
        return name

    return ApiError(code, _FLAG.sub(field, message), param)


def _model_error(error: ImageGenError, route: str) -> ApiError:
    field = "model" if route == "images" else "models"
    found = _MODEL.search(error.message)
    if "auto" in error.message and "no available model" in error.message:
        message = (f"{field} auto: no model this server may pick is available now; name one that GET /v1/models "
                   "lists as available.")
    elif found:
        message = f"model {found.group(1)!r} is not available on this server now; GET /v1/models says which are."
    else:
        message = f"{field}: no such model here; GET /v1/models lists them."
    log.warning("model not available: %s", error)
    return ApiError("IMG_002", message, field)


def _budget_error(message: str) -> ApiError:
    found = _BUDGET.search(message)
    if found is None:
        return ApiError("IMG_029", message)
    amount = float(found.group(1).replace(",", ""))
    left = f"what this API key has left today ({format_usd(amount)})"
    if message.startswith("even one image"):
        return ApiError("IMG_029", f"even one image is estimated above {left}.")
    estimated = re.search(r"estimated at \$([0-9.,]+)", message)
    cost = f"estimated at ${estimated.group(1)}, " if estimated else ""
    return ApiError("IMG_029", f"this request is {cost}more than {left}; ask for fewer images or cheaper models.")


def public_report(value, folder: str, images_url: str):
    """A run's report or step outputs as a client may see them: paths inside `folder` relative to
    it, its files' `file://` URLs as the API's image URLs, no node ids, addresses or pids."""
    if isinstance(value, dict):
        return {k: public_report(v, folder, images_url) for k, v in value.items() if k not in PRIVATE_KEYS}
    if isinstance(value, list):
        return [public_report(v, folder, images_url) for v in value]
    if isinstance(value, str) and folder in value:
        value = value.replace(f"file://{folder}/images/", f"{images_url}/")
        return value.replace(f"{folder}/", "").replace(folder, ".")
    return value


def server_timing(events) -> str:
    """A run's stage times as an HTTP Server-Timing header (milliseconds; `pipeline` is the model's own
    calls), so a client or a benchmark sees where a request's time went. Stage names only: no insides."""
    stages = next((e["seconds"] for e in reversed(events.history) if e["event"] == "stage_times"), {})
    pipeline = sum(e.get("seconds", 0.0) for e in events.history if e["event"] == "image_done")
    parts = [f"{name};dur={seconds * 1000:.1f}" for name, seconds in stages.items()]
    return ", ".join([*parts, f"pipeline;dur={pipeline * 1000:.1f}"])
