"""A site's own privacy policy, outside any job: `<kit>/local/fedtune-privacy.json`, written by the site's admin
(`fedtune site-policy --kit DIR ...`) and read by the site's training script when a job starts. A job that
asks for less privacy than the policy allows is refused by that site (the reason goes back to the server and
into the job's summary); a site whose budget is spent refuses further rounds.

    {"fedtune": "privacy-policy/1", "require_dp": true, "max_epsilon": 4.0, "max_delta": 1e-5,
     "min_noise_multiplier": 0.5, "max_grad_norm": 1.0, "total_epsilon": 20.0}

- `require_dp`: a job without differential privacy is refused.
- `max_epsilon`, `max_delta`: the most one job may spend (its planned epsilon, checked before it starts, and
  the accounted epsilon, checked before every round).
- `min_noise_multiplier`, `max_grad_norm`: the least noise and the widest clipping a job may use.
- `total_epsilon`: the most all jobs together may spend at this site (basic composition: their epsilons add
  up). What each job spent is kept next to the policy in `fedtune-privacy-spent.json` (per job id, updated
  after every round, so an aborted job still counts).

A policy file that is unreadable, not JSON, or holds an unknown key or a bad value refuses every job (a
broken policy must not fail open). No file: no policy (every job is accepted, DP or not).
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import asdict, dataclass
from pathlib import Path

POLICY_FILE = "fedtune-privacy.json"
LEDGER_FILE = "fedtune-privacy-spent.json"
POLICY_MARK = "privacy-policy/1"
LEDGER_MARK = "privacy-ledger/1"


class PolicyError(ValueError):
    """The site's policy file cannot be trusted (every job is refused)."""


@dataclass(frozen=True)
class SitePolicy:
    require_dp: bool = False
    max_epsilon: float | None = None
    max_delta: float | None = None
    min_noise_multiplier: float = 0.0
    max_grad_norm: float | None = None
    total_epsilon: float | None = None

    def __post_init__(self):
        if not isinstance(self.require_dp, bool):
            raise PolicyError(f"require_dp must be true or false: {self.require_dp!r}")
        for name in ("max_epsilon", "max_delta", "min_noise_multiplier", "max_grad_norm", "total_epsilon"):
            v = getattr(self, name)
            if v is None and name != "min_noise_multiplier":
                continue
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v < 0:
                raise PolicyError(f"{name} must be a finite non-negative number: {v!r}")
        if self.max_delta is not None and not 0 < self.max_delta < 1:
            raise PolicyError(f"max_delta must be in (0, 1): {self.max_delta}")
        if self.max_grad_norm is not None and self.max_grad_norm <= 0:
            raise PolicyError(f"max_grad_norm must be positive: {self.max_grad_norm}")

    @property
    def limits_dp(self) -> bool:
        """Whether the policy asks anything of a job's privacy (else any job passes)."""
        return self.require_dp or any(v is not None for v in (self.max_epsilon, self.max_delta, self.max_grad_norm,
                                                              self.total_epsilon)) or self.min_noise_multiplier > 0

    def to_dict(self) -> dict:
        return {"fedtune": POLICY_MARK, **{k: v for k, v in asdict(self).items() if v is not None}}

    @classmethod
    def from_dict(cls, d) -> "SitePolicy":
        if not isinstance(d, dict) or d.get("fedtune") != POLICY_MARK:
            raise PolicyError(f"not a fedtune privacy policy (expected \"fedtune\": \"{POLICY_MARK}\")")
        unknown = sorted(set(d) - set(cls.__dataclass_fields__) - {"fedtune"})
        if unknown:
            raise PolicyError(f"unknown policy keys {unknown}; known: {sorted(cls.__dataclass_fields__)}")
        return cls(**{k: v for k, v in d.items() if k != "fedtune"})


def policy_path(kit: str | Path) -> Path:
    return Path(kit) / "local" / POLICY_FILE


def read_policy(kit: str | Path) -> SitePolicy | None:
    """The site's policy, None when it has none; PolicyError when the file is there but not a valid policy."""
    path = policy_path(kit)
    if not path.exists() and not path.is_symlink():
        return None
    try:
        return SitePolicy.from_dict(json.loads(path.read_text()))
    except PolicyError as exc:
        raise PolicyError(f"{path}: {exc}") from None
    except (OSError, ValueError, TypeError) as exc:
        raise PolicyError(f"{path}: unreadable privacy policy: {exc}") from None


def _write_json(path: Path, data: dict, mark: str) -> Path:
    """Write `data` atomically with mode 0644, replacing only a file of ours (same mark) or nothing."""
    if path.is_symlink() or (path.exists() and not _is_ours(path, mark)):
        raise PolicyError(f"{path} exists and was not written by fedtune: not replaced")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(data, indent=2) + "\n")
    os.chmod(tmp, 0o644)
    os.replace(tmp, path)
    return path


def _is_ours(path: Path, mark: str) -> bool:
    try:
        return json.loads(path.read_text()).get("fedtune") == mark
    except (OSError, ValueError, AttributeError):
        return False


def _site_kit(kit: str | Path) -> Path:
    kit = Path(kit)
    if not (kit / "startup" / "fed_client.json").is_file():
        raise PolicyError(f"{kit} is not a site startup kit (no startup/fed_client.json)")
    return kit


