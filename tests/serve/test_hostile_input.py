"""Inputs that used to answer 500 (issue 12): lone surrogates, NaN / Infinity, empty tensors, made-up HTTP
methods growing /metrics. Each must be a 4xx with a JSON error body, and /metrics must stay bounded."""

from __future__ import annotations

import json

import pytest
from serve_helpers import antibodies

AB = antibodies(1)[0]
JSON = {"content-type": "application/json"}


def _post(client, path: str, raw: str):
    """Send `raw` as the body verbatim: JSON escapes such as \\ud800 and the NaN / Infinity tokens reach the
    server as a hostile client would write them."""
    return client.post(path, content=raw.encode(), headers=JSON)


def _client_error(r) -> dict:
    assert 400 <= r.status_code < 500, (r.status_code, r.text)
    body = json.loads(r.content)            # valid JSON, whatever was echoed
    assert isinstance(body["error"], str) and body["code"]
    return body


def _v2(heavy: str, light: str, extra: str = "") -> str:
    return (f'{{{extra}"inputs":[{{"name":"heavy","shape":[1],"datatype":"BYTES","data":["{heavy}"]}},'
            f'{{"name":"light","shape":[1],"datatype":"BYTES","data":["{light}"]}}]}}')


@pytest.mark.parametrize("raw", [
    '{"antibodies":[{"id":"\\ud800","heavy":"%s","light":"%s"}]}' % (AB["heavy"], AB["light"]),
    '{"antibodies":[{"id":"ab-\\udfff-1","heavy":"%s","light":"%s"}]}' % (AB["heavy"], AB["light"]),
    '{"antibodies":[{"heavy":"EVQ\\ud800LV","light":"%s"}]}' % AB["light"],
    '{"antibodies":[{"heavy":"%s","light":"\\udc00"}]}' % AB["heavy"],
    '{"site":"\\ud800","antibodies":[{"heavy":"%s","light":"%s"}]}' % (AB["heavy"], AB["light"]),
    '{"tasks":["\\ud800"],"antibodies":[{"heavy":"%s","light":"%s"}]}' % (AB["heavy"], AB["light"]),
])
def test_lone_surrogate_in_v1_fitness_is_422(client, raw):
    body = _client_error(_post(client, "/v1/fitness/predict", raw))
    assert "surrogate" in body["error"]


def test_lone_surrogate_in_sentiment_text_is_422(client):
    _client_error(_post(client, "/v1/sentiment/predict", '{"texts":["Sales rose \\ud800"]}'))


@pytest.mark.parametrize("raw", [
    _v2(AB["heavy"], AB["light"], '"id":"\\ud800",'),
    _v2(AB["heavy"], AB["light"], '"id":"req-\\udbff",'),
    _v2("EVQ\\ud800", AB["light"]),
    _v2(AB["heavy"], AB["light"], '"parameters":{"site":"\\ud800"},'),
    _v2(AB["heavy"], AB["light"], '"outputs":[{"name":"\\ud800"}],'),
])
def test_lone_surrogate_in_v2_infer_is_4xx(client, raw):
    _client_error(_post(client, "/v2/models/fitness/infer", raw))


@pytest.mark.parametrize("path,raw", [
    ("/v1/fitness/predict", '{"antibodies":[{"heavy":NaN,"light":"%s"}]}' % AB["light"]),
    ("/v1/fitness/predict", '{"site":Infinity,"antibodies":[{"heavy":"%s","light":"%s"}]}' % (AB["heavy"],
                                                                                            AB["light"])),
    ("/v1/fitness/predict", '{"antibodies":[{"id":-Infinity,"heavy":"%s","light":"%s"}]}' % (AB["heavy"],
                                                                                           AB["light"])),
    ("/v1/fitness/predict", '{"antibodies":NaN}'),
    ("/v1/sentiment/predict", '{"texts":[NaN, Infinity]}'),
    ("/v2/models/fitness/infer", _v2(AB["heavy"], AB["light"], '"id":NaN,')),
    ("/v2/models/fitness/infer", '{"inputs":[{"name":"heavy","shape":[NaN],"datatype":"BYTES","data":["A"]}]}'),
    ("/v2/models/sentiment/infer", '{"inputs":[{"name":"text","shape":[1],"datatype":"BYTES","data":[NaN]}]}'),
])
def test_non_finite_numbers_in_invalid_fields_are_4xx(client, path, raw):
    _client_error(_post(client, path, raw))


@pytest.mark.parametrize("model,names", [("fitness", ("heavy", "light")), ("sentiment", ("text",))])
def test_empty_bytes_tensors_are_4xx(client, model, names):
    inputs = [{"name": n, "shape": [0], "datatype": "BYTES", "data": []} for n in names]
    _client_error(client.post(f"/v2/models/{model}/infer", json={"inputs": inputs}))


def _series(text: str) -> int:
    return sum(1 for line in text.splitlines() if line and not line.startswith("#"))


def test_made_up_http_methods_do_not_grow_metrics(client):
    paths = ("/v2/health/live", "/v1/models", "/no/such/path")
    for path in paths:                                  # every series a made-up method may touch, once
        client.request("MADEUP", path)
    client.get("/metrics")                              # the scrape's own series
    before = client.get("/metrics").text
    for i in range(300):
        r = client.request(f"MADEUP{i}", f"{paths[i % 3]}{'/x' * (i % 2)}")
        assert r.status_code < 500
    after = client.get("/metrics").text
    assert "MADEUP" not in after and 'method="other"' in after
    assert _series(after) == _series(before) and len(after) < len(before) + 1024
