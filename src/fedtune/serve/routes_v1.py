"""/v1: fitness and sentiment predictions, model cards (the admin routes are in routes_admin)."""

from __future__ import annotations

import datetime as dt

import numpy as np
from fastapi import APIRouter, Depends, Request

from ..data.fpb import SENTIMENT_LABELS
from .batcher import Job
from .deps import require_key
from .errors import ApiError
from .predict import (check_count, fitness_arrays, model_or_404, resolve_assays, resolve_heads, resolve_tasks,
                      run, validate_chains, validate_texts)
from .registry import LoadedModel
from .schemas import (AssayValue, ErrorResponse, FitnessPrediction, FitnessRequest, FitnessResponse, ModelCard,
                      ModelsResponse, SentimentPrediction, SentimentRequest,
                      SentimentResponse)

ERRORS = {401: {"model": ErrorResponse, "description": "API key missing or wrong"},
          404: {"model": ErrorResponse, "description": "unknown model, site, task or assay (lists the known ones)"},
          413: {"model": ErrorResponse, "description": "too many items or body too large"},
          422: {"model": ErrorResponse, "description": "invalid sequence/text (names index, chain, position)"}}

router = APIRouter(prefix="/v1", dependencies=[Depends(require_key)], responses={401: ERRORS[401]})


@router.post("/fitness/predict", response_model=FitnessResponse, responses=ERRORS, tags=["v1"],
             summary="Score antibodies on the fitness tasks")
async def predict_fitness(request: Request, body: FitnessRequest) -> FitnessResponse:
    """Per antibody, a score per task: the mean of the task's assay outputs as oriented z-scores (higher is
    more favourable). `assays` adds those assays in their own units. Without `site`: the global heads, or the
    mean over all sites' heads when the bundle holds private heads only (the response's `heads` says which)."""
    registry, settings = request.app.state.registry, request.app.state.settings
    model_or_404(registry, "fitness")
    check_count(len(body.antibodies), settings.max_items, "antibodies")
    pairs = validate_chains([(a.id, a.heavy, a.light) for a in body.antibodies], settings.max_length)

    def build(model: LoadedModel):
        heads = resolve_heads(model, body.site)
        tasks = resolve_tasks(model, body.tasks)
        assays = resolve_assays(model, body.assays)
        needed = [t for t in model.bundle.model.tasks if t in set(tasks) | {a.task for a in assays}]
        return Job(items=pairs, head_sets=tuple(heads.names), tasks=tuple(needed)), (heads, tasks, assays)

    model, (heads, tasks, assays), result = await run(registry, "fitness", build)
    z, values = fitness_arrays(model, result, heads, tasks, assays)
    preds = []
    for i, ab in enumerate(body.antibodies):
        scores = {t: float(z[t][i].mean()) for t in tasks}
        av = {a.key: AssayValue(value=float(values[a.key][0][i]), z=float(values[a.key][1][i]), measure=a.measure,
                                favourable=a.favourable) for a in assays} if assays else None
        preds.append(FitnessPrediction(id=ab.id if ab.id is not None else str(i), scores=scores, assays=av))
    return FitnessResponse(version=model.version, digest=model.bundle.digest, heads=heads.mode, site=heads.site,
                           head_sets=heads.names, tasks=tasks, predictions=preds)


@router.post("/sentiment/predict", response_model=SentimentResponse, responses=ERRORS, tags=["v1"],
             summary="Classify financial sentences")
async def predict_sentiment(request: Request, body: SentimentRequest) -> SentimentResponse:
    """Per text, the label and the three class probabilities (negative, neutral, positive)."""
    registry, settings = request.app.state.registry, request.app.state.settings
    model_or_404(registry, "sentiment")
    check_count(len(body.texts), settings.max_items, "texts")
    validate_texts(body.texts, settings.max_text_length)

    def build(model: LoadedModel):
        heads = resolve_heads(model, body.site)
        return Job(items=list(body.texts), head_sets=tuple(heads.names)), heads

    model, heads, result = await run(registry, "sentiment", build)
    probs = np.mean(np.stack([result[n] for n in heads.names]), axis=0)
    labels = model.bundle.manifest.get("labels") or list(SENTIMENT_LABELS)
    preds = [SentimentPrediction(label=labels[int(p.argmax())],
                                 probabilities={lab: float(v) for lab, v in zip(labels, p)}) for p in probs]
    return SentimentResponse(version=model.version, digest=model.bundle.digest, heads=heads.mode, site=heads.site,
                             head_sets=heads.names, predictions=preds)


PRIVATE_PROVENANCE = frozenset({"data_digests"})    # per-site data hashes: would confirm a guessed dataset


def served_provenance(value):
    """The bundle's provenance without the keys that must not leave the service (at any depth: older bundles
    wrote them)."""
    if isinstance(value, dict):
        return {k: served_provenance(v) for k, v in value.items() if k not in PRIVATE_PROVENANCE}
    if isinstance(value, list):
        return [served_provenance(v) for v in value]
    return value


def model_card(m: LoadedModel) -> ModelCard:
    man = m.bundle.manifest
    trunk = {k: v for k, v in man.get("trunk", {}).items() if k != "files"}
    return ModelCard(
        name=m.name, kind=m.bundle.kind, version=m.version, digest=m.bundle.digest, path=str(m.path), trunk=trunk,
        tasks=man.get("tasks"), assays=man.get("assays"), labels=man.get("labels"), sites=m.bundle.sites,
        head_sets=list(m.bundle.head_sets), heads_mode=man.get("heads", {}).get("mode"),
        metrics=man.get("metrics") or {}, provenance=served_provenance(man.get("provenance") or {}),
        created=man.get("created"),
        loaded_at=dt.datetime.fromtimestamp(m.loaded_at, dt.timezone.utc).isoformat(timespec="seconds"),
        load_seconds=round(m.load_seconds, 3))


@router.get("/models", response_model=ModelsResponse, tags=["v1"], summary="The bundles being served")
async def list_models(request: Request) -> ModelsResponse:
    return ModelsResponse(models=[model_card(m) for m in request.app.state.registry.models.values()])
