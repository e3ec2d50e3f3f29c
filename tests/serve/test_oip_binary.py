"""The binary tensor data extension byte by byte, on a real uvicorn server: hand-made bodies that lie about
their sizes, lengths, datatypes or encoding get a 4xx with a JSON error, never a 5xx; well-formed ones answer
the same as JSON. The codec's BYTES format is checked against tritonclient's own serializer."""

from __future__ import annotations

import gzip
import json
import struct
import zlib

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from serve_helpers import antibodies, texts

from fedtune.serve.errors import ApiError
from fedtune.serve.oip_binary import decode_bytes, decode_request, encode_tensor

tc_utils = pytest.importorskip("tritonclient.utils", reason="pip install -e '.[dev]' (tritonclient[http])")

AB = antibodies(2, seed=3)
HEAVY, LIGHT = [a["heavy"] for a in AB], [a["light"] for a in AB]


def _ser(values: list[str]) -> bytes:
    return b"".join(struct.pack("<I", len(v.encode())) + v.encode() for v in values)


def _body(inputs: list[tuple[dict, bytes]], **extra) -> tuple[bytes, int]:
    """(body, header length) for inputs given as (tensor header, raw bytes or None for JSON data)."""
    header = json.dumps({"inputs": [t for t, _ in inputs], **extra}).encode()
    return header + b"".join(raw for _, raw in inputs if raw is not None), len(header)


def _tensor(name: str, raw: bytes, shape=(2,), datatype="BYTES", **params) -> tuple[dict, bytes]:
    return {"name": name, "shape": list(shape), "datatype": datatype,
            "parameters": {"binary_data_size": len(raw), **params}}, raw


def _fitness(heavy: bytes | None = None, light: bytes | None = None, **kw) -> tuple[bytes, int]:
    return _body([_tensor("heavy", _ser(HEAVY) if heavy is None else heavy),
                  _tensor("light", _ser(LIGHT) if light is None else light)], **kw)


def _post(client, body: bytes, header_length=None, model: str = "fitness", **headers):
    if header_length is not None:
        headers["Inference-Header-Content-Length"] = str(header_length)
    return client.post(f"/v2/models/{model}/infer", content=body, headers=headers)


def _client_error(r, status: int | None = None) -> dict:
    assert 400 <= r.status_code < 500 and (status is None or r.status_code == status), (r.status_code, r.text)
    body = json.loads(r.content)
    assert isinstance(body["error"], str) and body["code"]
    return body


def test_bytes_codec_matches_tritonclient():
    values = ["EVQL", "", "é✓ unicode", "x" * 300]
    ours = encode_tensor("BYTES", values)
    assert ours == tc_utils.serialize_byte_tensor(np.array(values, dtype=object)).item()
    assert decode_bytes(ours, "t") == values
    assert encode_tensor("FP32", [0.5, -2.0]) == np.array([0.5, -2.0], dtype="<f4").tobytes()


def test_bytes_decoding_stops_at_the_element_limit():
    """The decoder gives up at the first element past the limit, not after looping over the whole body."""
    with pytest.raises(ApiError) as exc:
        decode_bytes(b"\0\0\0\0" * 17 + b"\xff", "t", max_elements=16)     # the 17th element is refused...
    assert exc.value.status == 413                                         # ...before the truncated tail (a 400)
    assert decode_bytes(b"\0\0\0\0" * 16, "t", max_elements=16) == [""] * 16


def test_binary_request_answers_like_json(client):
    body, n = _fitness()
    binary = _post(client, body, n)
    assert binary.status_code == 200, binary.text
    plain = client.post("/v2/models/fitness/infer", json={"inputs": [
        {"name": "heavy", "shape": [2], "datatype": "BYTES", "data": HEAVY},
        {"name": "light", "shape": [2], "datatype": "BYTES", "data": LIGHT}]})
    assert binary.json()["outputs"] == plain.json()["outputs"]


