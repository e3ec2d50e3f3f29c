"""/v2 against the Open Inference Protocol's reference HTTP client, tritonclient, on a real uvicorn server:
at its default settings (binary tensor data in and out) and in JSON, for both models. The reference answers
come from the plain JSON route (itself checked against Bundle.predict_* in test_predict.py)."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest
from serve_helpers import antibodies, settings, texts

from fedtune.serve.server import BackgroundServer

httpclient = pytest.importorskip("tritonclient.http", reason="pip install -e '.[dev]' (tritonclient[http])")
from tritonclient.http.aio import InferenceServerClient as AioClient  # noqa: E402
from tritonclient.utils import InferenceServerException  # noqa: E402

ATOL = 1e-6
KEY = "oip-test-key"


@pytest.fixture(scope="module")
def triton(server):
    with httpclient.InferenceServerClient(server.url.removeprefix("http://"), network_timeout=120) as c:
        yield c


def _bytes_input(name: str, values: list[str], shape: list[int], binary: bool):
    t = httpclient.InferInput(name, shape, "BYTES")
    return t.set_data_from_numpy(np.array(values, dtype=object).reshape(shape), binary_data=binary)


def _fitness_inputs(abs_: list[dict], binary: bool, column: bool = False):
    shape = [len(abs_), 1] if column else [len(abs_)]
    return [_bytes_input(chain, [a[chain] for a in abs_], shape, binary) for chain in ("heavy", "light")]


def _reference(client, model: str, inputs: list[dict], **extra) -> dict:
    r = client.post(f"/v2/models/{model}/infer", json={"inputs": inputs, **extra})
    assert r.status_code == 200, r.text
    assert r.headers["content-type"] == "application/json"
    return {o["name"]: o for o in r.json()["outputs"]}


def _fitness_reference(client, abs_: list[dict], **extra) -> dict:
    return _reference(client, "fitness", [{"name": c, "shape": [len(abs_)], "datatype": "BYTES",
                                           "data": [a[c] for a in abs_]} for c in ("heavy", "light")], **extra)


def test_health_and_metadata(triton, client):
    assert triton.is_server_live() and triton.is_server_ready()
    assert triton.is_model_ready("fitness") and triton.is_model_ready("sentiment")
    assert not triton.is_model_ready("protein")
    assert triton.get_server_metadata()["name"] == "fedtune"
    fit = triton.get_model_metadata("fitness")
    assert [i["name"] for i in fit["inputs"]] == ["heavy", "light"]
    assert {i["datatype"] for i in fit["inputs"]} == {"BYTES"}
    assert [o["name"] for o in fit["outputs"]] == [o["name"] for o in client.get("/v2/models/fitness").json()[
        "outputs"]]
    version = fit["versions"][0]
    assert triton.get_model_metadata("fitness", model_version=version)["versions"] == [version]
    sent = triton.get_model_metadata("sentiment")
    assert [i["name"] for i in sent["inputs"]] == ["text"]
    assert [o["name"] for o in sent["outputs"]] == ["label", "probabilities"]
    with pytest.raises(InferenceServerException) as exc:
        triton.get_model_metadata("protein")
    assert exc.value.status() == "404" and "protein" in exc.value.message()


@pytest.mark.parametrize("binary", [True, False], ids=["binary-default", "json"])
def test_fitness_infer(triton, client, binary):
    abs_ = antibodies(3, seed=5)
    expected = _fitness_reference(client, abs_)
    outputs = None if binary else [httpclient.InferRequestedOutput(t, binary_data=False) for t in expected]
    result = triton.infer("fitness", _fitness_inputs(abs_, binary), outputs=outputs, request_id="req-7")
    response = result.get_response()
    assert response["id"] == "req-7" and response["model_name"] == "fitness"
    assert [o["name"] for o in response["outputs"]] == list(expected)
    for task, ref in expected.items():
        got = result.as_numpy(task)
        assert got.dtype == np.float32 and got.shape == (3,)
        np.testing.assert_allclose(got, ref["data"], atol=ATOL)
        assert ("binary_data_size" in (result.get_output(task).get("parameters") or {})) is binary


@pytest.mark.parametrize("binary", [True, False], ids=["binary-default", "json"])
def test_sentiment_infer(triton, client, binary):
    ts = texts(4)
    expected = _reference(client, "sentiment", [{"name": "text", "shape": [4], "datatype": "BYTES", "data": ts}])
    outputs = None if binary else [httpclient.InferRequestedOutput(n, binary_data=False) for n in expected]
    result = triton.infer("sentiment", [_bytes_input("text", ts, [4], binary)], outputs=outputs)
    labels = result.as_numpy("label")
    assert labels.shape == (4,)
    assert [x.decode() if isinstance(x, bytes) else x for x in labels] == expected["label"]["data"]
    probs = result.as_numpy("probabilities")
    assert probs.shape == (4, 3) and probs.dtype == np.float32
    np.testing.assert_allclose(probs.ravel(), expected["probabilities"]["data"], atol=ATOL)


def test_site_version_column_shape_and_mixed_outputs(triton, client):
    """Request parameters, a pinned version, [N, 1] inputs, and one output in binary, one in JSON."""
    abs_ = antibodies(2, seed=9)
    expected = _fitness_reference(client, abs_, parameters={"site": "site-2"})
    first, second = list(expected)[:2]
    version = triton.get_model_metadata("fitness")["versions"][0]
    result = triton.infer("fitness", _fitness_inputs(abs_, True, column=True), model_version=version,
                          parameters={"site": "site-2"},
                          outputs=[httpclient.InferRequestedOutput(first, binary_data=True),
                                   httpclient.InferRequestedOutput(second, binary_data=False)])
    assert [o["name"] for o in result.get_response()["outputs"]] == [first, second]
    assert "data" not in result.get_output(first) and "data" in result.get_output(second)
    for task in (first, second):
        np.testing.assert_allclose(result.as_numpy(task), expected[task]["data"], atol=ATOL)
    assert result.get_response()["parameters"]["head_sets"] == ["site-2"]


def test_asyncio_client(server, client):
    """tritonclient.http.aio (aiohttp underneath) at its default settings."""
    abs_ = antibodies(2, seed=11)
    expected = _fitness_reference(client, abs_)

    async def infer():
        c = AioClient(server.url.removeprefix("http://"))
        try:
            assert await c.is_model_ready("fitness")
            return await c.infer("fitness", _fitness_inputs(abs_, True))
        finally:
            await c.close()

    result = asyncio.run(infer())
    for task, ref in expected.items():
        np.testing.assert_allclose(result.as_numpy(task), ref["data"], atol=ATOL)


@pytest.mark.parametrize("algorithm", ["gzip", "deflate"])
def test_compressed_request(triton, client, algorithm):
    ts = texts(2)
    expected = _reference(client, "sentiment", [{"name": "text", "shape": [2], "datatype": "BYTES", "data": ts}])
    result = triton.infer("sentiment", [_bytes_input("text", ts, [2], True)],
                          request_compression_algorithm=algorithm)
    np.testing.assert_allclose(result.as_numpy("probabilities").ravel(), expected["probabilities"]["data"],
                               atol=ATOL)


def test_errors_reach_the_client_as_messages(triton):
    abs_ = antibodies(1)
    cases = [("fitness", _fitness_inputs(abs_, True), {"parameters": {"site": "site-9"}}, "404", "site-9"),
             ("fitness", _fitness_inputs([{"heavy": "EVQ1", "light": abs_[0]["light"]}], True), {}, "422",
              "invalid residue"),
             ("fitness", _fitness_inputs(abs_, True)[:1], {}, "400", "light"),
             ("sentiment", [_bytes_input("text", [], [0], True)], {}, "4", ""),
             ("sentiment", [_bytes_input("text", texts(2) * 9, [18], True)], {}, "413", "limit")]
    for model, inputs, kw, status, words in cases:
        with pytest.raises(InferenceServerException) as exc:
            triton.infer(model, inputs, **kw)
        assert exc.value.status().startswith(status), exc.value
        assert words in exc.value.message()


def test_api_key_is_checked_before_the_body_is_parsed(sites_bundle):
    with BackgroundServer(settings([sites_bundle], api_key=KEY, warmup=False)) as srv, \
            httpclient.InferenceServerClient(srv.url.removeprefix("http://"), network_timeout=120) as c:
        abs_ = antibodies(2)
        result = c.infer("fitness", _fitness_inputs(abs_, True), headers={"Authorization": f"Bearer {KEY}"})
        assert result.as_numpy(result.get_response()["outputs"][0]["name"]).shape == (2,)
        with pytest.raises(InferenceServerException) as exc:
            c.infer("fitness", _fitness_inputs(abs_, True))
        assert exc.value.status() == "401"
        # a malformed binary body without the key: 401, not a parse error (nothing is parsed for strangers)
        bad = _fitness_inputs(abs_, True)
        bad[0]._parameters["binary_data_size"] += 1000
        with pytest.raises(InferenceServerException) as exc:
            c.infer("fitness", bad)
        assert exc.value.status() == "401"