def write_policy(kit: str | Path, policy: SitePolicy) -> Path:
    return _write_json(policy_path(_site_kit(kit)), policy.to_dict(), POLICY_MARK)


def spent(kit: str | Path) -> dict[str, float]:
    """{job id: epsilon} this site spent (empty when nothing was recorded). A ledger that cannot be read
    counts as a broken policy."""
    path = Path(kit) / "local" / LEDGER_FILE
    if not path.exists():
        return {}
    try:
        data = json.loads(path.read_text())
        jobs = data["jobs"] if data.get("fedtune") == LEDGER_MARK else None
        if not isinstance(jobs, dict):
            raise ValueError("no jobs table")
        return {str(k): float(v) for k, v in jobs.items()}
    except (OSError, ValueError, TypeError, KeyError, AttributeError) as exc:
        raise PolicyError(f"{path}: unreadable privacy ledger: {exc}") from None


def record_spent(kit: str | Path, job_id: str, epsilon: float) -> None:
    jobs = {**spent(kit), str(job_id): float(epsilon)}
    _write_json(Path(kit) / "local" / LEDGER_FILE, {"fedtune": LEDGER_MARK, "jobs": jobs}, LEDGER_MARK)


def refusal(policy: SitePolicy | None, dp: dict | None, spent_elsewhere: float = 0.0) -> str | None:
    """Why this site refuses a job (None: it accepts). `dp`: the job's settings and plan (noise_multiplier,
    max_grad_norm, delta, epsilon = the planned or accounted epsilon), None for a job without DP."""
    if policy is None or not policy.limits_dp:
        return None
    if dp is None:
        return "this site's privacy policy requires differential privacy and the job has none"
    eps = dp["epsilon"]
    if policy.max_epsilon is not None and eps > policy.max_epsilon * (1 + 1e-9):
        return f"epsilon {eps:.3g} is above this site's maximum of {policy.max_epsilon:g} per job"
    if policy.max_delta is not None and dp["delta"] > policy.max_delta:
        return f"delta {dp['delta']:g} is above this site's maximum of {policy.max_delta:g}"
    if dp["noise_multiplier"] < policy.min_noise_multiplier:
        return (f"noise multiplier {dp['noise_multiplier']:.3g} is below this site's minimum of "
                f"{policy.min_noise_multiplier:g}")
    if policy.max_grad_norm is not None and dp["max_grad_norm"] > policy.max_grad_norm:
        return f"clipping norm {dp['max_grad_norm']:g} is above this site's maximum of {policy.max_grad_norm:g}"
    if policy.total_epsilon is not None and spent_elsewhere + eps > policy.total_epsilon * (1 + 1e-9):
        return (f"this site's privacy budget is spent: epsilon {spent_elsewhere:.3g} already spent by other jobs "
                f"+ {eps:.3g} for this one is above its total of {policy.total_epsilon:g}")
    return None


# ---- the gate: the policy checked by NVFlare before a job is deployed (fedtune.fl.gate) -----------------
GATE_FILE = "fedtune__p_resources.json"
GATE_MARK = "site-gate/1"
GATE_ID = "fedtune_privacy_gate"
GATE_PATH = "fedtune.fl.gate.PrivacyGate"
DEPLOY_COMMAND = "submit_job"          # NVFlare's AdminCommandNames.SUBMIT_JOB, the header of a deployment


def declared_dp(meta) -> tuple[dict | None, str | None]:
    """(the job's declared DP settings or None for no DP, the reason the declaration is unusable or None)."""
    from ..train.dp import DPConfig

    section = meta.get("fedtune") if isinstance(meta, dict) else None
    if not isinstance(section, dict):
        return None, "the job's meta.json declares no fedtune privacy settings (not a fedtune job)"
    dp = section.get("dp")
    if dp in (None, {}):
        return None, None
    try:
        cfg = DPConfig.from_dict(dp)
    except (ValueError, TypeError) as exc:
        return None, f"the job's declared privacy settings are malformed: {exc}"
    # a target epsilon fixes the noise later (for the site's row count): only the in-job check sees it
    noise = cfg.noise_multiplier if cfg.noise_multiplier > 0 else math.inf
    return {"epsilon": cfg.epsilon, "delta": cfg.delta, "noise_multiplier": noise,
            "max_grad_norm": cfg.max_grad_norm}, None


def deploy_refusal(kit: str | Path, meta) -> str | None:
    """Why this site refuses to have the job deployed (None: it is deployed). A broken policy refuses."""
    try:
        policy = read_policy(kit)
        if policy is None or not policy.limits_dp:
            return None
        dp, bad = declared_dp(meta)
        if bad:
            return bad
        elsewhere = sum(spent(kit).values()) if policy.total_epsilon is not None else 0.0
        return refusal(policy, dp, elsewhere)
    except PolicyError as exc:
        return f"this site's privacy policy cannot be read, every job is refused: {exc}"


def gate_config() -> dict:
    return {"fedtune": GATE_MARK, "format_version": 2,
            "components": [{"id": GATE_ID, "path": GATE_PATH, "args": {}}]}


def gate_path(kit: str | Path) -> Path:
    return Path(kit) / "local" / GATE_FILE


def install_gate(kit: str | Path) -> Path:
    """Write the gate's component file into a site kit (again, if fedtune wrote it; a file of that name fedtune
    did not write is refused). NVFlare loads it when the site starts."""
    return _write_json(gate_path(_site_kit(kit)), gate_config(), GATE_MARK)