def test_binary_response_framing(client):
    body, n = _body([_tensor("text", _ser(texts(2)))], parameters={"binary_data_output": True})
    r = _post(client, body, n, model="sentiment")
    assert r.status_code == 200, r.text
    assert r.headers["content-type"] == "application/octet-stream"
    length = int(r.headers["inference-header-content-length"])
    header = json.loads(r.content[:length])
    sizes = {o["name"]: o["parameters"]["binary_data_size"] for o in header["outputs"]}
    assert length + sum(sizes.values()) == len(r.content)
    assert all("data" not in o for o in header["outputs"])
    tail = r.content[length:]
    labels = decode_bytes(tail[:sizes["label"]], "label")
    probs = np.frombuffer(tail[sizes["label"]:], "<f4").reshape(2, 3)
    assert labels == [["negative", "neutral", "positive"][i] for i in probs.argmax(1)]
    np.testing.assert_allclose(probs.sum(1), 1.0, atol=1e-5)


def test_json_body_without_or_with_other_content_type(client):
    raw = json.dumps({"inputs": [{"name": "text", "shape": [1], "datatype": "BYTES", "data": texts(1)}]}).encode()
    for headers in ({}, {"content-type": "text/plain"}, {"content-type": "application/octet-stream"}):
        r = _post(client, raw, model="sentiment", **headers)
        assert r.status_code == 200, (headers, r.text)


LONE = (b'{"id":"\\ud800","inputs":[{"name":"text","shape":[1],"datatype":"BYTES",'
        b'"parameters":{"binary_data_size":12}}]}')
FULL, FULL_N = _fitness()


def _heavy(tensor: dict, raw: bytes = b"") -> tuple[bytes, int]:
    """A body whose heavy input is `tensor` (light is well-formed)."""
    return _body([(tensor, raw), _tensor("light", _ser(LIGHT))])


def _sized(size) -> tuple[bytes, int]:
    return _heavy({"name": "heavy", "shape": [2], "datatype": "BYTES", "parameters": {"binary_data_size": size}})


CASES = {
    # framing: the header length
    "header-length-past-body": lambda: (FULL, FULL_N + 10_000),
    "header-length-abc": lambda: (FULL, "abc"),
    "header-length-negative": lambda: (FULL, "-5"),
    "header-length-zero": lambda: (FULL, "0"),
    "header-length-float": lambda: (FULL, "1e3"),
    "header-length-5000-digits": lambda: (FULL, "9" * 5000),           # past Python's int() digit limit
    "header-length-cuts-json": lambda: (FULL, FULL_N - 3),
    # sizes that do not add up
    "undeclared-trailing-bytes": lambda: (FULL + b"extra", FULL_N),
    "truncated-body": lambda: (FULL[:-7], FULL_N),
    "element-longer-than-tensor": lambda: _fitness(heavy=struct.pack("<I", 999) + b"EVQ"),
    "truncated-length-prefix": lambda: _fitness(heavy=_ser(HEAVY) + b"\x01\x00"),
    "element-not-utf8": lambda: _fitness(heavy=struct.pack("<I", 2) + b"\xff\xfe" + _ser(HEAVY[1:])),
    # declared shape / datatype against the data
    "element-count-vs-shape": lambda: _fitness(heavy=_ser(HEAVY[:1])),
    "fp32-for-bytes-input": lambda: _heavy(*_tensor("heavy", np.zeros(2, "<f4").tobytes(), datatype="FP32")),
    "fp32-size-not-multiple": lambda: _heavy(*_tensor("heavy", b"abc", datatype="FP32")),
    "datatype-list": lambda: _heavy(*_tensor("heavy", _ser(HEAVY), datatype=["BYTES"])),
    "unknown-datatype": lambda: _heavy(*_tensor("heavy", _ser(HEAVY), datatype="NOPE")),
    "shape-1x2": lambda: _heavy(*_tensor("heavy", _ser(HEAVY), shape=(1, 2))),
    "shape-negative": lambda: _heavy(*_tensor("heavy", _ser(HEAVY), shape=(-1,))),
    # parameters of the wrong kind
    "size-negative": lambda: _sized(-1),
    "size-string": lambda: _sized("12"),
    "size-bool": lambda: _sized(True),
    "size-float": lambda: _sized(1.5),
    "data-and-binary": lambda: _heavy({**_tensor("heavy", _ser(HEAVY))[0], "data": HEAVY}, _ser(HEAVY)),
    "shared-memory": lambda: _heavy(*_tensor("heavy", b"", shared_memory_region="r")),
    "binary-data-output-not-bool": lambda: _fitness(parameters={"binary_data_output": "yes"}),
    "output-binary-data-not-bool": lambda: _fitness(outputs=[{"name": "binding", "parameters": {"binary_data": 1}}]),
    "classification": lambda: _fitness(outputs=[{"name": "binding", "parameters": {"classification": 2}}]),
    # empty, oversized, not Unicode, not JSON
    "empty-tensors": lambda: _body([_tensor("heavy", b"", shape=(0,)), _tensor("light", b"", shape=(0,))]),
    "too-many-items": lambda: _body([_tensor("heavy", _ser(HEAVY * 9), shape=(18,)),     # max_items is 16
                                     _tensor("light", _ser(LIGHT * 9), shape=(18,))]),
    "many-empty-elements": lambda: _heavy(*_tensor("heavy", b"\0\0\0\0" * 15_000, shape=(15_000,))),
    "many-fp32-elements": lambda: _heavy(*_tensor("heavy", np.zeros(100, "<f4").tobytes(), (100,), "FP32")),
    "lone-surrogate-id": lambda: (LONE + _ser(["Sales up"]), len(LONE)),
    "deep-nesting": lambda: (b"[" * 30_000 + b"]" * 30_000, None),
    "not-utf8-json": lambda: (b"\xff\xfe{}", None),
}
STATUS = {"header-length-cuts-json": 422, "deep-nesting": 422, "not-utf8-json": 422, "too-many-items": 413,
          "many-empty-elements": 413, "many-fp32-elements": 413,
          "empty-tensors": None, "lone-surrogate-id": None}      # None: any 4xx; the rest: 400, malformed tensors


