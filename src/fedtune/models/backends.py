"""CPU inference backends for a loaded model's trunk (opt-in; measured in docs/serve.md).

- "fp32": the trunk unchanged.
- "bf16": torch autocast to bfloat16 around the encoder (matmuls on AVX-512 BF16 / AMX; layer norms and
  softmax stay fp32); the pooled embedding comes back as fp32.
- "int8": torch dynamic int8 quantization of the encoder's nn.Linear layers (weights int8, activations
  quantized per batch; AVX-512 VNNI), `torch.ao.quantization.quantize_dynamic`.
- "onnx-int8": the encoder exported to ONNX, dynamically quantized to int8 by ONNX Runtime
  (`onnxruntime.quantization.quantize_dynamic`) and run in an ONNX Runtime session.

Only the trunk's encoder changes: tokenization, masked mean pooling and the heads stay fp32 torch code, so
every caller (`Bundle.predict`, the service's batcher, `fedtune predict`) runs unchanged on the result.
`apply_backend(bundle.model, name)` is the one entry point.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import torch
from torch import nn

BACKENDS = ("fp32", "bf16", "int8", "onnx-int8")


class BackendError(ValueError):
    """A backend that cannot be applied to this model or device (nothing was changed)."""


class _Wrapped(nn.Module):
    """An encoder stand-in: forwards `config` and `get_input_embeddings` to the original encoder, so the
    trunk (`Trunk.base_config`, p-tuning's prompt path) keeps working."""

    def __init__(self, inner: nn.Module):
        super().__init__()
        self.inner = inner

    @property
    def config(self):
        return self.inner.config

    def get_input_embeddings(self):
        return self.inner.get_input_embeddings()


class AutocastEncoder(_Wrapped):
    def __init__(self, inner: nn.Module, dtype: torch.dtype = torch.bfloat16):
        super().__init__(inner)
        self.dtype = dtype

    def forward(self, **inputs):
        with torch.autocast("cpu", dtype=self.dtype):
            out = self.inner(**inputs)
        hidden = out.last_hidden_state if hasattr(out, "last_hidden_state") else out[0]
        return (hidden.float(),)


class OrtEncoder(_Wrapped):
    """The encoder as an ONNX Runtime session (input_ids, attention_mask -> last hidden state)."""

    def __init__(self, inner: nn.Module, session):
        super().__init__(inner)
        self.session = session

    def forward(self, input_ids=None, attention_mask=None, inputs_embeds=None):
        if inputs_embeds is not None or input_ids is None:
            raise BackendError("the onnx-int8 backend takes token ids only (no p-tuning prompt)")
        feeds = {"input_ids": input_ids.cpu().numpy().astype("int64"),
                 "attention_mask": attention_mask.cpu().numpy().astype("int64")}
        (hidden,) = self.session.run(["last_hidden_state"], feeds)
        return (torch.from_numpy(hidden).float(),)


def _onnx_int8(encoder: nn.Module, vocab_size: int) -> nn.Module:
    try:
        import onnxruntime as ort
        import onnxscript  # noqa: F401  (torch.onnx's exporter needs it)
        from onnxruntime.quantization import QuantType, quantize_dynamic
    except ImportError as exc:
        raise BackendError(f"backend 'onnx-int8' needs ONNX Runtime: pip install 'fedtune[onnx]' ({exc})") from None

    class _Plain(nn.Module):         # tensors in, the last hidden state out (what the exporter traces)
        def __init__(self, enc):
            super().__init__()
            self.enc = enc

        def forward(self, input_ids, attention_mask):
            out = self.enc(input_ids=input_ids, attention_mask=attention_mask)
            return out.last_hidden_state if hasattr(out, "last_hidden_state") else out[0]

    ids = torch.randint(5, max(6, vocab_size), (2, 16))
    mask = torch.ones_like(ids)
    with tempfile.TemporaryDirectory(prefix="fedtune-onnx-") as tmp:
        fp32, int8 = Path(tmp) / "encoder.onnx", Path(tmp) / "encoder-int8.onnx"
        batch, seq = torch.export.Dim("batch", min=1), torch.export.Dim("seq", min=2, max=4096)
        torch.onnx.export(_Plain(encoder).eval(), (ids, mask), str(fp32), input_names=["input_ids", "attention_mask"],
                          output_names=["last_hidden_state"], dynamo=True, external_data=False, verbose=False,
                          dynamic_shapes={"input_ids": {0: batch, 1: seq}, "attention_mask": {0: batch, 1: seq}})
        quantize_dynamic(str(fp32), str(int8), weight_type=QuantType.QInt8)
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = torch.get_num_threads()
        opts.inter_op_num_threads = 1
        session = ort.InferenceSession(str(int8), opts, providers=["CPUExecutionProvider"])
    return OrtEncoder(encoder, session)


def apply_backend(model: nn.Module, backend: str) -> nn.Module:
    """Turn `model.trunk`'s encoder into `backend` (in place; returns `model`). The model must be on the CPU
    and in eval mode (a loaded bundle's model is). Raises BackendError, leaving the model unchanged."""
    if backend not in BACKENDS:
        raise BackendError(f"unknown backend {backend!r}; choose one of {', '.join(BACKENDS)}")
    if backend == "fp32":
        return model
    trunk = getattr(model, "trunk", None)
    encoder = getattr(trunk, "encoder", None)
    if encoder is None:
        raise BackendError(f"backend {backend!r}: the model has no trunk encoder")
    if isinstance(encoder, _Wrapped) or getattr(trunk, "backend", "fp32") != "fp32":
        raise BackendError(f"backend {backend!r}: the trunk already runs the {trunk.backend} backend")
    device = next(model.parameters()).device
    if device.type != "cpu":
        raise BackendError(f"backend {backend!r} is a CPU backend; the model is on {device} (use --device cpu, "
                           f"or fp32: on a GPU the service already runs the trunk in bf16)")
    if backend == "bf16":
        new = AutocastEncoder(encoder)
    elif backend == "int8":
        from torch.ao.quantization import quantize_dynamic
        new = quantize_dynamic(encoder, {nn.Linear}, dtype=torch.qint8, inplace=False)
    else:
        if trunk.prompt is not None:
            raise BackendError("backend 'onnx-int8' does not run p-tuning trunks (virtual tokens); use int8")
        new = _onnx_int8(encoder, int(trunk.base_config().vocab_size))
    trunk.encoder = new
    trunk.backend = backend
    return model


def backend_of(model: nn.Module) -> str:
    """The backend a model's trunk runs ("fp32" unless `apply_backend` changed it)."""
    return getattr(getattr(model, "trunk", None), "backend", "fp32")
