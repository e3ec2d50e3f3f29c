"""k8s/kit-secrets.sh packs only a kit's startup files, also from kits that have been used (job storage,
downloaded results, site-private models and run folders stay out of the Secrets)."""

from __future__ import annotations

import base64
import io
import subprocess
import tarfile

import yaml

from deploy_helpers import REPO
from fedtune.fl.provision import provision

USED = {   # what running participants leave in their kit folders
    "server": ["jobs-storage/0b6f1c4e/data", "snapshot-storage/0b6f1c4e/snapshot", "local/resources.json"],
    "admin": ["transfer/0b6f1c4e/workspace/app_server/fedtune/global.safetensors"],
    "site-1": ["fedtune-runs/0b6f1c4e/private_heads.safetensors", "0b6f1c4e/app_site-1/model.pt",
               "fedtune-embeddings/emb-0b6f1c4e.safetensors", "transfer/leftover.bin", "local/resources.json"],
}


def test_secrets_hold_only_the_startup_files_of_a_used_kit(tmp_path):
    kits = provision(tmp_path / "pki", 2, "fl-server")
    folders = {"server": kits.server, "admin": kits.admin, **kits.sites}
    for who, files in USED.items():
        for rel in files:
            (folders[who] / rel).parent.mkdir(parents=True, exist_ok=True)
            (folders[who] / rel).write_bytes(b"USED-KIT-CONTENT " + rel.encode())
    res = subprocess.run(["bash", str(REPO / "k8s" / "kit-secrets.sh"), str(tmp_path / "pki")], capture_output=True,
                         text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    secrets = {d["metadata"]["name"]: d for d in yaml.safe_load_all(res.stdout) if d and d["kind"] == "Secret"}
    assert set(secrets) == {"fedtune-kit-server", "fedtune-kit-admin", "fedtune-kit-site-1", "fedtune-kit-site-2"}
    for name, secret in secrets.items():
        who = name.removeprefix("fedtune-kit-")
        with tarfile.open(fileobj=io.BytesIO(base64.b64decode(secret["data"]["kit.tar.gz"]))) as tar:
            members = {m.name: m for m in tar.getmembers()}
            packed = {n: tar.extractfile(m).read() for n, m in members.items() if m.isfile()}
        kit = folders[who]
        expected = {str(p.relative_to(kit)) for p in kit.rglob("*") if p.is_file()
                    and p.relative_to(kit).parts[0] in ("startup", "local")} - {"local/resources.json"}
        assert set(packed) == expected, sorted(set(packed) ^ expected)
        assert all(packed[rel] == (kit / rel).read_bytes() for rel in packed)
        assert not any(b"USED-KIT-CONTENT" in data for data in packed.values())
        assert any(n.startswith("startup/") and n.endswith(".key") for n in packed)      # its own key, to run
        assert not any(b"root_pri_key" in data for data in packed.values())               # never the CA
        extra_dirs = {n for n, m in members.items() if m.isdir() and n.split("/")[0] not in ("startup", "local")}
        assert extra_dirs <= {"transfer"}                 # the admin API needs the (empty) folder
