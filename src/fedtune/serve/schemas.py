"""Request and response bodies every kind shares (with the examples shown in the OpenAPI schema); each kind's
own /v1 prediction bodies are in its API module (`fedtune.tasks.<kind>_api`), on `PredictionMeta` and `Text`."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field

HEAVY = ("EVQLVESGGGLVQPGGSLRLSCAASGFTFSSYAMSWVRQAPGKGLEWVSAISGSGGSTYYADSVKGRFTISRDNSKNTLYLQMNSLRAEDTAVYYCAK"
         "DRLSITIRPRYYGLDVWGQGTTVTVSS")


def _valid_unicode(value: str) -> str:
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError("not valid unicode (lone surrogate)") from None
    return value


# every string a client sends is checked: one that UTF-8 cannot carry (a lone surrogate, legal in JSON escapes)
# would otherwise fail when echoed back in the response
Text = Annotated[str, AfterValidator(_valid_unicode)]

LIGHT = "DIQMTQSPSSLSASVGDRVTITCRASQSISSYLNWYQQKPGKAPKLLIYAASSLQSGVPSRFSGSGSGTDFTLTISSLQPEDFATYYCQQSYSTPLTFGQGTKVEIK"


class PredictionMeta(BaseModel):
    """Which model and heads answered: the same fields in every prediction response."""
    version: str
    digest: str
    heads: Literal["global", "site", "mean-over-sites"]
    site: str | None = None
    head_sets: list[str]


class ModelCard(BaseModel):
    name: str
    kind: str
    version: str
    digest: str
    path: str
    trunk: dict[str, Any]
    backend: str = Field("fp32", description="the trunk's inference backend (fp32, bf16, int8, onnx-int8)")
    tasks: list[str] | None = None
    assays: list[dict[str, Any]] | None = None
    labels: list[str] | None = None
    sites: list[str]
    head_sets: list[str]
    heads_mode: str | None = None
    metrics: dict[str, Any]
    provenance: dict[str, Any]
    created: str | None = None
    loaded_at: str
    load_seconds: float


class ModelsResponse(BaseModel):
    models: list[ModelCard]


class ReloadRequest(BaseModel):
    model_config = ConfigDict(json_schema_extra={"examples": [{}, {"bundles": ["/models/fitness-v2"]}]})

    bundles: list[Text] | None = Field(None, description="new bundle folders (each replaces the model of its "
                                                         "kind); omitted: re-read the folders being served")


class ReloadResponse(BaseModel):
    ok: bool
    models: dict[str, str] = Field(description="model name -> digest now served")
    seconds: float


class ErrorResponse(BaseModel):
    error: str = Field(description="what went wrong (the KServe v2 error field)")
    code: str
    details: Any = None


# ---- KServe v2 / Open Inference Protocol ----------------------------------------------------------------
class TensorSpec(BaseModel):
    name: str
    datatype: str
    shape: list[int]


class ModelMetadata(BaseModel):
    name: str
    versions: list[str]
    platform: str
    inputs: list[TensorSpec]
    outputs: list[TensorSpec]
    parameters: dict[str, Any] | None = None


class InferInput(BaseModel):
    name: Text
    shape: list[int]
    datatype: Text
    data: list[Any]
    parameters: dict[str, Any] | None = None


class RequestedOutput(BaseModel):
    name: Text
    parameters: dict[str, Any] | None = None


class InferRequest(BaseModel):
    model_config = ConfigDict(json_schema_extra={"examples": [
        {"id": "1", "inputs": [{"name": "heavy", "shape": [1], "datatype": "BYTES", "data": [HEAVY]},
                               {"name": "light", "shape": [1], "datatype": "BYTES", "data": [LIGHT]}]},
    ]})

    id: Text | None = None
    parameters: dict[str, Any] | None = Field(None, description='e.g. {"site": "site-1"}')
    inputs: list[InferInput] = Field(min_length=1)
    outputs: list[RequestedOutput] | None = None


class InferOutput(BaseModel):
    name: str
    shape: list[int]
    datatype: str
    data: list[Any]


class InferResponse(BaseModel):
    model_name: str
    model_version: str
    id: str | None = None
    parameters: dict[str, Any] | None = None
    outputs: list[InferOutput]
