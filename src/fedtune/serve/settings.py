"""Service settings: environment variables `FEDTUNE_*` (see docs/serve.md); CLI flags override them."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from ..data.sequences import MAX_CHAIN_LENGTH
from ..models.backends import BACKENDS


class ServeSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="FEDTUNE_", extra="ignore", validate_default=True)

    bundles: Annotated[list[str], NoDecode] = Field(
        default_factory=list, description="export bundle folders, at most one per kind (comma-separated in env)")
    host: str = "127.0.0.1"
    port: int = Field(8000, ge=0, le=65535)
    api_key: SecretStr | None = Field(None, description="when set, /v1 and /v2 infer need it (Bearer or X-API-Key); "
                                                        "unset: inference is open. Empty: refused")
    api_key_file: Path | None = Field(None, description="read the API key from this file (a mounted secret)")
    admin_key: SecretStr | None = Field(None, description="key for /v1/admin/* (unset: admin routes answer 403; "
                                                          "SIGHUP still reloads)")
    admin_key_file: Path | None = Field(None, description="read the admin key from this file")
    bundle_roots: Annotated[list[str], NoDecode] = Field(
        default_factory=list, description="folders a reload path must resolve inside (comma-separated in env; "
                                          "default: the parent folders of the bundles served at startup)")
    metrics_auth: bool = Field(False, description="also require the API key on /metrics")
    device: str = Field("auto", description="auto | cpu | cuda | cuda:N")
    backend: str = Field("fp32", description=f"the trunk's CPU inference backend: {' | '.join(BACKENDS)} "
                                             f"(docs/serve.md: measured speed and agreement)")
    grpc_port: int | None = Field(None, ge=0, le=65535, description="serve the Open Inference Protocol over gRPC "
                                                                     "on this port too (unset: no gRPC; 0: any free)")
    max_batch: int = Field(64, ge=1, le=4096, description="items per micro-batch")
    max_wait_ms: float = Field(5.0, ge=0.0, le=10_000.0, description="how long a batch waits to fill up")
    max_batch_tokens: int = Field(16384, ge=64, description="padded tokens per trunk pass (length-sorted chunks)")
    max_items: int = Field(256, ge=1, description="antibodies / texts per request (more: 413)")
    max_queue: int = Field(4096, ge=1, description="items waiting per model (more: 503 with Retry-After)")
    request_timeout_s: float = Field(60.0, gt=0.0, le=3600.0,
                                     description="how long a request waits for its predictions (more: 504)")
    max_body_bytes: int = Field(1_048_576, ge=1024, description="request body limit in bytes (more: 413)")
    max_length: int = Field(MAX_CHAIN_LENGTH, ge=1, description="residues per chain (more: 422)")
    max_text_length: int = Field(2000, ge=1, description="characters per text (more: 422)")
    embedding_cache_mb: float = Field(64.0, ge=0.0, le=1_048_576.0,
                                      description="per-chain embedding cache in MiB, shared by the models "
                                                  "(0: off)")
    warmup: bool = Field(True, description="run a prediction through every head set before serving a bundle")
    log_level: Literal["critical", "error", "warning", "info", "debug", "trace"] = "info"

    @field_validator("bundles", "bundle_roots", mode="before")
    @classmethod
    def _split(cls, value):
        if value is None:
            return []
        if isinstance(value, str):
            return [p.strip() for p in value.split(",") if p.strip()]
        return [str(p) for p in value]

    @field_validator("backend")
    @classmethod
    def _known_backend(cls, value):
        if value not in BACKENDS:
            raise ValueError(f"unknown backend {value!r}; choose one of {', '.join(BACKENDS)}")
        return value

    @field_validator("log_level", mode="before")
    @classmethod
    def _lower(cls, value):
        return value.lower() if isinstance(value, str) else value

    @model_validator(mode="after")
    def _keys_and_limits(self):
        for name in ("api_key", "admin_key"):
            var, key, file = f"FEDTUNE_{name.upper()}", getattr(self, name), getattr(self, f"{name}_file")
            if key is not None and file is not None:
                raise ValueError(f"set {var} or {var}_FILE, not both")
            if file is not None:
                try:
                    text = file.read_text().strip()
                except (OSError, UnicodeDecodeError) as exc:
                    raise ValueError(f"{var}_FILE: cannot read {file}: {exc}") from None
                if not text:
                    raise ValueError(f"{var}_FILE: {file} is empty; put the key in it (an empty key is not 'no key')")
                setattr(self, name, SecretStr(text))
            elif key is not None and not key.get_secret_value().strip():
                raise ValueError(f"{var} is set but empty: give a key, or unset the variable"
                                 + (" for an open inference API" if name == "api_key" else
                                    " to disable the admin routes") + " (an empty key never means 'no auth')")
        if self.api_key is not None and self.admin_key is not None and \
                self.api_key.get_secret_value() == self.admin_key.get_secret_value():
            raise ValueError("FEDTUNE_ADMIN_KEY must differ from FEDTUNE_API_KEY (every client holds the API key)")
        if self.max_queue < self.max_items:
            raise ValueError(f"max_queue ({self.max_queue}) must hold at least one full request "
                             f"(max_items {self.max_items})")
        return self

    def key(self) -> str | None:
        """The inference API key; None: inference is open (a validated key is never empty)."""
        return self.api_key.get_secret_value() if self.api_key is not None else None

    def admin(self) -> str | None:
        """The admin key; None: the admin routes are refused."""
        return self.admin_key.get_secret_value() if self.admin_key is not None else None

    def resolved_device(self) -> str:
        if self.device != "auto":
            return self.device
        import torch
        return "cuda" if torch.cuda.is_available() else "cpu"
