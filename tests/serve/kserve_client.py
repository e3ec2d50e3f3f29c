"""Run by tests/serve/test_oip_kserve.py with `.venv-kserve/bin/python` (kserve cannot share fedtune's venv):
drives a running fedtune server's /v2 with the KServe Python SDK's InferenceRESTClient and prints what it got
as JSON on stdout. Reads {"url", "antibodies", "texts"} as JSON on stdin. Imports nothing from fedtune."""

from __future__ import annotations

import asyncio
import json
import sys

import httpx
import numpy as np
from kserve import InferenceRESTClient, InferInput, InferRequest, RESTConfig
from kserve.protocol.infer_type import RequestedOutput


def _bytes_input(name: str, values: list[str], binary: bool) -> InferInput:
    if not binary:  # plain JSON data, as a user building the request by hand would
        return InferInput(name, [len(values)], "BYTES", data=list(values))
    t = InferInput(name, [len(values)], "BYTES")
    t.set_data_from_numpy(np.array([v.encode() for v in values], dtype=np.object_), binary_data=True)
    return t


async def _infer(c: InferenceRESTClient, url: str, request: InferRequest) -> dict:
    headers: dict = {}
    response = await c.infer(url, request, model_name=request.model_name, response_headers=headers)
    # the SDK turns binary outputs into plain data as it decodes them: the header says the body carried any
    return {**_outputs(response), "binary_body": "inference-header-content-length" in headers}


def _outputs(response) -> dict:
    out = {}
    for o in response.outputs:
        arr = o.as_numpy()
        data = [x.decode() if isinstance(x, bytes) else x for x in arr.ravel().tolist()]
        out[o.name] = {"datatype": o.datatype, "shape": list(o.shape), "data": data}
    return {"id": response.id, "model_name": response.model_name, "outputs": out}


async def main(spec: dict) -> dict:
    url, abs_, texts = spec["url"], spec["antibodies"], spec["texts"]
    result: dict = {}
    async with InferenceRESTClient(RESTConfig(protocol="v2", timeout=120)) as c:
        result["server_live"] = await c.is_server_live(url)
        result["server_ready"] = await c.is_server_ready(url)
        result["model_ready"] = {m: await c.is_model_ready(url, m) for m in ("fitness", "sentiment", "protein")}
        infer = {}
        for binary in (False, True):
            kind = "binary" if binary else "json"
            params = {"binary_data_output": True} if binary else None
            fit = InferRequest("fitness", [_bytes_input(ch, [a[ch] for a in abs_], binary)
                                           for ch in ("heavy", "light")], request_id=f"fit-{kind}",
                               parameters=params)
            infer[f"fitness-{kind}"] = await _infer(c, url, fit)
            sent = InferRequest("sentiment", [_bytes_input("text", texts, binary)], request_id=f"sent-{kind}",
                                parameters=params)
            infer[f"sentiment-{kind}"] = await _infer(c, url, sent)
        # heavy in JSON, light as binary tensor data, in one request, with a request parameter (docs/serve.md)
        mixed = InferRequest("fitness", [_bytes_input("heavy", [a["heavy"] for a in abs_], False),
                                         _bytes_input("light", [a["light"] for a in abs_], True)],
                             request_id="fit-mixed", parameters={"site": "site-1"})
        infer["fitness-mixed"] = await _infer(c, url, mixed)
        # one output asked for by name, in binary, through the per-output parameter
        one = InferRequest("sentiment", [_bytes_input("text", texts, False)], request_id="sent-one",
                           request_outputs=[RequestedOutput("probabilities", {"binary_data": True})])
        infer["sentiment-requested-output"] = await _infer(c, url, one)
        result["infer"] = infer
        try:
            await c.infer(url, InferRequest("protein", [_bytes_input("text", texts, False)]), model_name="protein")
            result["unknown_model"] = {"raised": False}
        except httpx.HTTPStatusError as e:
            result["unknown_model"] = {"raised": True, "status": e.response.status_code, "message": str(e)}
    return result


if __name__ == "__main__":
    print(json.dumps(asyncio.run(main(json.load(sys.stdin)))))
