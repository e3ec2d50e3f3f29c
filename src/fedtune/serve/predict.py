"""Validation and result assembly shared by the /v1 and /v2 routes. Model code runs in the batcher only."""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass

import numpy as np

from ..data.sequences import AMINO_ACIDS, bad_residue_position, chain_problem, normalise
from .batcher import BatcherClosed, Job, QueueFull, WorkerDead
from .errors import ApiError
from .registry import LoadedModel, Registry

log = logging.getLogger(__name__)
MAX_LISTED_PROBLEMS = 20

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


def validate_chains(antibodies: list[tuple[str | None, str, str]], max_length: int) -> list[tuple[str, str]]:
    """[(id, heavy, light)] -> normalised (heavy, light) pairs, or a 422 naming index, chain and position."""
    pairs, problems = [], []
    for i, (ident, heavy, light) in enumerate(antibodies):
        chains = {"heavy": normalise(heavy), "light": normalise(light)}
        for chain, seq in chains.items():
            if seq and len(seq) <= max_length and AMINO_ACIDS.issuperset(seq):
                continue                 # the common case, at C speed
            problem = chain_problem(seq, max_length)
            if problem is None:
                continue
            pos = bad_residue_position(seq) if problem.startswith("invalid residue") else None
            problems.append({"index": i, "id": ident, "chain": chain, "problem": problem,
                             "position": None if pos is None else pos + 1,
                             "residue": None if pos is None else seq[pos], "length": len(seq)})
        pairs.append((chains["heavy"], chains["light"]))
    if problems:
        p = problems[0]
        who = f"antibody {p['index']}" + (f" (id {p['id']!r})" if p["id"] is not None else "")
        more = f" (and {len(problems) - 1} more problems)" if len(problems) > 1 else ""
        raise ApiError(422, "invalid_sequence", f"{who}: {p['chain']} chain: {p['problem']}{more}",
                       problems[:MAX_LISTED_PROBLEMS])
    return pairs


def validate_texts(texts: list[str], max_length: int) -> None:
    problems = []
    for i, text in enumerate(texts):
        if not isinstance(text, str):
            problem = "not a string"
        elif not text.strip():
            problem = "empty text"
        elif len(text) > max_length:
            problem = f"text of length {len(text)} exceeds the limit of {max_length}"
        else:
            try:
                text.encode("utf-8")
                problem = None
            except UnicodeEncodeError:
                problem = "text is not valid unicode (lone surrogate)"
        if problem:
            problems.append({"index": i, "problem": problem})
    if problems:
        more = f" (and {len(problems) - 1} more problems)" if len(problems) > 1 else ""
        raise ApiError(422, "invalid_text", f"text {problems[0]['index']}: {problems[0]['problem']}{more}",
                       problems[:MAX_LISTED_PROBLEMS])


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


def resolve_tasks(model: LoadedModel, tasks: list[str] | None) -> list[str]:
    known = list(model.bundle.model.tasks)
    if tasks is None:
        return known
    unknown = [t for t in tasks if t not in known]
    if unknown:
        raise ApiError(404, "unknown_task", f"unknown tasks {unknown}; known: {known}", {"known": known})
    return list(dict.fromkeys(tasks))


def resolve_assays(model: LoadedModel, assays: list[str] | None) -> list:
    """Assay names ('name' when unique, or 'task/name') -> Assay objects."""
    if not assays:
        return []
    all_assays = model.bundle.model.assays
    by_key = {a.key: a for a in all_assays}
    by_name: dict[str, list] = {}
    for a in all_assays:
        by_name.setdefault(a.name, []).append(a)
    out, unknown = [], []
    for name in assays:
        if name in by_key:
            out.append(by_key[name])
        elif len(by_name.get(name, [])) == 1:
            out.append(by_name[name][0])
        else:
            unknown.append(name)
    if unknown:
        known = sorted(by_key)
        raise ApiError(404, "unknown_assay", f"unknown assays {unknown}; known: {known}", {"known": known})
    return list(dict.fromkeys(out))


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


def fitness_arrays(model: LoadedModel, result: dict, heads: HeadChoice, tasks: list[str], assays: list):
    """-> (z mean per task {task: [n, k]}, per requested assay {key: (value [n], z [n])})."""
    z = {t: np.mean(np.stack([result[n][t] for n in heads.names]), axis=0) for t in result[heads.names[0]]}
    values = {}
    for a in assays:
        col = [x.key for x in model.bundle.model.assays if x.task == a.task].index(a.key)
        per_set = []
        for n in heads.names:
            per_set.append(model.bundle.stats[n].from_z(result[n][a.task][:, col], a.key))
        values[a.key] = (np.mean(per_set, axis=0), z[a.task][:, col])
    return z, values
