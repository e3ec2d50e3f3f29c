"""What the service asks a task kind: the kind's side of /v1/<kind>/predict and of KServe v2 infer.

A kind's REST side is a `KindApi` in its own module (`fedtune.tasks.<kind>_api`, reached as
`fedtune.tasks.get(kind).api`); routes_v1 and routes_v2 register one route per kind and run the one generic
flow: model_or_404 -> count check -> the kind's validation -> head sets (`predict.resolve_heads`) -> the kind's
options for its heads -> the batcher (`predict.run`) -> the kind's response. Model code stays in the batcher
(`Task.tokenize`, `Task.head_outputs`); a kind's API only validates and assembles.
"""

from __future__ import annotations

from dataclasses import dataclass

from pydantic import BaseModel


@dataclass(frozen=True)
class FileOptions:
    """What `fedtune predict` asks for every row of a file (its command-line options)."""
    site: str | None = None              # a site's own heads (None: global, or the mean over sites)
    tasks: tuple[str, ...] | None = None     # a kind's task subset (fitness)
    assays: tuple[str, ...] | None = None    # label columns to report one by one (fitness assays)
    raw: bool = False                    # also report values in their own units


def refuse_options(kind: str, opts: FileOptions, *, tasks=True, assays=True, raw=True) -> None:
    """ValueError naming the first option of `opts` a kind does not take (flags: whether each is refused)."""
    for flag, name, given in ((tasks, "--tasks", opts.tasks), (assays, "--assays", opts.assays),
                              (raw, "--raw", opts.raw)):
        if flag and given:
            raise ValueError(f"{name}: the {kind} kind has no such option")


class KindApi:
    request_model: type[BaseModel]       # /v1/<kind>/predict body; has `site` (a site's heads, or None)
    response_model: type[BaseModel]      # its response (a `schemas.PredictionMeta`)
    summary: str                         # the route's OpenAPI summary
    description: str                     # and its description
    noun: str                            # what a request's items are called in count errors ("texts")

    # ---- /v1 -------------------------------------------------------------------------------------------
    def count(self, body) -> int:
        """How many items `body` asks about (checked against the service's limit before anything else)."""
        raise NotImplementedError

    def items(self, body, settings) -> list:
        """The body's items, validated and normalised (`Task.tokenize` takes them); ApiError 422 names the first
        bad one."""
        raise NotImplementedError

    def job(self, model, body, heads) -> tuple[dict, object]:
        """(options for `Task.head_outputs`, context for `respond`) of `body` resolved against the model that
        will answer (its tasks, assays...; ApiError 404 for unknown names). `heads`: a `predict.HeadChoice`."""
        return {}, None

    def respond(self, model, body, heads, context, result) -> BaseModel:
        """The response body from `result` ({head set: `Task.head_outputs`})."""
        raise NotImplementedError

    # ---- KServe v2 -------------------------------------------------------------------------------------
    def v2_inputs(self, model) -> tuple[str, ...]:
        """The BYTES input tensors the model takes, one element per item each."""
        raise NotImplementedError

    def v2_outputs(self, model) -> list[dict]:
        """The output tensors (name, datatype, shape with -1 for the item axis) of the model metadata."""
        raise NotImplementedError

    def v2_items(self, inputs: dict[str, list[str]], req, settings) -> tuple[list, object]:
        """(items, the request's own parameters) from the input tensors (`v2_inputs` -> their elements) and the
        InferRequest; ApiError 400 for bad parameters or unknown requested outputs, 422 for bad items."""
        raise NotImplementedError

    def v2_job(self, model, req, params, heads) -> tuple[dict, object]:
        """As `job`, for an InferRequest (`params`: what `v2_items` returned)."""
        return {}, None

    def v2_tensors(self, model, req, heads, context, result, n: int) -> list[dict]:
        """The output tensors (name, datatype, shape, data) of `n` items, those the request asked for."""
        raise NotImplementedError

    # ---- files (`fedtune predict`): rows in, one /v1 body per chunk, one output row per prediction --------
    def file_columns(self, model) -> tuple[str, ...]:
        """The input columns one item is read from (e.g. heavy, light), in order."""
        raise NotImplementedError

    def file_body(self, model, rows: list[dict[str, str]], opts: FileOptions) -> BaseModel:
        """The /v1 request body asking `opts` for `rows` (each: `file_columns` -> value); pydantic's
        ValidationError for a bad value. The body then goes through `items`, `job` and `respond` exactly as a
        request does."""
        raise NotImplementedError

    def file_header(self, model, opts: FileOptions) -> list[str]:
        """The output columns `file_values` fills; checks `opts` first (ValueError for an option the kind does
        not take, `refuse_options`; ApiError 404 for unknown tasks or assays)."""
        raise NotImplementedError

    def file_values(self, model, response, opts: FileOptions) -> list[list]:
        """One row of values (`file_header` order) per prediction of a `respond` response."""
        raise NotImplementedError
