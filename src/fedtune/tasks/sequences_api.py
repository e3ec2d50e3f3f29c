"""sequences, the REST side (`Sequences.api`): /v1/sequences/predict bodies, validation of each item against the
served model's task card, and per item the regression labels (own units + oriented z) or the class and its
probabilities. KServe v2: one BYTES [N] input per sequence column of the card (named as in the card), outputs
one FP32 [N] per regression label (own units), or `label` (BYTES [N]) and `probabilities` (FP32 [N, C]).

What an item looks like depends on the model's card, so `items` only checks the shape of a body and `job`
(which sees the model) checks every sequence against the card (422 naming item, column and problem).

Imported by the service only (`fedtune.serve` asks `get(kind).api`), never by training.
"""

from __future__ import annotations

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from ..data.sequences import chain_problem
from ..serve.errors import ApiError
from ..serve.kinds import FileOptions, KindApi, refuse_options
from ..serve.predict import MAX_LISTED_PROBLEMS, HeadChoice, meta, select_outputs
from ..serve.schemas import PredictionMeta, Text
from .sequences_card import MAX_SEQUENCE_COLUMNS, Card
from .sequences_data import MAX_TEXT_LENGTH

# ---- bodies ------------------------------------------------------------------------------------------------
class Item(BaseModel):
    id: Text | None = Field(None, max_length=256, description="your identifier, echoed back (default: the index)")
    sequences: dict[Text, Text] = Field(description="sequence column of the model's task card -> its sequence "
                                                    "(protein: one-letter amino acids) or text")


class SequencesRequest(BaseModel):
    model_config = ConfigDict(json_schema_extra={"examples": [
        {"items": [{"id": "ab-1", "sequences": {"heavy": "EVQLVESGGGLVQPGGSLRLSCAASGFTFSSYAMS",
                                                 "light": "DIQMTQSPSSLSASVGDRVTITCRASQSISSYLN"}}]},
    ]})

    site: Text | None = Field(None, description="a site's own heads; omitted: global heads or mean over sites")
    items: list[Item] = Field(min_length=1)


class LabelValue(BaseModel):
    value: float = Field(description="prediction in the label's own units")
    z: float = Field(description="oriented z-score (higher = more favourable)")
    units: str = ""
    favourable: str = "higher"


class SequencesPrediction(BaseModel):
    id: str
    values: dict[str, LabelValue] | None = Field(None, description="regression: label -> prediction")
    label: str | None = Field(None, description="classification: the most probable class")
    probabilities: dict[str, float] | None = Field(None, description="classification: class -> probability")


class SequencesResponse(PredictionMeta):
    model: str = "sequences"
    task: str = Field(description="regression or classification (the model's task card)")
    columns: list[str] = Field(description="the model's sequence columns, in order")
    predictions: list[SequencesPrediction]


# ---- validation against the model's card ------------------------------------------------------------------
def _shape_problem(seqs: list, limit: int) -> str | None:
    if not 1 <= len(seqs) <= MAX_SEQUENCE_COLUMNS:
        return f"expected one or two sequences, got {len(seqs)}"
    if not all(isinstance(s, str) and s.strip() for s in seqs):
        return "empty sequence"
    if any(len(s) > limit for s in seqs):
        return f"a sequence exceeds the service's limit of {limit} characters"
    return None


def check_shapes(items: list[dict], ids: list, settings) -> None:
    """What can be checked before the model is known: one or two non-empty sequences per item, none longer than
    the service allows any sequence (residues or text characters, whichever limit is larger)."""
    limit = max(settings.max_length, settings.max_text_length)
    _raise([{"index": i, "id": ids[i], "problem": p} for i, it in enumerate(items)
            if (p := _shape_problem(list(it.values()), limit))])


def _raise(problems: list[dict]) -> None:
    if problems:
        p = problems[0]
        who = f"item {p['index']}" + (f" (id {p['id']!r})" if p.get("id") is not None else "")
        where = f": column {p['column']!r}" if p.get("column") else ""
        more = f" (and {len(problems) - 1} more problems)" if len(problems) > 1 else ""
        raise ApiError(422, "invalid_sequence", f"{who}{where}: {p['problem']}{more}", problems[:MAX_LISTED_PROBLEMS])


def check_items(card: Card, items: list[dict], ids: list) -> None:
    """422 unless every item has exactly the card's sequence columns, each valid for the card's alphabet."""
    names = [c.name for c in card.sequence_columns]
    problems = []
    for i, item in enumerate(items):
        if sorted(item) != sorted(names):
            problems.append({"index": i, "id": ids[i],
                             "problem": f"the model takes the sequence column(s) {names}, got {sorted(item)}"})
            continue
        for name, seq in zip(names, card.item_columns(item)):
            problem = (chain_problem(seq) if card.alphabet == "protein" else
                       f"text of length {len(seq)} exceeds the limit of {MAX_TEXT_LENGTH}" if len(seq) > MAX_TEXT_LENGTH
                       else None)
            if problem:
                problems.append({"index": i, "id": ids[i], "column": name, "problem": problem})
    _raise(problems)


def mean_outputs(heads: HeadChoice, result) -> np.ndarray:
    return np.mean(np.stack([result[n] for n in heads.names]), axis=0)