@pytest.mark.parametrize("name", CASES)
def test_malformed_binary_bodies_are_4xx(client, name):
    body, n = CASES[name]()
    model = "sentiment" if b'"text"' in body else "fitness"
    _client_error(_post(client, body, n, model=model), STATUS.get(name, 400))


def test_compressed_bodies(client):
    body, n = _fitness()
    assert _post(client, gzip.compress(body), n, **{"content-encoding": "gzip"}).status_code == 200
    assert _post(client, zlib.compress(body), n, **{"content-encoding": "deflate"}).status_code == 200
    bomb = gzip.compress(b" " * (2 * 1024 * 1024))          # 2 MiB inflated from a few KiB, limit 64 KiB
    _client_error(_post(client, bomb, None, **{"content-encoding": "gzip"}), 413)
    _client_error(_post(client, b"not gzip", None, **{"content-encoding": "gzip"}), 400)
    _client_error(_post(client, gzip.compress(body)[:-4], n, **{"content-encoding": "gzip"}), 400)
    _client_error(_post(client, body, n, **{"content-encoding": "br"}), 415)


_json = st.recursive(st.none() | st.booleans() | st.integers(-2, 300) | st.floats() | st.text(max_size=8),
                     lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner,
                                                                                   max_size=4), max_leaves=12)
_tensors = st.fixed_dictionaries({}, optional={
    "name": _json, "shape": _json, "data": _json,
    "datatype": st.sampled_from(["BYTES", "FP32", "INT8", "BF16", "", None, 1, [1], {"a": 1}]),
    "parameters": st.fixed_dictionaries({}, optional={"binary_data_size": st.integers(0, 8) | st.integers(-3, 60) | _json,
                                                      "shared_memory_region": _json})})


@settings(max_examples=300, deadline=None, derandomize=True)
@given(inputs=st.lists(_tensors | _json, max_size=3), tail=st.binary(max_size=48), extra=_json)
def test_decoder_raises_only_api_errors(inputs, tail, extra):
    """Whatever header and bytes arrive, the decoder either returns or raises ApiError (a 4xx): never another
    exception, which the service would answer with a 500."""
    header = json.dumps({"inputs": inputs, "x": extra}).encode()
    try:
        decode_request(header + tail, {"inference-header-content-length": str(len(header))}, 1 << 16, 16)
    except ApiError as exc:
        assert 400 <= exc.status < 500
