"""A site's privacy policy (fedtune.fl.policy, fedtune.fl.privacy): pure checks, the file a site admin
writes with `fedtune site-policy`, a corrupt policy refusing every job, and the budget across jobs; and its
gate (fedtune.fl.gate, its checks in fedtune.fl.policy) as NVFlare runs it: an authorization check of a job's deployment in the site's parent
process, with NVFlare's own FLContext and event, reading the policy from the site's kit and the job's declared
settings from the meta.json fedtune writes. The refusals over a real federation are in
test_dp_federation.py."""

from __future__ import annotations

import json
import stat
import subprocess
import sys

import pytest
from nvflare.apis.event_type import EventType
from nvflare.apis.fl_constant import FLContextKey
from nvflare.apis.fl_context import FLContext
from nvflare.apis.workspace import Workspace

from fedtune.data import SYNTHETIC_ASSAYS
from fedtune.fl.config import JobConfig
from fedtune.fl.gate import PrivacyGate
from fedtune.fl.job import build_job
from fedtune.fl.policy import (GATE_FILE, PolicyError, SitePolicy, deploy_refusal, gate_path, install_gate,
                               read_policy, record_spent, refusal, spent, write_policy)
from fedtune.fl.submit import deploy_refusals
from fedtune.fl.privacy import SitePrivacy
from fedtune.train.dp import accounted_epsilon

DP = {"epsilon": 4.0, "delta": 1e-5, "noise_multiplier": 1.2, "max_grad_norm": 1.0}


def kit(tmp_path):
    (tmp_path / "startup").mkdir(parents=True, exist_ok=True)
    (tmp_path / "local").mkdir(exist_ok=True)                   # as NVFlare's provisioning leaves a site kit
    (tmp_path / "startup" / "fed_client.json").write_text("{}")
    return tmp_path


def dp_job(**dp) -> JobConfig:
    return JobConfig(kind="fitness", rounds=3, local_epochs=2, trunk={"source": "unused", "mode": "frozen"},
                     train={"batch_size": 16}, assays=[a.to_dict() for a in SYNTHETIC_ASSAYS], dp=dp)


@pytest.mark.parametrize("policy, dp, expect", [
    (None, None, None),
    (SitePolicy(), None, None),                                          # an empty policy asks nothing
    (SitePolicy(require_dp=True), None, "requires differential privacy"),
    (SitePolicy(max_epsilon=8), None, "requires differential privacy"),  # no DP = unbounded epsilon
    (SitePolicy(max_epsilon=8), DP, None),
    (SitePolicy(max_epsilon=2), DP, "epsilon 4 is above this site's maximum of 2"),
    (SitePolicy(min_noise_multiplier=1.5), DP, "noise multiplier 1.2 is below"),
    (SitePolicy(max_grad_norm=0.5), DP, "clipping norm 1 is above"),
    (SitePolicy(max_delta=1e-6), DP, "delta 1e-05 is above"),
    (SitePolicy(total_epsilon=10), DP, None),
])
def test_refusal_names_the_limit_a_job_breaks(policy, dp, expect):
    why = refusal(policy, dp)
    assert (why is None) if expect is None else (expect in why)


def test_total_budget_counts_what_other_jobs_spent():
    assert refusal(SitePolicy(total_epsilon=10), DP, spent_elsewhere=5.0) is None
    assert "budget is spent" in refusal(SitePolicy(total_epsilon=10), DP, spent_elsewhere=7.0)


def test_policy_file_round_trip_mode_and_no_overwrite_of_foreign_files(tmp_path):
    k = kit(tmp_path)
    assert read_policy(k) is None
    path = write_policy(k, SitePolicy(require_dp=True, max_epsilon=4, min_noise_multiplier=0.5))
    assert stat.S_IMODE(path.stat().st_mode) == 0o644
    assert read_policy(k) == SitePolicy(require_dp=True, max_epsilon=4, min_noise_multiplier=0.5)
    path.write_text('{"mine": 1}')                   # not written by fedtune: left alone
    with pytest.raises(PolicyError, match="not written by fedtune"):
        write_policy(k, SitePolicy())
    assert path.read_text() == '{"mine": 1}'
    with pytest.raises(PolicyError, match="not a site startup kit"):
        write_policy(tmp_path / "nokit", SitePolicy())


@pytest.mark.parametrize("text", ["{not json", '{"fedtune": "privacy-policy/1", "max_epsilon": -1}',
                                  '{"fedtune": "privacy-policy/1", "max_epsilom": 4}', "[]",
                                  '{"fedtune": "privacy-policy/1", "require_dp": "yes"}',
                                  '{"max_epsilon": 4}'])
