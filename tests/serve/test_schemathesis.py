"""No input gives a 5xx: a schemathesis run over the live OpenAPI schema (v1, v2, admin, metrics) plus the
hand-written hostile cases of issue 12, against one real server. The server's own Prometheus counter says how
many requests it answered and how many were >= 500; both counts are printed. Bounded (few examples per
operation, fixed seed)."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families
from serve_helpers import antibodies, settings

from fedtune.serve.server import BackgroundServer

ADMIN = "fuzz-admin-key"
AB = antibodies(1)[0]


def _schemathesis() -> str | None:
    local = Path(sys.executable).parent / "schemathesis"
    return str(local) if local.exists() else shutil.which("schemathesis")


def _v2(heavy: str, light: str, extra: str = "") -> str:
    return (f'{{{extra}"inputs":[{{"name":"heavy","shape":[1],"datatype":"BYTES","data":["{heavy}"]}},'
            f'{{"name":"light","shape":[1],"datatype":"BYTES","data":["{light}"]}}]}}')


HOSTILE = [     # (method, path, raw JSON body): each answered 500 before issue 12
    ("POST", "/v1/fitness/predict", '{"antibodies":[{"id":"\\ud800","heavy":"%s","light":"%s"}]}'
     % (AB["heavy"], AB["light"])),
    ("POST", "/v1/fitness/predict", '{"antibodies":[{"heavy":"EV\\ud800","light":"%s"}]}' % AB["light"]),
    ("POST", "/v1/fitness/predict", '{"antibodies":[{"heavy":NaN,"light":"A"}]}'),
    ("POST", "/v1/fitness/predict", '{"site":Infinity,"antibodies":[{"heavy":"A","light":"A"}]}'),
    ("POST", "/v1/sentiment/predict", '{"texts":[-Infinity]}'),
    ("POST", "/v1/sentiment/predict", '{"texts":["\\udfff"]}'),
    ("POST", "/v2/models/fitness/infer", _v2(AB["heavy"], AB["light"], '"id":"\\ud800",')),
    ("POST", "/v2/models/fitness/infer", _v2(AB["heavy"], AB["light"], '"id":NaN,')),
    ("POST", "/v2/models/fitness/infer", '{"inputs":[{"name":"heavy","shape":[0],"datatype":"BYTES","data":[]},'
                                         '{"name":"light","shape":[0],"datatype":"BYTES","data":[]}]}'),
    ("POST", "/v2/models/sentiment/infer", '{"inputs":[{"name":"text","shape":[0],"datatype":"BYTES","data":[]}]}'),
    ("POST", "/v1/admin/reload", '{"bundles":["\\ud800"]}'),
    ("POST", "/v1/admin/reload", '{"bundles":["/etc", "\\u0000"]}'),
    ("POST", "/v1/admin/reload", '{"bundles":NaN}'),
] + [(f"MADEUP{i}", path, "") for i, path in enumerate(("/v1/models", "/v2/health/live", "/metrics", "/nope"))]


def _counts(metrics_text: str) -> tuple[int, int]:
    total = server_errors = 0
    for family in text_string_to_metric_families(metrics_text):
        for sample in family.samples:
            if sample.name == "fedtune_requests_total":
                total += int(sample.value)
                if sample.labels["status"] >= "500":
                    server_errors += int(sample.value)
    return total, server_errors


@pytest.mark.skipif(_schemathesis() is None, reason="schemathesis is not installed (pip install -e '.[dev]')")
def test_no_server_error_on_any_generated_or_hostile_input(sites_bundle, sentiment_bundle, tmp_path):
    s = settings([sites_bundle, sentiment_bundle], warmup=False, admin_key=ADMIN)
    with BackgroundServer(s, log_level="critical") as srv:
        cmd = [_schemathesis(), "run", srv.url + "/openapi.json", "-H", f"X-API-Key: {ADMIN}",
               "--checks", "not_a_server_error,response_schema_conformance",
               "--max-examples", "10", "--seed", "1", "--workers", "1", "--suppress-health-check", "all",
               "--request-timeout", "30", "--no-color", "--report-dir", str(tmp_path)]
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, cwd=tmp_path)
        hostile = []
        with httpx.Client(base_url=srv.url, timeout=60, headers={"X-API-Key": ADMIN}) as c:
            for method, path, raw in HOSTILE:
                r = c.request(method, path, content=raw.encode(), headers={"content-type": "application/json"})
                hostile.append((method, path, r.status_code))
            total, server_errors = _counts(c.get("/metrics").text)
    print(f"\nfuzz over v1 + v2 + admin: {total} requests answered, {server_errors} with status >= 500 "
          f"({len(HOSTILE)} hand-written hostile cases among them)")
    assert proc.returncode == 0, proc.stdout[-8000:] + proc.stderr[-2000:]
    assert "passed" in proc.stdout
    assert all(400 <= status < 500 for *_, status in hostile), [h for h in hostile if not 400 <= h[2] < 500]
    assert total > 100 + len(HOSTILE)            # the run really exercised the API
    assert server_errors == 0
