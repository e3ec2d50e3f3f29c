"""Per-assay standardisation, oriented so that higher always means more favourable.

Assays of one task come in different units and opposite directions (HIC retention time: lower is better;
Tm: higher is better). Each assay is standardised on training rows only and multiplied by its sign, so
z > 0 is favourable. The statistics travel with the model (bundle manifest) so predictions can be turned
back into any assay's own units, and they can be pooled across sites from moments (n, sum, sum of squares),
which are aggregates, never rows.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

MIN_STD = 1e-6


@dataclass
class AssayStats:
    keys: list[str]          # "task/assay" in model output order
    mean: np.ndarray         # [A]
    std: np.ndarray          # [A]
    sign: np.ndarray         # [A]: +1 when higher is favourable, -1 when lower is
    count: np.ndarray        # [A]: training rows the statistics came from

    @classmethod
    def from_moments(cls, keys, signs, n, s, ss) -> "AssayStats":
        n = np.asarray(n, dtype=np.float64)
        s = np.asarray(s, dtype=np.float64)
        ss = np.asarray(ss, dtype=np.float64)
        safe_n = np.maximum(n, 1.0)
        mean = np.where(n > 0, s / safe_n, 0.0)
        var = np.where(n > 1, (ss - n * mean**2) / np.maximum(n - 1.0, 1.0), 1.0)
        std = np.sqrt(np.maximum(var, 0.0))
        std = np.where(std < MIN_STD, 1.0, std)
        return cls(list(keys), mean, std, np.asarray(signs, dtype=np.float64), n)

    @classmethod
    def fit(cls, data) -> "AssayStats":
        """Statistics of a FitnessData's labels (its training rows)."""
        n, s, ss = moments(data.labels)
        return cls.from_moments([a.key for a in data.assays], [a.sign for a in data.assays], n, s, ss)

    @classmethod
    def pool(cls, keys, signs, site_moments) -> "AssayStats":
        """Pool several sites' moments [(n, sum, sumsq), ...] into one set of statistics."""
        n = sum(np.asarray(m[0], dtype=np.float64) for m in site_moments)
        s = sum(np.asarray(m[1], dtype=np.float64) for m in site_moments)
        ss = sum(np.asarray(m[2], dtype=np.float64) for m in site_moments)
        return cls.from_moments(keys, signs, n, s, ss)

    def to_z(self, raw: np.ndarray) -> np.ndarray:
        return ((raw - self.mean) / self.std * self.sign).astype(np.float32)

    def from_z(self, z: np.ndarray, key: str | None = None) -> np.ndarray:
        """Oriented z back to assay units: every assay ([..., A]), or the one assay `key` ([...])."""
        z = np.asarray(z, dtype=np.float64)
        if key is None:
            return self.mean + self.sign * z * self.std
        k = self.index(key)
        return self.mean[k] + self.sign[k] * z * self.std[k]

    def index(self, key: str) -> int:
        return self.keys.index(key)

    def to_dict(self) -> dict:
        return {k: {"mean": float(m), "std": float(sd), "sign": int(sg), "count": int(c)}
                for k, m, sd, sg, c in zip(self.keys, self.mean, self.std, self.sign, self.count)}

    @classmethod
    def from_dict(cls, d: dict) -> "AssayStats":
        keys = list(d)
        return cls(keys, np.array([d[k]["mean"] for k in keys], dtype=np.float64),
                   np.array([d[k]["std"] for k in keys], dtype=np.float64),
                   np.array([d[k]["sign"] for k in keys], dtype=np.float64),
                   np.array([d[k].get("count", 0) for k in keys], dtype=np.float64))


def moments(labels: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per-column count, sum and sum of squares over non-missing (non-NaN) values."""
    mask = ~np.isnan(labels)
    vals = np.where(mask, labels, 0.0).astype(np.float64)
    return mask.sum(0).astype(np.float64), vals.sum(0), (vals**2).sum(0)
