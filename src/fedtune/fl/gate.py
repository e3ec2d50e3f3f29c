"""The site's privacy policy enforced by NVFlare itself, before a job reaches the site.

`PrivacyGate` is an NVFlare component of the site's parent process (not of any job), loaded from
`<kit>/local/fedtune__p_resources.json` (written by `fedtune.fl.policy.install_gate`; NVFlare reads every
`*__p_resources.json` in the kit's local folder at site start). When the server deploys a job to the site,
NVFlare asks the site's components to authorize the deployment (federated authorization,
`AUTHORIZE_COMMAND_CHECK` for `submit_job`); the gate reads the site's policy (`fedtune.fl.policy.deploy_refusal`,
re-read at every deployment, so a new policy needs no restart) and refuses a job whose declared privacy is below
it. A refused job is never deployed to the site: none of its code runs there, no task of it is answered; the
server records the reason in the job's deploy detail, and `fedtune submit` copies it into the job summary's
`refused` (and so into the model card). This module alone imports NVFlare's component API (about a second):
the checks live in `fedtune.fl.policy`, so `submit`, `export` and `client` start without it.

What a job declares is its meta.json's `fedtune.dp` (written by `fedtune.fl.job.build_job` from the job's own
settings). It is the submitter's word, so the site checks twice:
- here, before deployment: no declaration where the policy limits DP, a malformed one, or one asking for less
  than the policy (epsilon, delta, noise, clipping, what is left of the total budget) is refused;
- in the job, by the site's own fedtune (`fedtune.fl.privacy`): the job's actual settings, the accountant's
  plan for the site's row count, and the epsilon spent before every round.
A job that declares one thing and configures another passes the gate and is then refused in the job.
"""

from __future__ import annotations

import os
from pathlib import Path

from nvflare.apis.event_type import EventType
from nvflare.apis.fl_component import FLComponent
from nvflare.apis.fl_constant import FLContextKey

from .policy import DEPLOY_COMMAND, deploy_refusal


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