def test_a_corrupt_policy_refuses_every_job(tmp_path, text):
    k = kit(tmp_path)
    (k / "local" / "fedtune-privacy.json").write_text(text)
    with pytest.raises(PolicyError):
        read_policy(k)
    for job in (dp_job(epsilon=1.0), dp_job()):      # with or without DP: refused, never waved through
        why = SitePrivacy(job, n_train=100).admit(str(k), "job-1", "stats")
        assert why and "privacy policy is invalid" in why
        assert "policy cannot be read, every job is refused" in deploy(k, meta_of(job, tmp_path))[1]


def test_site_plans_checks_and_stops_when_its_budget_is_spent(tmp_path):
    k = kit(tmp_path)
    write_policy(k, SitePolicy(max_epsilon=5, total_epsilon=6))
    job = dp_job(epsilon=4.0)
    site = SitePrivacy(job, n_train=160)
    assert site.plan.max_steps == 3 * 2 * 10 and site.plan.epsilon <= 4.0
    assert site.admit(str(k), "job-a", "stats") is None and site.admit(str(k), "job-a", "train") is None
    record_spent(k, "job-a", 4.0)                     # what job-a spent, as its rounds record it
    assert spent(k) == {"job-a": 4.0}
    assert stat.S_IMODE((k / "local" / "fedtune-privacy-spent.json").stat().st_mode) == 0o644
    other = SitePrivacy(job, n_train=160)
    assert "budget is spent" in other.admit(str(k), "job-b", "stats")
    assert other.admit(str(k), "job-b", "train") == other.refused        # refused for good
    # a job that fits the total at the start but not after some rounds: the rounds that would overspend stop
    write_policy(k, SitePolicy(total_epsilon=4.0 + 2.5))
    third = SitePrivacy(dp_job(noise_multiplier=1.0), n_train=160)
    full = third.plan.epsilon
    assert full > 2.5
    write_policy(k, SitePolicy(total_epsilon=4.0 + full * 1.01))
    assert third.admit(str(k), "job-c", "stats") is None
    third.steps = third.plan.max_steps - third.plan.steps_per_epoch * job.local_epochs
    assert third.admit(str(k), "job-c", "train") is None
    record_spent(k, "job-a", 4.0 + full * 0.5)       # another job spent more in the meantime
    why = third.admit(str(k), "job-c", "train")
    assert why.startswith("no further rounds") and "budget is spent" in why
    assert third.admit(str(k), "job-c", "final") is None                  # the final evaluation costs nothing
    assert full == pytest.approx(accounted_epsilon(1.0, third.plan.sample_rate, third.plan.max_steps, 1e-5))


