"""Open Inference Protocol request bodies as clients send them, and binary responses.

A request body is a JSON header, whatever its Content-Type (tritonclient sends none), optionally compressed
(`Content-Encoding: gzip` or `deflate`). With the binary tensor data extension the header is followed by raw
tensor bytes: the `Inference-Header-Content-Length` header gives the JSON's length, and every input with
`parameters.binary_data_size` takes that many bytes, in input order. Fixed-size types are little-endian
arrays; a BYTES tensor is, per element, a 4-byte little-endian length and then that many bytes. A response
uses the same framing for the outputs asked for in binary (`outputs[].parameters.binary_data`, or the request
parameter `binary_data_output` for all outputs).

Everything here is checked against what it claims (sizes, lengths, element counts, UTF-8): a malformed body is
an ApiError (4xx), never an exception of another kind.
"""

from __future__ import annotations

import json
import struct
import zlib
from collections.abc import Mapping

import numpy as np

from .errors import ApiError

HEADER_LENGTH = "Inference-Header-Content-Length"
FIXED = {"BOOL": "?", "UINT8": "u1", "UINT16": "<u2", "UINT32": "<u4", "UINT64": "<u8", "INT8": "i1",
         "INT16": "<i2", "INT32": "<i4", "INT64": "<i8", "FP16": "<f2", "FP32": "<f4", "FP64": "<f8"}
WBITS = {"gzip": 31, "deflate": 15}
_LEN = struct.Struct("<I")


def _bad(code: str, message: str, status: int = 400) -> ApiError:
    return ApiError(status, code, message)


def _too_many(name: str, limit: int) -> ApiError:
    return _bad("too_many_items", f"input {name!r} holds more than the limit of {limit} elements", 413)


def decompress(raw: bytes, encoding: str | None, limit: int) -> bytes:
    """The body as sent before `Content-Encoding` (gzip, deflate), at most `limit` bytes once inflated."""
    encoding = (encoding or "identity").strip().lower()
    if encoding == "identity":
        return raw
    if encoding not in WBITS:
        raise _bad("unsupported_encoding", f"Content-Encoding {encoding!r} is not supported (gzip, deflate, "
                                           f"identity)", 415)
    inflater = zlib.decompressobj(wbits=WBITS[encoding])
    try:
        out = inflater.decompress(raw, limit + 1)
    except zlib.error as exc:
        raise _bad("bad_encoding", f"body is not valid {encoding} data: {exc}") from None
    if len(out) > limit or inflater.unconsumed_tail:
        raise _bad("body_too_large", f"request body exceeds the limit of {limit} bytes once decompressed", 413)
    if not inflater.eof or inflater.unused_data:
        raise _bad("bad_encoding", f"{encoding} body is truncated or followed by extra bytes")
    return out


def _header_length(value: str | None, total: int) -> int | None:
    if value is None:
        return None
    value = value.strip()
    if not (value.isascii() and value.isdigit() and len(value) <= 20 and 0 < int(value) <= total):
        raise _bad("bad_header_length", f"{HEADER_LENGTH} must be a whole number of bytes between 1 and the body "
                                        f"length ({total}), not {value[:40]!r}")
    return int(value)


def parse_json(raw: bytes):
    try:
        obj = json.loads(raw)
    except (ValueError, RecursionError) as exc:   # JSONDecodeError and UnicodeDecodeError are ValueErrors
        raise _bad("invalid_json", f"request header is not valid JSON: {str(exc)[:200]}", 422) from None
    return obj


def decode_bytes(buf: bytes, name: str, max_elements: int | None = None) -> list[str]:
    """A serialized BYTES tensor -> its elements as text (the models read sequences and sentences); 413 past
    `max_elements` (decoding is a Python loop: a megabyte of empty elements must not hold the server)."""
    out, pos = [], 0
    while pos < len(buf):
        if max_elements is not None and len(out) >= max_elements:
            raise _too_many(name, max_elements)
        if pos + 4 > len(buf):
            raise _bad("bad_binary", f"input {name!r}: BYTES element {len(out)} has a truncated length prefix")
        (size,) = _LEN.unpack_from(buf, pos)
        pos += 4
        if pos + size > len(buf):
            raise _bad("bad_binary", f"input {name!r}: BYTES element {len(out)} claims {size} bytes but "
                                     f"{len(buf) - pos} remain")
        try:
            out.append(buf[pos:pos + size].decode("utf-8"))
        except UnicodeDecodeError:
            raise _bad("bad_data", f"input {name!r}: BYTES element {len(out)} is not UTF-8 text") from None
        pos += size
    return out


