"""Submit a job through the FLARE API (admin kit, mTLS), follow it round by round, download the result."""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path
from typing import Callable

from .job import check_name
from .pki import admin_username

DONE = ("FINISHED:COMPLETED",)


class JobFailed(RuntimeError):
    """The job did not complete; `result` is its downloaded (partial) result when there is one: the
    controller checkpoints every round, so `fedtune export` can still export the last complete round."""

    def __init__(self, message: str, result: Path | None = None):
        super().__init__(message)
        self.result = result


def open_session(admin_kit: Path, timeout: float = 60.0):
    from nvflare.fuel.flare_api.flare_api import new_secure_session
    admin_kit = Path(admin_kit).resolve()
    if not (admin_kit / "startup" / "fed_admin.json").exists():
        raise FileNotFoundError(f"{admin_kit}: not an admin startup kit (no startup/fed_admin.json)")
    return new_secure_session(username=admin_username(admin_kit), startup_kit_location=str(admin_kit),
                              timeout=timeout)


def read_progress(session, job_id: str) -> list[dict]:
    """The controller's progress events so far (server workspace file, read over the admin channel)."""
    try:
        text = session.cat_target("server", file=f"{job_id}/app_server/fedtune/progress.log")
    except Exception:   # not written yet, or not readable: progress is best effort
        return []
    events = []
    for line in str(text).splitlines():
        line = line.strip()
        if line.startswith("{"):
            try:
                events.append(json.loads(line))
            except ValueError:
                pass
    return events


def wait_for_sites(session, n: int, timeout: float = 300.0, poll: float = 2.0) -> list[str]:
    """Block until at least `n` sites are registered with the server (a job submitted earlier would start
    without the late ones); returns their names. TimeoutError names the sites that did connect."""
    deadline = time.monotonic() + timeout
    while True:
        names = sorted(c.name for c in session.get_system_info().client_info)
        if len(names) >= n:
            return names
        if time.monotonic() > deadline:
            raise TimeoutError(f"only {len(names)} site(s) registered with the server after {timeout:.0f} s "
                               f"({names}); the job needs {n}")
        time.sleep(poll)


def submit_and_wait(job_dir: Path, admin_kit: Path, out: Path, timeout: float = 3600.0, poll: float = 2.0,
                    on_event: Callable[[dict], None] | None = None, on_submit: Callable[[str], None] | None = None
                    ) -> tuple[str, Path]:
    """Submit `job_dir`, call `on_event` for every progress event, wait, download the result into
    `out/<job_id>` and return (job_id, that folder). Raises JobFailed when the job does not complete."""
    session = open_session(admin_kit)
    try:
        min_sites = json.loads((Path(job_dir) / "meta.json").read_text()).get("min_clients", 1)
        sites = wait_for_sites(session, min_sites, timeout=min(timeout, 600.0))
        if on_event:
            on_event({"event": "sites", "sites": sites})
        job_id = session.submit_job(str(Path(job_dir).resolve()))
        try:    # the server's answer names a local folder below: a path in it must not escape `out`
            check_name(job_id, "job id from the server")
        except ValueError as exc:
            raise JobFailed(str(exc)) from None
        if on_submit:
            on_submit(job_id)
        seen, start, status, refused = 0, time.monotonic(), "", {}
        while True:
            meta = session.get_job_meta(job_id)
            status = meta.get("status", "")
            new = {s: why for s, why in deploy_refusals(meta).items() if s not in refused}
            if new and on_event:         # a site's privacy gate refused the deployment: shown as soon as known
                on_event({"event": "refused", "sites": new})
            refused.update(new)
            events = read_progress(session, job_id)
            for ev in events[seen:]:
                if on_event:
                    on_event(ev)
            seen = max(seen, len(events))
            if status.startswith("FINISHED") or status.startswith("FAILED"):
                break
            if time.monotonic() - start > timeout:
                session.abort_job(job_id)
                raise JobFailed(f"job {job_id} did not finish within {timeout:.0f} s (aborted)")
            time.sleep(poll)
        if status not in DONE:
            try:
                partial = note_refusals(download_result(session, job_id, out), refused)
            except Exception as exc:    # e.g. an abandoned job has no stored workspace
                raise JobFailed(f"job {job_id} ended with status {status}; no result to download ({exc})"
                                + "".join(f"; {s} refused it {why}" for s, why in refused.items())) from None
            raise JobFailed(f"job {job_id} ended with status {status}; what it did is in {partial}", partial)
        return job_id, note_refusals(download_result(session, job_id, out), refused)
    finally:
        session.close()


def note_refusals(result: Path, refused: dict[str, str]) -> Path:
    """Add the sites that refused the job's deployment (their privacy gate, `fedtune.fl.gate`) to the downloaded
    summary's `refused`: the server's job never saw them, NVFlare's deploy detail did."""
    if not refused:
        return result
    path = find_fedtune_dir(result) / "summary.json"
    try:
        summary = json.loads(path.read_text())
    except (OSError, ValueError):
        return result
    for site, why in refused.items():
        summary.setdefault("refused", {}).setdefault(site, why)
    path.write_text(json.dumps(summary, indent=2))
    return result


def download_result(session, job_id: str, out: Path) -> Path:
    """Download a job's result (finished or not) into `out/<job_id>` and return that folder."""
    downloaded = Path(session.download_job_result(job_id))
    out = Path(out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    target = out / job_id
    if target.is_symlink() or (target.exists() and not is_job_result(target)):
        raise JobFailed(f"{target} exists and is not a downloaded fedtune job result: not replaced (the "
                        f"result stays in {downloaded})")
    if target.exists():
        shutil.rmtree(target)
    shutil.copytree(downloaded, target)
    return target


def is_job_result(path: Path) -> bool:
    """Whether `path` holds a downloaded fedtune job result (the only folder submit replaces)."""
    try:
        return (find_fedtune_dir(path) / "job.json").is_file()
    except FileNotFoundError:
        return False


def find_fedtune_dir(result: Path) -> Path:
    """The controller's output folder inside a downloaded job result."""
    result = Path(result)
    for cand in [result / "workspace" / "app_server" / "fedtune", result / "app_server" / "fedtune", result]:
        if (cand / "summary.json").exists():
            return cand
    hits = sorted(result.rglob("summary.json"))
    if hits:
        return hits[0].parent
    raise FileNotFoundError(f"{result}: no fedtune summary.json inside: is this a finished fedtune job result?")


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
