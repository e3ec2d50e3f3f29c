"""Service settings: environment variables `FEDTUNE_*` (see docs/serve.md); CLI flags override them."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from ..data.sequences import MAX_CHAIN_LENGTH


class ServeSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="FEDTUNE_", extra="ignore", validate_default=True)

    bundles: Annotated[list[str], NoDecode] = Field(
        default_factory=list, description="export bundle folders, at most one per kind (comma-separated in env)")
    host: str = "127.0.0.1"
    port: int = Field(8000, ge=0, le=65535)
    api_key: SecretStr | None = Field(None, description="when set, /v1 and /v2 infer need it (Bearer or X-API-Key)")
    metrics_auth: bool = Field(False, description="also require the API key on /metrics")
    device: str = Field("auto", description="auto | cpu | cuda | cuda:N")
    max_batch: int = Field(64, ge=1, le=4096, description="items per micro-batch")
    max_wait_ms: float = Field(5.0, ge=0.0, le=10_000.0, description="how long a batch waits to fill up")
    max_batch_tokens: int = Field(16384, ge=64, description="padded tokens per trunk pass (length-sorted chunks)")
    max_items: int = Field(256, ge=1, description="antibodies / texts per request (more: 413)")
    max_body_bytes: int = Field(1_048_576, ge=1024, description="request body limit in bytes (more: 413)")
    max_length: int = Field(MAX_CHAIN_LENGTH, ge=1, description="residues per chain (more: 422)")
    max_text_length: int = Field(2000, ge=1, description="characters per text (more: 422)")
    warmup: bool = Field(True, description="run a prediction through every head set before serving a bundle")
    log_level: Literal["critical", "error", "warning", "info", "debug", "trace"] = "info"

    @field_validator("bundles", mode="before")
    @classmethod
    def _split(cls, value):
        if value is None:
            return []
        if isinstance(value, str):
            return [p.strip() for p in value.split(",") if p.strip()]
        return [str(p) for p in value]

    @field_validator("log_level", mode="before")
    @classmethod
    def _lower(cls, value):
        return value.lower() if isinstance(value, str) else value

    def key(self) -> str | None:
        return self.api_key.get_secret_value() if self.api_key and self.api_key.get_secret_value() else None

    def resolved_device(self) -> str:
        if self.device != "auto":
            return self.device
        import torch
        return "cuda" if torch.cuda.is_available() else "cpu"