def decode_tensor(buf: bytes, datatype, name: str, max_elements: int | None) -> list:
    if datatype == "BYTES":
        return decode_bytes(buf, name, max_elements)
    if not isinstance(datatype, str) or datatype not in FIXED:
        raise _bad("bad_datatype", f"input {name!r}: binary data of datatype {str(datatype)[:40]!r} is not "
                                   f"supported")
    dtype = np.dtype(FIXED[datatype])
    if len(buf) % dtype.itemsize:
        raise _bad("bad_binary", f"input {name!r}: {len(buf)} bytes is not a whole number of {datatype} "
                                 f"elements")
    if max_elements is not None and len(buf) // dtype.itemsize > max_elements:
        raise _too_many(name, max_elements)
    return np.frombuffer(buf, dtype).tolist()


def _attach_binary(header, tail: bytes, max_elements: int | None) -> None:
    """Replace each binary input's `parameters.binary_data_size` by its decoded `data`; the sizes must add up
    to exactly the bytes after the header."""
    inputs = header.get("inputs") if isinstance(header, dict) else None
    pos = 0
    for i, tensor in enumerate(inputs if isinstance(inputs, list) else []):
        params = tensor.get("parameters") if isinstance(tensor, dict) else None
        if not isinstance(params, dict):
            continue
        name = str(tensor.get("name", i))[:100]
        if "shared_memory_region" in params:
            raise _bad("unsupported", f"input {name!r}: the shared-memory extension is not supported")
        if "binary_data_size" not in params:
            continue
        size = params.pop("binary_data_size")
        if not isinstance(size, int) or isinstance(size, bool) or size < 0:
            raise _bad("bad_binary", f"input {name!r}: binary_data_size must be a non-negative integer")
        if "data" in tensor:
            raise _bad("bad_binary", f"input {name!r} has both JSON data and binary_data_size")
        if pos + size > len(tail):
            raise _bad("bad_binary", f"input {name!r} declares {size} bytes of binary data but only "
                                     f"{len(tail) - pos} follow the header (truncated body?)")
        tensor["data"] = decode_tensor(tail[pos:pos + size], tensor.get("datatype"), name, max_elements)
        pos += size
    if pos != len(tail):
        raise _bad("bad_binary", f"{len(tail)} bytes follow the JSON header but the inputs' binary_data_size "
                                 f"add up to {pos}")


def decode_request(raw: bytes, headers: Mapping[str, str], limit: int, max_elements: int | None = None):
    """An infer request body (JSON, optionally followed by binary tensor data) -> the JSON request with every
    binary input's data decoded into `data` (at most `max_elements` per tensor, else 413). Anything that is
    not a JSON object is returned as parsed, for the schema validation to refuse."""
    raw = decompress(raw, headers.get("content-encoding"), limit)
    length = _header_length(headers.get(HEADER_LENGTH.lower()), len(raw))
    header = parse_json(raw if length is None else raw[:length])
    _attach_binary(header, b"" if length is None else raw[length:], max_elements)
    return header


def _flag(params, key: str, where: str) -> bool | None:
    value = (params or {}).get(key)
    if value is not None and not isinstance(value, bool):
        raise _bad("bad_parameter", f"{where}: parameter {key!r} must be true or false")
    return value


def binary_outputs(parameters: dict | None, requested: list | None, names: list[str]) -> set[str]:
    """The outputs to answer in binary: an output's own `binary_data` wins over the request's
    `binary_data_output`. `requested` holds the request's outputs (objects with name and parameters)."""
    default = bool(_flag(parameters, "binary_data_output", "request"))
    own = {}
    for o in requested or []:
        if (o.parameters or {}).get("classification"):
            raise _bad("unsupported", f"output {o.name!r}: the classification extension is not supported")
        if "shared_memory_region" in (o.parameters or {}):
            raise _bad("unsupported", f"output {o.name!r}: the shared-memory extension is not supported")
        own[o.name] = _flag(o.parameters, "binary_data", f"output {o.name!r}")
    return {n for n in names if (own.get(n) if own.get(n) is not None else default)}


def encode_tensor(datatype: str, data: list) -> bytes:
    if datatype == "BYTES":
        parts = []
        for x in data:
            b = x.encode("utf-8") if isinstance(x, str) else bytes(x)
            parts += [_LEN.pack(len(b)), b]
        return b"".join(parts)
    return np.asarray(data, dtype=FIXED[datatype]).tobytes()


def encode_response(body: dict, binary: set[str]) -> tuple[bytes, int]:
    """(payload, header length): the JSON response with the `binary` outputs moved behind it as raw bytes."""
    raws = []
    for out in body["outputs"]:
        if out["name"] in binary:
            raw = encode_tensor(out["datatype"], out.pop("data"))
            out["parameters"] = {**(out.get("parameters") or {}), "binary_data_size": len(raw)}
            raws.append(raw)
    header = json.dumps(body, separators=(",", ":")).encode("utf-8")
    return header + b"".join(raws), len(header)
