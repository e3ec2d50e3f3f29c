"""The site's privacy policy enforced by NVFlare itself, before a job reaches the site.

`PrivacyGate` is an NVFlare component of the site's parent process (not of any job), loaded from
`<kit>/local/fedtune__p_resources.json` (NVFlare reads every `*__p_resources.json` in the kit's local folder at
site start). When the server deploys a job to the site, NVFlare asks the site's components to authorize the
deployment (federated authorization, `AUTHORIZE_COMMAND_CHECK` for `submit_job`); the gate reads the site's
policy (`fedtune.fl.policy`, re-read at every deployment, so a new policy needs no restart) and refuses a job
whose declared privacy is below it. A refused job is never deployed to the site: none of its code runs there,
no task of it is answered; the server records the reason in the job's deploy detail, and `fedtune submit` copies
it into the job summary's `refused` (and so into the model card).

What a job declares is its meta.json's `fedtune.dp` (written by `fedtune.fl.job.build_job` from the job's own
settings). It is the submitter's word, so the site checks twice:
- here, before deployment: no declaration where the policy limits DP, a malformed one, or one asking for less
  than the policy (epsilon, delta, noise, clipping, what is left of the total budget) is refused;
- in the job, by the site's own fedtune (`fedtune.fl.privacy`): the job's actual settings, the accountant's
  plan for the site's row count, and the epsilon spent before every round.
A job that declares one thing and configures another passes the gate and is then refused in the job.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

from .policy import PolicyError, read_policy, refusal, spent

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
    """Write the gate's component file into a site kit (once; a file of that name fedtune did not write is
    refused). NVFlare loads it when the site starts."""
    path = gate_path(kit)
    if not (Path(kit) / "startup" / "fed_client.json").is_file():
        raise PolicyError(f"{kit} is not a site startup kit (no startup/fed_client.json)")
    if path.is_symlink() or path.exists():
        try:
            if json.loads(path.read_text()).get("fedtune") == GATE_MARK:
                return path
        except (OSError, ValueError, AttributeError):
            pass
        raise PolicyError(f"{path} exists and was not written by fedtune: not replaced")
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(gate_config(), indent=2) + "\n")
    os.chmod(tmp, 0o644)
    os.replace(tmp, path)
    return path


def deploy_refusals(meta) -> dict[str, str]:
    """{site: reason} for the sites that refused a job's deployment, from the job meta the server keeps
    (`job_deploy_detail`: "site: OK" or "site: <reason>")."""
    out = {}
    detail = meta.get("job_deploy_detail") if isinstance(meta, dict) else None
    for line in detail if isinstance(detail, list) else []:
        site, sep, why = str(line).partition(": ")
        if sep and site not in ("server", "invalid_clients") and not site.startswith("num_ok_sites") \
                and why.strip() != "OK":
            out[site] = f"at deployment: {why.strip()}"[:400]
    return out


try:
    from nvflare.apis.event_type import EventType
    from nvflare.apis.fl_component import FLComponent
    from nvflare.apis.fl_constant import FLContextKey
except ImportError:          # the gate runs inside an NVFlare site; the helpers above do not need it
    FLComponent = object


class PrivacyGate(FLComponent):
    """Refuses, in the site's NVFlare parent process, the deployment of a job below the site's policy."""

    def handle_event(self, event_type: str, fl_ctx) -> None:
        if event_type != EventType.AUTHORIZE_COMMAND_CHECK:
            return
        if fl_ctx.get_prop(FLContextKey.COMMAND_NAME) != DEPLOY_COMMAND:
            return
        items = fl_ctx.get_prop(FLContextKey.SECURITY_ITEMS, {}) or {}
        meta = items.get(FLContextKey.JOB_META, {})
        why = deploy_refusal(self._kit(fl_ctx), meta)
        if why:
            name = meta.get("name", "?") if isinstance(meta, dict) else "?"
            self.logger.error(f"fedtune privacy policy of {fl_ctx.get_identity_name()} refuses job {name!r}: {why}")
            fl_ctx.set_prop(FLContextKey.AUTHORIZATION_RESULT, False, sticky=False)
            fl_ctx.set_prop(FLContextKey.AUTHORIZATION_REASON, f"refused by the site's privacy policy: {why}",
                            sticky=False)

    @staticmethod
    def _kit(fl_ctx) -> Path:
        ws = fl_ctx.get_prop(FLContextKey.WORKSPACE_OBJECT)
        if ws is not None:
            return Path(ws.get_root_dir())
        return Path(os.environ.get("FEDTUNE_KIT") or fl_ctx.get_engine().args.workspace)