def test_site_policy_command_writes_and_shows_the_policy(tmp_path):
    k = kit(tmp_path)
    run = [sys.executable, "-m", "fedtune", "site-policy", "--kit", str(k)]
    out = subprocess.run([*run, "--max-epsilon", "4", "--min-noise-multiplier", "0.5", "--max-grad-norm", "1"],
                         capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert read_policy(k) == SitePolicy(require_dp=True, max_epsilon=4, min_noise_multiplier=0.5, max_grad_norm=1)
    assert gate_path(k).is_file() and "privacy gate installed" in out.stdout     # the NVFlare side of it
    shown = subprocess.run([*run, "--show"], capture_output=True, text=True)
    assert json.loads(shown.stdout)["policy"]["max_epsilon"] == 4
    bad = subprocess.run([*run, "--max-epsilon", "-3"], capture_output=True, text=True)
    assert bad.returncode != 0 and "max_epsilon" in bad.stderr
    assert read_policy(k).max_epsilon == 4            # a bad command loses nothing


def test_job_config_refuses_dp_outside_frozen_heads_and_lora():
    for mode in ("full", "ptuning"):
        with pytest.raises(ValueError, match=f"not '{mode}'"):
            JobConfig(kind="fitness", trunk={"source": "x", "mode": mode},
                      assays=[a.to_dict() for a in SYNTHETIC_ASSAYS], dp={"epsilon": 4})
    lora = JobConfig(kind="fitness", trunk={"source": "x", "mode": "lora"},
                     assays=[a.to_dict() for a in SYNTHETIC_ASSAYS], dp={"epsilon": 4})
    assert lora.dp_config().epsilon == 4.0
    with pytest.raises(ValueError, match="personal"):
        dp_job(epsilon=4.0).__class__(**{**dp_job(epsilon=4.0).to_dict(), "personal_epochs": 3})
    with pytest.raises(ValueError, match="unknown dp settings"):
        dp_job(epsilom=4.0)
    assert dp_job().dp == {} and dp_job().dp_config() is None
    assert dp_job(epsilon=4.0).dp_config().epsilon == 4.0

def deploy(kit_dir, meta, command="submit_job") -> tuple[bool, str]:
    """What NVFlare's SiteSecurity sees after firing the check at the site's components."""
    ctx = FLContext()
    ctx.set_prop(FLContextKey.WORKSPACE_OBJECT, Workspace(root_dir=str(kit_dir), site_name="site-1"), private=True)
    ctx.set_prop(FLContextKey.COMMAND_NAME, command, sticky=False)
    ctx.set_prop(FLContextKey.SECURITY_ITEMS, {FLContextKey.JOB_META: meta}, private=True, sticky=False)
    PrivacyGate().handle_event(EventType.AUTHORIZE_COMMAND_CHECK, ctx)
    return ctx.get_prop(FLContextKey.AUTHORIZATION_RESULT, True), ctx.get_prop(FLContextKey.AUTHORIZATION_REASON, "")


def meta_of(job, tmp_path) -> dict:
    return json.loads((build_job(job, tmp_path / "jobs") / "meta.json").read_text())


def test_gate_refuses_deployment_below_the_policy_and_admits_the_rest(tmp_path):
    site = kit(tmp_path / "kit")
    plain, dp4, dp1 = (meta_of(dp_job(**dp), tmp_path) for dp in ({}, {"epsilon": 4.0}, {"epsilon": 1.0}))
    assert dp4["fedtune"]["dp"]["epsilon"] == 4.0 and plain["fedtune"]["dp"] is None
    assert deploy(site, plain) == (True, "")                     # no policy: every job
    write_policy(site, SitePolicy(require_dp=True, max_epsilon=2.0, max_grad_norm=1.0))
    ok, why = deploy(site, dp4)
    assert not ok and "epsilon 4 is above this site's maximum of 2" in why
    assert deploy(site, plain)[1].endswith("requires differential privacy and the job has none")
    assert deploy(site, dp1) == (True, "")
    assert deploy(site, dp4, command="check_resources") == (True, "")   # only the deployment is gated
    wide = meta_of(dp_job(epsilon=1.0, max_grad_norm=5.0), tmp_path)
    assert "clipping norm 5 is above" in deploy(site, wide)[1]
    # what a peer sends is checked: no fedtune section, a malformed one
    assert "declares no fedtune privacy settings" in deploy(site, {"name": "other"})[1]
    assert "malformed" in deploy(site, {**dp1, "fedtune": {"dp": {"epsilon": -3}}})[1]
    assert "malformed" in deploy(site, {**dp1, "fedtune": {"dp": "lots"}})[1]
    assert not deploy(site, "not a dict")[0]
    # the total budget counts what earlier jobs spent here
    write_policy(site, SitePolicy(require_dp=True, total_epsilon=5.0))
    record_spent(site, "earlier-job", 4.5)
    assert "budget is spent" in deploy(site, dp1)[1]


def test_a_noise_only_job_passes_the_gate_on_its_declared_noise(tmp_path):
    """Epsilon of a job given by its noise depends on the site's rows: the gate checks the noise, the job's
    site check (fedtune.fl.privacy) its accounted epsilon."""
    site = kit(tmp_path / "kit")
    write_policy(site, SitePolicy(require_dp=True, max_epsilon=2.0, min_noise_multiplier=1.0))
    assert "noise multiplier 0.5 is below" in deploy(site, meta_of(dp_job(noise_multiplier=0.5), tmp_path))[1]
    assert deploy(site, meta_of(dp_job(noise_multiplier=1.5), tmp_path)) == (True, "")
    assert deploy_refusal(site, meta_of(dp_job(epsilon=2.0), tmp_path)) is None


def test_install_gate_writes_its_file_once_and_never_replaces_a_foreign_one(tmp_path):
    site = kit(tmp_path / "kit")
    path = install_gate(site)
    assert path == gate_path(site) == site / "local" / GATE_FILE
    cfg = json.loads(path.read_text())
    assert cfg["components"] == [{"id": "fedtune_privacy_gate", "path": "fedtune.fl.gate.PrivacyGate", "args": {}}]
    assert install_gate(site) == path and json.loads(path.read_text()) == cfg
    path.write_text('{"components": []}')
    with pytest.raises(PolicyError, match="not written by fedtune"):
        install_gate(site)
    assert path.read_text() == '{"components": []}'
    with pytest.raises(PolicyError, match="not a site startup kit"):
        install_gate(tmp_path / "elsewhere")


def test_deploy_refusals_read_nvflare_deploy_detail():
    meta = {"job_deploy_detail": ["server: OK", "site-1: refused by the site's privacy policy: epsilon 4 is above",
                                  "site-2: OK", "site-3: no reply (deployment timeout)",
                                  "num_ok_sites 1 < required_min_sites 2"]}
    assert deploy_refusals(meta) == {
        "site-1": "at deployment: refused by the site's privacy policy: epsilon 4 is above",
        "site-3": "at deployment: no reply (deployment timeout)"}
    assert deploy_refusals({}) == {} and deploy_refusals({"job_deploy_detail": "x"}) == {}
