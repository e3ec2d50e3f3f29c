"""The service names no kind: it registers one /v1 and one /v2 route set per registered kind from the kind's own
API (`fedtune.tasks.get(kind).api`), typed with the kind's bodies, and still imports neither train/ nor fl/."""

from __future__ import annotations

import subprocess
import sys

import pytest

from fedtune.serve.kinds import KindApi
from fedtune.serve.server import BackgroundServer
from fedtune.tasks import get, kinds
from serve_helpers import settings


@pytest.fixture(scope="module")
def server(sites_bundle, sentiment_bundle, sequences_bundle):
    """A service with a bundle of every registered kind."""
    with BackgroundServer(settings([sites_bundle, sentiment_bundle, sequences_bundle])) as srv:
        yield srv


def test_the_service_and_every_kind_api_import_neither_train_nor_fl():
    code = ("import sys; import fedtune.serve.app; from fedtune.tasks import get, kinds; "
            "[get(k).api for k in kinds()]; "
            "print(sorted(m for m in sys.modules if m.startswith(('fedtune.train', 'fedtune.fl'))))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_every_kind_is_served_with_its_own_typed_bodies(server, client):
    spec = client.get("/openapi.json").json()
    for kind in kinds():
        api = get(kind).api
        assert isinstance(api, KindApi)
        post = spec["paths"][f"/v1/{kind}/predict"]["post"]
        assert post["summary"] == api.summary and post["operationId"] == f"predict_{kind}_v1_{kind}_predict_post"
        body = post["requestBody"]["content"]["application/json"]["schema"]["$ref"]
        answer = post["responses"]["200"]["content"]["application/json"]["schema"]["$ref"]
        assert body == f"#/components/schemas/{api.request_model.__name__}"
        assert answer == f"#/components/schemas/{api.response_model.__name__}"
        meta = client.get(f"/v2/models/{kind}")
        assert meta.status_code == 200, meta.text
        model = server.app.state.registry.get(kind)
        assert [i["name"] for i in meta.json()["inputs"]] == list(api.v2_inputs(model))
        assert meta.json()["outputs"] == api.v2_outputs(model)
    name = spec["paths"]["/v2/models/{name}/infer"]["post"]["parameters"][0]
    assert name["name"] == "name" and name["schema"]["examples"] == list(kinds())
    assert name["description"] == "the model: " + " or ".join(kinds())
