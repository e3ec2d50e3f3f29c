"""The generic steps of a prediction shared by the /v1 and /v2 routes and the kinds' APIs (`serve.kinds`): the
model, the item count, the head sets, the batcher run, request parameters and outputs. Model code runs in the
batcher only; a kind's own validation and results are in its API module (`fedtune.tasks.<kind>_api`)."""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass

from .batcher import BatcherClosed, Job, QueueFull, WorkerDead
from .errors import ApiError
from .registry import LoadedModel, Registry

log = logging.getLogger(__name__)
MAX_LISTED_PROBLEMS = 20     # problems listed in a 422's details


def model_or_404(registry: Registry, name: str) -> LoadedModel:
    model = registry.get(name)
    if model is None:
        known = sorted(registry.models)
        raise ApiError(404, "unknown_model", f"no {name!r} model is loaded; loaded: {known}", {"known": known})
    return model


def check_count(n: int, limit: int, what: str) -> None:
    if n < 1:
        raise ApiError(422, "no_items", f"no {what} given: send at least one", {"limit": limit, "given": n})
    if n > limit:
        raise ApiError(413, "too_many_items", f"{n} {what} in one request exceed the limit of {limit}",
                       {"limit": limit, "given": n})


@dataclass
class HeadChoice:
    names: list[str]        # head sets to run (their outputs are averaged)
    mode: str               # "global" | "site" | "mean-over-sites"
    site: str | None


def resolve_heads(model: LoadedModel, site: str | None) -> HeadChoice:
    bundle = model.bundle
    if site is not None and not isinstance(site, str):
        raise ApiError(422, "invalid_request", "site must be a string")
    try:
        names = bundle.resolve_sets(site)
    except KeyError:
        known = bundle.sites + (["global"] if bundle.has_global else [])
        raise ApiError(404, "unknown_site", f"unknown site {site!r}; known sites: {bundle.sites}"
                       + ("; omit site for the global heads" if bundle.has_global
                          else "; omit site for the mean over all sites"), {"known": known}) from None
    if site is not None and site != "global":
        mode = "site"
    else:
        mode = "global" if names == ["global"] else "mean-over-sites"
    return HeadChoice(names, mode, site)


async def run(registry: Registry, name: str, build):
    """`build(model) -> (Job, context)` resolves the request against one model (site, tasks, assays may
    differ between bundles); the job is queued on that model's batcher, retried against the new model when a
    reload retired it in between. Returns (model used, context, result)."""
    built = {}

    def make(model: LoadedModel) -> Job:
        job, built["context"] = build(model)
        return job

    if registry.get(name) is None:
        model_or_404(registry, name)
    try:
        model, job = registry.submit(name, make)
    except KeyError:
        model_or_404(registry, name)
        raise
    except QueueFull as exc:
        raise ApiError(503, "overloaded", f"the service is busy: {exc}; retry later",
                       headers={"Retry-After": "1"}) from None
    except WorkerDead:
        raise _worker_dead(name) from None
    except BatcherClosed:
        raise ApiError(503, "shutting_down", "the service is shutting down; retry on another replica",
                       headers={"Retry-After": "1"}) from None
    timeout = registry.settings.request_timeout_s
    try:
        result = await asyncio.wait_for(asyncio.wrap_future(job.future), timeout)   # cancels the job on timeout
    except asyncio.CancelledError:
        raise
    except TimeoutError:
        raise ApiError(504, "timeout", f"no prediction within {timeout:g} s (FEDTUNE_REQUEST_TIMEOUT_S); the "
                                       f"request was dropped from the queue") from None
    except WorkerDead:
        raise _worker_dead(name) from None
    except Exception as exc:
        log.exception("%s inference failed", name)
        raise ApiError(500, "inference_failed", f"inference failed: {type(exc).__name__}: {exc}") from None
    return model, built["context"], result


def _worker_dead(name: str) -> ApiError:
    return ApiError(503, "worker_dead", f"the {name} model's worker has stopped; the service needs a restart "
                                        f"(its liveness probe fails)")


def meta(model: LoadedModel, heads: HeadChoice) -> dict:
    """Which model and heads answered: the `schemas.PredictionMeta` fields of a /v1 response."""
    return {"version": model.version, "digest": model.bundle.digest, "heads": heads.mode, "site": heads.site,
            "head_sets": heads.names}


def param(req, key: str, kind):
    """An InferRequest parameter, None when absent; ApiError 400 when it is not a `kind`."""
    value = (req.parameters or {}).get(key)
    if value is not None and not isinstance(value, kind):
        raise ApiError(400, "bad_parameter", f"parameter {key!r} must be a {kind.__name__}")
    return value


def select_outputs(outputs: list[dict], req) -> list[dict]:
    """The output tensors an InferRequest asks for, in its order (all when it names none); 404 for unknown."""
    if not req.outputs:
        return outputs
    by_name = {o["name"]: o for o in outputs}
    unknown = [o.name for o in req.outputs if o.name not in by_name]
    if unknown:
        raise ApiError(404, "unknown_output", f"unknown outputs {unknown}; known: {list(by_name)}",
                       {"known": list(by_name)})
    return [by_name[o.name] for o in req.outputs]
