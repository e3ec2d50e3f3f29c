"""Every error status, always JSON with an `error` field, never a 5xx."""

from __future__ import annotations

import httpx
import pytest
from serve_helpers import antibodies

H = "EVQLVESGGGLVQPGGSLRLSCAASGFTFSSYAMS"
L = "DIQMTQSPSSLSASVGDRVTITCRASQSISSYLN"


def _err(r, status):
    assert r.status_code == status, r.text
    body = r.json()
    assert isinstance(body["error"], str) and body["code"]
    return body


def test_invalid_residue_names_index_chain_and_position(client):
    abs_ = antibodies(3)
    abs_[2]["light"] = L[:9] + "X" + L[10:]
    body = _err(client.post("/v1/fitness/predict", json={"antibodies": abs_}), 422)
    assert body["code"] == "invalid_sequence"
    assert "antibody 2" in body["error"] and "light" in body["error"] and "position 10" in body["error"]
    d = body["details"][0]
    assert (d["index"], d["id"], d["chain"], d["position"], d["residue"]) == (2, "ab-2", "light", 10, "X")


@pytest.mark.parametrize("heavy,light,match", [("", L, "empty"), ("   ", L, "empty"), (H * 10, L, "exceeds"),
                                               (H, "DIQ MTQ", "invalid residue ' ' at position 4"),
                                               ("evqlß", L, "invalid residue 'ß' at position 5")])
def test_empty_or_too_long_sequences(client, heavy, light, match):
    body = _err(client.post("/v1/fitness/predict", json={"antibodies": [{"heavy": heavy, "light": light}]}), 422)
    assert match in body["error"]


def test_lower_case_and_spaces_around_are_accepted(client):
    r = client.post("/v1/fitness/predict", json={"antibodies": [{"heavy": f"  {H.lower()}\n", "light": L}]})
    assert r.status_code == 200 and r.json()["predictions"][0]["id"] == "0"


def test_malformed_bodies_are_422(client):
    assert _err(client.post("/v1/fitness/predict", json={"antibodies": []}), 422)["code"] == "invalid_request"
    _err(client.post("/v1/fitness/predict", json={"antibodies": [{"heavy": H}]}), 422)
    _err(client.post("/v1/fitness/predict", content=b"{not json", headers={"content-type": "application/json"}),
         422)
    _err(client.post("/v1/sentiment/predict", json={"texts": ["fine", "  "]}), 422)
    _err(client.post("/v1/sentiment/predict", json={"texts": ["x" * 501]}), 422)


def test_too_many_items_is_413(client):
    body = _err(client.post("/v1/fitness/predict", json={"antibodies": antibodies(17)}), 413)
    assert body["code"] == "too_many_items" and "16" in body["error"]
    _err(client.post("/v1/sentiment/predict", json={"texts": ["Sales rose."] * 17}), 413)


def test_body_over_limit_is_413_by_header_and_by_stream(client, server):
    big = {"antibodies": [{"heavy": H, "light": L, "id": "x" * 200}] * 400}
    body = _err(client.post("/v1/fitness/predict", json=big), 413)
    assert body["code"] == "body_too_large"

    def chunks():                   # no Content-Length: chunked transfer, counted as it arrives
        for _ in range(100):
            yield b" " * 1024

    r = httpx.post(server.url + "/v1/fitness/predict", content=chunks(), headers={"content-type": "application/json"})
    _err(r, 413)


def test_unknown_site_task_assay_model_are_404_listing_known(client):
    abs_ = antibodies(1)
    body = _err(client.post("/v1/fitness/predict", json={"site": "site-9", "antibodies": abs_}), 404)
    assert body["code"] == "unknown_site" and "site-1" in body["error"] and "site-2" in body["error"]
    body = _err(client.post("/v1/fitness/predict", json={"tasks": ["speed"], "antibodies": abs_}), 404)
    assert "speed" in body["error"] and "thermostability" in body["details"]["known"]
    body = _err(client.post("/v1/fitness/predict", json={"assays": ["nope"], "antibodies": abs_}), 404)
    assert "thermostability/synthetic_tm" in body["details"]["known"]
    _err(client.post("/v1/sentiment/predict", json={"site": "site-9", "texts": ["a"]}), 404)
    body = _err(client.get("/v2/models/protein"), 404)
    assert body["details"]["known"] == ["fitness", "sentiment"]
    _err(client.post("/v2/models/protein/infer", json={"inputs": [
        {"name": "text", "shape": [1], "datatype": "BYTES", "data": ["a"]}]}), 404)
    _err(client.get("/v2/models/fitness/versions/0000/ready"), 404)
    _err(client.get("/no/such/route"), 404)
    _err(client.post("/v2/models/fitness/infer", json={"outputs": [{"name": "colour"}], "inputs": [
        {"name": "heavy", "shape": [1], "datatype": "BYTES", "data": [H]},
        {"name": "light", "shape": [1], "datatype": "BYTES", "data": [L]}]}), 404)


def test_v2_malformed_tensors(client):
    def infer(inputs):
        return client.post("/v2/models/fitness/infer", json={"inputs": inputs})

    heavy = {"name": "heavy", "shape": [1], "datatype": "BYTES", "data": [H]}
    light = {"name": "light", "shape": [1], "datatype": "BYTES", "data": [L]}
    assert _err(infer([heavy]), 400)["code"] == "bad_inputs"
    assert _err(infer([heavy, {**light, "datatype": "FP32"}]), 400)["code"] == "bad_datatype"
    assert _err(infer([heavy, {**light, "shape": [2]}]), 400)["code"] == "bad_shape"
    assert _err(infer([heavy, {**light, "data": [5]}]), 400)["code"] == "bad_data"
    body = _err(infer([heavy, {**light, "data": ["DIQBT"]}]), 422)
    assert "position 4" in body["error"]
    _err(infer([{**heavy, "shape": [17], "data": [H] * 17}, {**light, "shape": [17], "data": [L] * 17}]), 413)
