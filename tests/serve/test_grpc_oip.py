"""The Open Inference Protocol over gRPC (`fedtune serve --grpc-port`) against its reference client,
tritonclient.grpc, on a real `fedtune serve` process running the int8 backend: the same answers as the HTTP
/v2 route of the same process, the same API key (as call metadata), the same Prometheus registry, errors as
gRPC status codes, and a server that keeps answering after each of them."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys

import httpx
import numpy as np
import pytest
from serve_helpers import antibodies, metric_value, terminate, texts, wait_until_ready

grpcclient = pytest.importorskip("tritonclient.grpc", reason="pip install 'tritonclient[grpc]'")
from tritonclient.utils import InferenceServerException  # noqa: E402

KEY = "grpc-test-key"
AUTH = {"authorization": f"Bearer {KEY}"}
MAX_ITEMS = 16


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def served(sites_bundle, sentiment_bundle):
    """(http url, grpc address) of a `fedtune serve` process with both kinds, int8 trunks and an API key."""
    http_port, grpc_port = _free_port(), _free_port()
    env = {**os.environ, "FEDTUNE_API_KEY": KEY, "FEDTUNE_DEVICE": "cpu", "FEDTUNE_MAX_ITEMS": str(MAX_ITEMS),
           "FEDTUNE_MAX_BODY_BYTES": str(64 * 1024)}
    cmd = [sys.executable, "-c", "from fedtune.cli import main; main()", "serve", "--bundle", str(sites_bundle),
           "--bundle", str(sentiment_bundle), "--host", "127.0.0.1", "--port", str(http_port),
           "--grpc-port", str(grpc_port), "--backend", "int8", "--log-level", "warning"]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    url = f"http://127.0.0.1:{http_port}"
    try:
        wait_until_ready(proc, url, output=proc.stdout.read)
        yield url, f"127.0.0.1:{grpc_port}"
    finally:
        terminate(proc)
    assert proc.returncode in (0, -signal.SIGTERM), proc.stdout.read()   # uvicorn re-raises the signal


@pytest.fixture(scope="module")
def triton(served):
    with grpcclient.InferenceServerClient(served[1]) as c:
        yield c


@pytest.fixture(scope="module")
def http(served):
    with httpx.Client(base_url=served[0], timeout=120, headers={"X-API-Key": KEY}) as c:
        yield c


def _inputs(columns: dict[str, list[str]]):
    out = []
    for name, values in columns.items():
        t = grpcclient.InferInput(name, [len(values)], "BYTES")
        t.set_data_from_numpy(np.array(values, dtype=object))
        out.append(t)
    return out


def _http_reference(http, model: str, columns: dict[str, list[str]], **extra) -> dict:
    body = {"inputs": [{"name": n, "shape": [len(v)], "datatype": "BYTES", "data": v} for n, v in columns.items()],
            **extra}
    r = http.post(f"/v2/models/{model}/infer", json=body)
    assert r.status_code == 200, r.text
    return {o["name"]: (np.array([d.encode() for d in o["data"]], dtype=object) if o["datatype"] == "BYTES"
                        else np.array(o["data"], dtype=np.float32)).reshape(o["shape"]) for o in r.json()["outputs"]}


def _chains(n: int, seed: int = 0) -> dict[str, list[str]]:
    abs_ = antibodies(n, seed)
    return {c: [a[c] for a in abs_] for c in ("heavy", "light")}


def _code(exc_info) -> str:
    return exc_info.value.status()


def test_health_metadata_and_card(triton, http):
    assert triton.is_server_live() and triton.is_server_ready()
    assert triton.is_model_ready("fitness") and triton.is_model_ready("sentiment")
    assert not triton.is_model_ready("protein")
    assert triton.get_server_metadata().name == "fedtune"
    md = triton.get_model_metadata("fitness", as_json=True)
    assert [i["name"] for i in md["inputs"]] == ["heavy", "light"]
    assert [o["name"] for o in md["outputs"]] == [o["name"] for o in http.get("/v2/models/fitness").json()["outputs"]]
    cards = {c["name"]: c for c in http.get("/v1/models").json()["models"]}
    assert {c["backend"] for c in cards.values()} == {"int8"}
    assert http.get("/v2/models/fitness").json()["parameters"]["backend"] == "int8"


@pytest.mark.parametrize("site", [None, "site-2"])
def test_fitness_infer_matches_http(triton, http, site):
    cols = _chains(5, seed=3)
    params = {"site": site} if site else {}
    result = triton.infer("fitness", _inputs(cols), headers=AUTH, parameters=params or None)
    ref = _http_reference(http, "fitness", cols, **({"parameters": params} if params else {}))
    assert set(ref) == {o.name for o in result.get_response().outputs}
    for name, expected in ref.items():
        np.testing.assert_array_equal(result.as_numpy(name), expected)   # same process, same backend: exact
    response = result.get_response(as_json=True)
    assert response["parameters"]["backend"]["string_param"] == "int8"


def test_sentiment_infer_matches_http(triton, http):
    cols = {"text": texts(4)}
    result = triton.infer("sentiment", _inputs(cols), headers={"x-api-key": KEY})
    for name, expected in _http_reference(http, "sentiment", cols).items():
        np.testing.assert_array_equal(result.as_numpy(name), expected)


def test_grpc_calls_are_counted_in_the_same_registry(triton, http):
    before = http.get("/metrics").text
    triton.infer("fitness", _inputs(_chains(3)), headers=AUTH)
    after = http.get("/metrics").text
    labels = {"method": "ModelInfer", "code": "OK"}
    assert metric_value(after, "fedtune_grpc_requests_total", labels) == \
        metric_value(before, "fedtune_grpc_requests_total", labels) + 1
    assert metric_value(after, "fedtune_items_predicted_total", {"model": "fitness"}) == \
        metric_value(before, "fedtune_items_predicted_total", {"model": "fitness"}) + 3


def test_errors_are_status_codes_and_the_server_keeps_serving(triton, http):
    cols = _chains(2)
    cases = [
        ("UNAUTHENTICATED", lambda: triton.infer("fitness", _inputs(cols))),
        ("UNAUTHENTICATED", lambda: triton.infer("fitness", _inputs(cols), headers={"x-api-key": KEY + "x"})),
        ("NOT_FOUND", lambda: triton.infer("protein", _inputs(cols), headers=AUTH)),
        ("NOT_FOUND", lambda: triton.infer("fitness", _inputs(cols), headers=AUTH, parameters={"site": "site-9"})),
        ("NOT_FOUND", lambda: triton.infer("fitness", _inputs(cols), headers=AUTH, model_version="0" * 12)),
        ("NOT_FOUND", lambda: triton.get_model_metadata("protein")),
        ("RESOURCE_EXHAUSTED", lambda: triton.infer("fitness", _inputs(_chains(MAX_ITEMS + 1)), headers=AUTH)),
        ("RESOURCE_EXHAUSTED", lambda: triton.infer("fitness", _inputs({"heavy": ["A" * 40_000] * 2,
                                                                        "light": cols["light"]}), headers=AUTH)),
        ("INVALID_ARGUMENT", lambda: triton.infer("fitness", _inputs({"heavy": ["EVQLZZ1", "EVQL"],
                                                                      "light": cols["light"]}), headers=AUTH)),
        ("INVALID_ARGUMENT", lambda: triton.infer("fitness", _inputs({"heavy": cols["heavy"]}), headers=AUTH)),
        ("INVALID_ARGUMENT", lambda: triton.infer("fitness", _inputs({"heavy": cols["heavy"][:1],
                                                                      "light": cols["light"]}), headers=AUTH)),
    ]
    wrong_type = grpcclient.InferInput("heavy", [2], "INT32")
    wrong_type.set_data_from_numpy(np.array([1, 2], dtype=np.int32))
    cases.append(("INVALID_ARGUMENT", lambda: triton.infer("fitness", [wrong_type, _inputs(cols)[1]], headers=AUTH)))
    for expected, call in cases:
        with pytest.raises(InferenceServerException) as exc:
            call()
        assert _code(exc) == f"StatusCode.{expected}", (expected, exc.value.message())
        assert KEY not in exc.value.message()
    assert triton.is_server_live()
    ok = triton.infer("fitness", _inputs(cols), headers=AUTH)
    assert ok.as_numpy(ok.get_response().outputs[0].name).shape[0] == 2
    text = http.get("/metrics").text
    assert metric_value(text, "fedtune_grpc_requests_total", {"method": "ModelInfer",
                                                              "code": "UNAUTHENTICATED"}) >= 2


def test_bad_backend_is_refused_with_a_clear_error(sites_bundle):
    cmd = [sys.executable, "-c", "from fedtune.cli import main; main()", "serve", "--bundle", str(sites_bundle),
           "--backend", "int4"]
    proc = subprocess.run(cmd, env={**os.environ, "FEDTUNE_DEVICE": "cpu"}, capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "unknown backend 'int4'" in proc.stderr and "onnx-int8" in proc.stderr


def test_malformed_protobuf_requests_are_invalid_argument(served, triton):
    """What tritonclient never sends, sent with the raw stub: each is INVALID_ARGUMENT, none a crash."""
    import grpc
    from tritonclient.grpc import service_pb2 as pb
    from tritonclient.grpc import service_pb2_grpc as pb_grpc

    heavy, light = (c[0].encode() for c in _chains(1).values())
    prefix = lambda b: len(b).to_bytes(4, "little") + b  # noqa: E731

    def request(**kw) -> pb.ModelInferRequest:
        msg = pb.ModelInferRequest(model_name="fitness", **kw)
        for name in ("heavy", "light"):
            msg.inputs.add(name=name, datatype="BYTES", shape=[1])
        return msg

    in_contents = request()
    in_contents.inputs[0].contents.bytes_contents.append(heavy)
    in_contents.inputs[1].contents.bytes_contents.append(b"\xff\xfe")              # not UTF-8
    bad = [request(raw_input_contents=[prefix(heavy)]),                             # one buffer for two inputs
           request(raw_input_contents=[prefix(heavy)[:-3], prefix(light)]),         # truncated element
           request(raw_input_contents=[prefix(heavy), b"\x01\x00"]),                # truncated length prefix
           in_contents,
           pb.ModelInferRequest(model_name="fitness")]                              # no inputs
    with grpc.insecure_channel(served[1]) as channel:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        for msg in bad:
            with pytest.raises(grpc.RpcError) as exc:
                stub.ModelInfer(msg, metadata=[("x-api-key", KEY)], timeout=120)
            assert exc.value.code() == grpc.StatusCode.INVALID_ARGUMENT, exc.value.details()
        good = request(raw_input_contents=[prefix(heavy), prefix(light)])
        assert len(stub.ModelInfer(good, metadata=[("x-api-key", KEY)], timeout=120).raw_output_contents) > 0
    assert triton.is_server_live()
