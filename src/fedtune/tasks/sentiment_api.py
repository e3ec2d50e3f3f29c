"""sentiment, the REST side (`Sentiment.api`): /v1/sentiment/predict bodies, text validation, the label and the
class probabilities; KServe v2 input `text` (BYTES [N]), outputs `label` (BYTES [N]) and `probabilities`
(FP32 [N, 3]).

Imported by the service only (`fedtune.serve` asks `get(kind).api`), never by training.
"""

from __future__ import annotations

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from ..data.fpb import SENTIMENT_LABELS
from ..serve.errors import ApiError
from ..serve.kinds import FileOptions, KindApi, refuse_options
from ..serve.predict import MAX_LISTED_PROBLEMS, HeadChoice, meta, select_outputs
from ..serve.schemas import PredictionMeta, Text


# ---- bodies ------------------------------------------------------------------------------------------------
class SentimentRequest(BaseModel):
    model_config = ConfigDict(json_schema_extra={"examples": [
        {"texts": ["Operating profit rose to EUR 13.1 mn from EUR 8.7 mn.", "Net sales decreased by 5 %."]},
    ]})

    site: Text | None = Field(None, description="a site's own heads; omitted: global heads or mean over sites")
    texts: list[Text] = Field(min_length=1)


class SentimentPrediction(BaseModel):
    label: str
    probabilities: dict[str, float]


class SentimentResponse(PredictionMeta):
    model: str = "sentiment"
    predictions: list[SentimentPrediction]


# ---- validation ----------------------------------------------------------------------------------------------
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



def probabilities(model, heads: HeadChoice, result) -> tuple[list[str], np.ndarray]:
    """(class labels, probabilities [n, classes]: the mean over the head sets that answered)."""
    probs = np.mean(np.stack([result[n] for n in heads.names]), axis=0)
    return model.bundle.manifest.get("labels") or list(SENTIMENT_LABELS), probs


# ---- the kind's API ----------------------------------------------------------------------------------------
class SentimentApi(KindApi):
    request_model, response_model = SentimentRequest, SentimentResponse
    summary = "Classify financial sentences"
    description = "Per text, the label and the three class probabilities (negative, neutral, positive)."
    noun = "texts"
    v2_names = ("label", "probabilities")

    def count(self, body: SentimentRequest) -> int:
        return len(body.texts)

    def items(self, body: SentimentRequest, settings) -> list[str]:
        validate_texts(body.texts, settings.max_text_length)
        return list(body.texts)

    def respond(self, model, body: SentimentRequest, heads: HeadChoice, context, result) -> SentimentResponse:
        labels, probs = probabilities(model, heads, result)
        preds = [SentimentPrediction(label=labels[int(p.argmax())],
                                     probabilities={lab: float(v) for lab, v in zip(labels, p)}) for p in probs]
        return SentimentResponse(**meta(model, heads), predictions=preds)

    def v2_inputs(self, model) -> tuple[str, ...]:
        return ("text",)

    def v2_outputs(self, model) -> list[dict]:
        return [{"name": "label", "datatype": "BYTES", "shape": [-1]},
                {"name": "probabilities", "datatype": "FP32", "shape": [-1, len(SENTIMENT_LABELS)]}]

    def v2_items(self, inputs, req, settings):
        validate_texts(inputs["text"], settings.max_text_length)
        if req.outputs:
            select_outputs([{"name": n} for n in self.v2_names], req)
        return list(inputs["text"]), None

    def v2_tensors(self, model, req, heads: HeadChoice, context, result, n: int) -> list[dict]:
        labels, probs = probabilities(model, heads, result)
        return select_outputs([
            {"name": "label", "datatype": "BYTES", "shape": [n], "data": [labels[int(i)] for i in probs.argmax(1)]},
            {"name": "probabilities", "datatype": "FP32", "shape": [n, len(labels)],
             "data": probs.astype(float).ravel().tolist()}], req)

    # ---- files: the label and one probability column per class
    def file_columns(self, model) -> tuple[str, ...]:
        return ("text",)

    def file_body(self, model, rows, opts: FileOptions) -> SentimentRequest:
        return SentimentRequest(site=opts.site, texts=[r["text"] for r in rows])

    def file_header(self, model, opts: FileOptions) -> list[str]:
        refuse_options("sentiment", opts)
        labels = model.bundle.manifest.get("labels") or list(SENTIMENT_LABELS)
        return ["label"] + [f"p_{lab}" for lab in labels]

    def file_values(self, model, response: SentimentResponse, opts: FileOptions) -> list[list]:
        return [[p.label, *p.probabilities.values()] for p in response.predictions]


API = SentimentApi()