def label_values(model, heads: HeadChoice, result) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Regression: {label: (value in own units [n], oriented z [n])}, each the mean over the head sets."""
    card = model.bundle.model.card
    z = mean_outputs(heads, result)
    out = {}
    for j, c in enumerate(card.label_columns):
        values = [model.bundle.stats[n].from_z(result[n][:, j], c.name) for n in heads.names]
        out[c.name] = (np.mean(values, axis=0), z[:, j])
    return out


# ---- the kind's API ----------------------------------------------------------------------------------------
class SequencesApi(KindApi):
    request_model, response_model = SequencesRequest, SequencesResponse
    summary = "Predict the labels of your own sequences"
    description = """Per item (its sequences by the column names of the model's task card), the regression labels in
    their own units and as oriented z-scores, or the class and its probabilities. See GET /v1/models for the
    card of the served model."""
    noun = "items"

    def count(self, body: SequencesRequest) -> int:
        return len(body.items)

    def items(self, body: SequencesRequest, settings) -> list[dict[str, str]]:
        items = [dict(it.sequences) for it in body.items]
        check_shapes(items, [it.id for it in body.items], settings)
        return items

    def job(self, model, body: SequencesRequest, heads: HeadChoice):
        check_items(model.bundle.model.card, [dict(it.sequences) for it in body.items], [it.id for it in body.items])
        return {}, None

    def respond(self, model, body: SequencesRequest, heads: HeadChoice, context, result) -> SequencesResponse:
        card = model.bundle.model.card
        cls_col = card.classification
        preds = []
        if cls_col:
            probs = mean_outputs(heads, result)
            for i, it in enumerate(body.items):
                preds.append(SequencesPrediction(
                    id=it.id if it.id is not None else str(i), label=cls_col.classes[int(probs[i].argmax())],
                    probabilities={c: float(p) for c, p in zip(cls_col.classes, probs[i])}))
        else:
            values = label_values(model, heads, result)
            for i, it in enumerate(body.items):
                preds.append(SequencesPrediction(id=it.id if it.id is not None else str(i), values={
                    c.name: LabelValue(value=float(values[c.name][0][i]), z=float(values[c.name][1][i]),
                                       units=c.units, favourable=c.favourable) for c in card.label_columns}))
        return SequencesResponse(**meta(model, heads), task="classification" if cls_col else "regression",
                                 columns=[c.name for c in card.sequence_columns], predictions=preds)

    def v2_inputs(self, model) -> tuple[str, ...]:
        return tuple(c.name for c in model.bundle.model.card.sequence_columns)

    def v2_outputs(self, model) -> list[dict]:
        card = model.bundle.model.card
        if card.classification:
            return [{"name": "label", "datatype": "BYTES", "shape": [-1]},
                    {"name": "probabilities", "datatype": "FP32", "shape": [-1, card.n_outputs]}]
        return [{"name": c.name, "datatype": "FP32", "shape": [-1]} for c in card.label_columns]

    def v2_items(self, inputs, req, settings):
        items = [dict(zip(inputs, row)) for row in zip(*inputs.values())]      # by column name, as /v1
        check_shapes(items, [None] * len(items), settings)
        return items, items

    def v2_job(self, model, req, params, heads: HeadChoice):
        check_items(model.bundle.model.card, params, [None] * len(params))
        select_outputs(self.v2_outputs(model), req)       # 404 for an output the model does not have
        return {}, None

    def v2_tensors(self, model, req, heads: HeadChoice, context, result, n: int) -> list[dict]:
        card = model.bundle.model.card
        cls_col = card.classification
        if cls_col:
            probs = mean_outputs(heads, result)
            tensors = [{"name": "label", "datatype": "BYTES", "shape": [n],
                        "data": [cls_col.classes[int(i)] for i in probs.argmax(1)]},
                       {"name": "probabilities", "datatype": "FP32", "shape": [n, card.n_outputs],
                        "data": probs.astype(float).ravel().tolist()}]
        else:
            values = label_values(model, heads, result)
            tensors = [{"name": c.name, "datatype": "FP32", "shape": [n],
                        "data": values[c.name][0].astype(float).tolist()} for c in card.label_columns]
        return select_outputs(tensors, req)

    # ---- files: per regression label its oriented z (and with --raw its own units), or the class and one
    # probability column per class
    def file_columns(self, model) -> tuple[str, ...]:
        return tuple(c.name for c in model.bundle.model.card.sequence_columns)

    def file_body(self, model, rows, opts: FileOptions) -> SequencesRequest:
        names = self.file_columns(model)
        return SequencesRequest(site=opts.site, items=[Item(sequences={n: r[n] for n in names}) for r in rows])

    def file_header(self, model, opts: FileOptions) -> list[str]:
        card = model.bundle.model.card
        refuse_options("sequences", opts, raw=bool(card.classification))
        if card.classification:
            return ["label"] + [f"p_{c}" for c in card.classification.classes]
        names = [c.name for c in card.label_columns]
        return names + ([f"{n}:raw" for n in names] if opts.raw else [])

    def file_values(self, model, response: SequencesResponse, opts: FileOptions) -> list[list]:
        if model.bundle.model.card.classification:
            return [[p.label, *p.probabilities.values()] for p in response.predictions]
        return [[v.z for v in p.values.values()] + ([v.value for v in p.values.values()] if opts.raw else [])
                for p in response.predictions]


API = SequencesApi()
