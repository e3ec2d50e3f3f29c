"""fitness, the REST side (`Fitness.api`): /v1/fitness/predict bodies, antibody validation, scores per task and
assay values in their own units; KServe v2 inputs `heavy`, `light` (BYTES [N]) and one FP32 [N] output per task
(the task score, oriented z), request parameter `tasks` (a list of task names).

Imported by the service only (`fedtune.serve` asks `get(kind).api`), never by training.
"""

from __future__ import annotations

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from ..data.sequences import AMINO_ACIDS, bad_residue_position, chain_problem, normalise
from ..serve.errors import ApiError
from ..serve.kinds import FileOptions, KindApi
from ..serve.predict import MAX_LISTED_PROBLEMS, HeadChoice, meta, param, select_outputs
from ..serve.schemas import HEAVY, LIGHT, PredictionMeta, Text


# ---- bodies ------------------------------------------------------------------------------------------------
class Antibody(BaseModel):
    id: Text | None = Field(None, max_length=256, description="your identifier, echoed back (default: the index)")
    heavy: Text = Field(description="heavy chain, one-letter amino acids (case and surrounding space ignored)")
    light: Text = Field(description="light chain, one-letter amino acids")


class FitnessRequest(BaseModel):
    model_config = ConfigDict(json_schema_extra={"examples": [
        {"antibodies": [{"id": "ab-1", "heavy": HEAVY, "light": LIGHT}]},
        {"site": "site-1", "tasks": ["aggregation", "thermostability"],
         "antibodies": [{"id": "ab-1", "heavy": HEAVY, "light": LIGHT}]},
    ]})

    site: Text | None = Field(None, description="a site's own heads; omitted: the global heads, or the mean over "
                                               "all sites' heads when the bundle has no global heads")
    tasks: list[Text] | None = Field(None, description="tasks to score (default: all)")
    assays: list[Text] | None = Field(None, description="assays (name or task/name) to also report in their units")
    antibodies: list[Antibody] = Field(min_length=1)


class AssayValue(BaseModel):
    value: float = Field(description="prediction in the assay's own units")
    z: float = Field(description="oriented z-score (higher = more favourable)")
    measure: str = ""
    favourable: str = "higher"


class FitnessPrediction(BaseModel):
    id: str
    scores: dict[str, float] = Field(description="task -> mean oriented z of the task's assays (higher = better)")
    assays: dict[str, AssayValue] | None = None


class FitnessResponse(PredictionMeta):
    model: str = "fitness"
    tasks: list[str]
    predictions: list[FitnessPrediction]


# ---- validation and resolution against the model -----------------------------------------------------------
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


# ---- the kind's API ----------------------------------------------------------------------------------------
class FitnessApi(KindApi):
    request_model, response_model = FitnessRequest, FitnessResponse
    summary = "Score antibodies on the fitness tasks"
    description = """
    Per antibody, a score per task: the mean of the task's assay outputs as oriented z-scores (higher is
    more favourable). `assays` adds those assays in their own units. Without `site`: the global heads, or the
    mean over all sites' heads when the bundle holds private heads only (the response's `heads` says which)."""
    noun = "antibodies"

    def count(self, body: FitnessRequest) -> int:
        return len(body.antibodies)

    def items(self, body: FitnessRequest, settings) -> list[tuple[str, str]]:
        return validate_chains([(a.id, a.heavy, a.light) for a in body.antibodies], settings.max_length)

    def job(self, model, body: FitnessRequest, heads: HeadChoice):
        tasks = resolve_tasks(model, body.tasks)
        assays = resolve_assays(model, body.assays)
        needed = [t for t in model.bundle.model.tasks if t in set(tasks) | {a.task for a in assays}]
        return {"tasks": tuple(needed)}, (tasks, assays)

    def respond(self, model, body: FitnessRequest, heads: HeadChoice, context, result) -> FitnessResponse:
        tasks, assays = context
        z, values = fitness_arrays(model, result, heads, tasks, assays)
        preds = []
        for i, ab in enumerate(body.antibodies):
            scores = {t: float(z[t][i].mean()) for t in tasks}
            av = {a.key: AssayValue(value=float(values[a.key][0][i]), z=float(values[a.key][1][i]),
                                    measure=a.measure, favourable=a.favourable) for a in assays} if assays else None
            preds.append(FitnessPrediction(id=ab.id if ab.id is not None else str(i), scores=scores, assays=av))
        return FitnessResponse(**meta(model, heads), tasks=tasks, predictions=preds)

    def v2_inputs(self, model) -> tuple[str, ...]:
        return ("heavy", "light")

    def v2_outputs(self, model) -> list[dict]:
        return [{"name": t, "datatype": "FP32", "shape": [-1]} for t in model.bundle.model.tasks]

    def v2_items(self, inputs, req, settings):
        tasks = param(req, "tasks", list)
        if tasks is not None and not all(isinstance(t, str) for t in tasks):
            raise ApiError(400, "bad_parameter", "parameter 'tasks' must be a list of strings")
        pairs = validate_chains([(None, h, lt) for h, lt in zip(inputs["heavy"], inputs["light"])],
                                settings.max_length)
        return pairs, tasks

    def v2_job(self, model, req, params, heads: HeadChoice):
        tasks = resolve_tasks(model, params)
        if req.outputs:
            select_outputs([{"name": t} for t in tasks], req)
            wanted = {o.name for o in req.outputs}
            tasks = [t for t in tasks if t in wanted]
        return {"tasks": tuple(tasks)}, tasks

    def v2_tensors(self, model, req, heads: HeadChoice, context, result, n: int) -> list[dict]:
        z, _ = fitness_arrays(model, result, heads, context, [])
        return [{"name": t, "datatype": "FP32", "shape": [n], "data": z[t].mean(1).astype(float).tolist()}
                for t in context]

    # ---- files: a column per task (oriented z), per assay asked (z) and with --raw its own units
    def file_columns(self, model) -> tuple[str, ...]:
        return ("heavy", "light")

    def _file_assays(self, model, opts: FileOptions) -> list:
        wanted = list(opts.assays) if opts.assays else ([a.key for a in model.bundle.model.assays] if opts.raw
                                                         else None)
        return resolve_assays(model, wanted)

    def file_body(self, model, rows, opts: FileOptions) -> FitnessRequest:
        assays = [a.key for a in self._file_assays(model, opts)]
        return FitnessRequest(site=opts.site, tasks=list(opts.tasks) if opts.tasks else None,
                              assays=assays or None,
                              antibodies=[Antibody(heavy=r["heavy"], light=r["light"]) for r in rows])

    def file_header(self, model, opts: FileOptions) -> list[str]:
        assays = self._file_assays(model, opts)
        return (resolve_tasks(model, list(opts.tasks) if opts.tasks else None) + [a.key for a in assays]
                + ([f"{a.key}:raw" for a in assays] if opts.raw else []))

    def file_values(self, model, response: FitnessResponse, opts: FileOptions) -> list[list]:
        keys = [a.key for a in self._file_assays(model, opts)]
        return [[p.scores[t] for t in response.tasks] + [p.assays[k].z for k in keys]
                + ([p.assays[k].value for k in keys] if opts.raw else []) for p in response.predictions]


API = FitnessApi()
