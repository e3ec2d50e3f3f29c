"""The export bundle: the only contract between training and serving.

A bundle is a folder that holds everything needed to serve a trained model and nothing else:

    manifest.json                 format version, kind, trunk architecture + config, tokenizer files, the kind's
                                  own fields (`Task.manifest_fields`: e.g. tasks and assays, or labels),
                                  per-head-set target statistics, sites, which head sets are global / per site,
                                  the heads' hidden sizes and type (mlp, ridge, ridge-mlp: `models.heads`), metrics, provenance, tensor shapes, sha256 of every file
    trunk/config.json, tokenizer files, trunk/model.safetensors   a plain Hugging Face encoder folder
    heads/global.safetensors      heads averaged by the server (shared heads / local training)
    heads/<site>.safetensors      a site's own heads (private heads published at the end of a job)

Loading verifies every digest and every tensor shape against the manifest and refuses a corrupt or
mismatched bundle with a BundleError that says which file and why; every file it reads is hashed from the
very bytes it then uses, and only files the manifest lists (plain paths inside the bundle) are read.
Saving writes a new version folder (`.<name>.versions/<UTC time>-<random>/`) and then atomically replaces
the symlink `<name>` with one to it
(fedtune.publish): the path always holds a whole bundle, a re-export gives `<name>/manifest.json` a new inode,
and only an earlier bundle is ever replaced (anything else at the path is refused, untouched).
"""

from __future__ import annotations

import copy
import datetime as dt
import hashlib
import json
import os
import shutil
import stat
import tempfile
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load as load_safetensors
from safetensors.torch import save_file
from torch import nn

from .models import TrunkConfig, load_trunk, merge_trunk
from .models.modes import FixedPrompt
from .publish import check_target, new_version, publish
from .tasks import UnknownKind, get

FORMAT = "fedtune-bundle"
FORMAT_VERSION = 1
MANIFEST = "manifest.json"
GLOBAL = "global"


class BundleError(RuntimeError):
    """A bundle that cannot be used: missing, corrupt (digest), or not matching its manifest."""


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _tensor_spec(tensors: dict[str, torch.Tensor]) -> dict[str, dict]:
    return {k: {"shape": list(v.shape), "dtype": str(v.dtype).removeprefix("torch.")} for k, v in tensors.items()}


def _contiguous(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v.detach().to("cpu").contiguous().clone() for k, v in state.items()}


def _strip(state: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    return {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}


def is_bundle_folder(path: Path) -> bool:
    """Whether `path` holds a bundle manifest (any format version): the only kind of folder saving replaces."""
    try:
        return json.loads((path / MANIFEST).read_text()).get("format") == FORMAT
    except (OSError, ValueError, AttributeError):
        return False


def save_bundle(out_dir: str | Path, model: nn.Module, *, trunk_cfg: TrunkConfig,
                stats=None, include_global: bool = True,
                site_heads: dict[str, dict[str, torch.Tensor]] | None = None,
                site_stats: dict | None = None, heads_mode: str = "shared",
                sites: list[str] | None = None, metrics: dict | None = None,
                provenance: dict | None = None) -> Path:
    """Write `model` (its trunk, and its heads as the global head set when include_global) plus any per-site
    heads (`site_heads[site]` = a state dict with keys `heads.<task>....` or `<task>....`).

    `stats` are the target statistics of the global heads (the kind's `fit_stats`; required when the kind
    `needs_stats`); `site_stats[site]` those of a site's heads (default: `stats`). `out_dir` becomes a symlink
    to a new version folder (see the module docstring); anything at `out_dir` other than an earlier bundle raises PublishError (a ValueError), untouched."""
    out_dir = Path(out_dir)
    check_target(out_dir, is_bundle_folder)
    kind = model.kind
    task = get(kind)
    if task.needs_stats and stats is None:
        raise ValueError(f"a {kind} bundle needs the target statistics")
    site_heads = site_heads or {}
    if not include_global and not site_heads:
        raise ValueError("a bundle needs global heads or at least one site's heads")
    model = merge_trunk(copy.deepcopy(model).to("cpu"))
    trunk = model.trunk
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = new_version(out_dir, is_bundle_folder)
    try:
        (tmp / "trunk").mkdir()
        (tmp / "heads").mkdir()
        trunk.base_config().to_json_file(str(tmp / "trunk" / "config.json"))
        trunk.tokenizer.save_pretrained(str(tmp / "trunk"))
        tensors: dict[str, dict] = {}
        trunk_state = _contiguous(trunk.encoder.state_dict())
        save_file(trunk_state, str(tmp / "trunk" / "model.safetensors"))
        tensors["trunk/model.safetensors"] = _tensor_spec(trunk_state)
        virtual_tokens = 0
        if trunk.prompt is not None:     # p-tuning: the fixed virtual tokens
            prompt_state = _contiguous(trunk.prompt.state_dict())
            save_file(prompt_state, str(tmp / "trunk" / "prompt.safetensors"))
            tensors["trunk/prompt.safetensors"] = _tensor_spec(prompt_state)
            virtual_tokens = int(prompt_state["tokens"].shape[0])

        head_sets: dict[str, dict] = {}
        all_stats: dict[str, dict] = {}
        sets = ({GLOBAL: _contiguous(model.heads.state_dict())} if include_global else {})
        for site, state in site_heads.items():
            state = _strip(state, "heads.") if any(k.startswith("heads.") for k in state) else state
            sets[site] = _contiguous(state)
        for name, state in sets.items():
            rel = f"heads/{name}.safetensors"
            save_file(state, str(tmp / rel))
            tensors[rel] = _tensor_spec(state)
            head_sets[name] = {"file": rel, "scope": "global" if name == GLOBAL else "site"}
            st = stats if name == GLOBAL else (site_stats or {}).get(name, stats)
            if st is not None:
                all_stats[name] = st.to_dict()

        files = sorted(p for p in tmp.rglob("*") if p.is_file())
        manifest = {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "kind": kind,
            "created": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
            "trunk": {
                "architecture": trunk.base_config().model_type,
                "hidden_size": trunk.hidden_size,
                "config": {**trunk_cfg.to_dict(), "source": "trunk", "mode": "full"},
                "trained_mode": trunk_cfg.mode,
                "source": trunk_cfg.source,
                "residue_separator": trunk.residue_sep,
                "virtual_tokens": virtual_tokens,
                "files": [str(p.relative_to(tmp)) for p in files if p.parent.name == "trunk"],
            },
            "heads": {"hidden": list(model.head_hidden), "type": getattr(model, "head_type", "mlp"),
                      "mode": heads_mode, "sets": head_sets},
            "sites": sites if sites is not None else [s for s in head_sets if s != GLOBAL],
            "target_stats": all_stats,
            "metrics": metrics or {},
            "provenance": provenance or {},
            "tensors": tensors,
            "files": {str(p.relative_to(tmp)): sha256_file(p) for p in files},
        }
        manifest.update(task.manifest_fields(model))
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2, sort_keys=False))
        publish(tmp, out_dir, is_bundle_folder)
    except BaseException:
        if out_dir.resolve() != tmp.resolve():    # not yet published: the half-written version goes
            shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out_dir


@dataclass
class Bundle:
    path: Path
    manifest: dict
    model: nn.Module                       # trunk + the default head set, eval mode
    head_sets: dict[str, nn.ModuleDict]    # "global" and/or site names
    stats: dict = field(default_factory=dict)     # head set -> target statistics (kinds that need them)
    digest: str = ""                       # sha256 of manifest.json: identifies this exact bundle

    @property
    def kind(self) -> str:
        return self.manifest["kind"]

    @property
    def sites(self) -> list[str]:
        return [s for s in self.head_sets if s != GLOBAL]

    @property
    def has_global(self) -> bool:
        return GLOBAL in self.head_sets

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def resolve_sets(self, head_set: str | None) -> list[str]:
        """The head sets that answer a request: the named one; else global; else every site (mean)."""
        if head_set is not None:
            if head_set not in self.head_sets:
                raise KeyError(f"unknown site {head_set!r}; known: {sorted(self.head_sets)}")
            return [head_set]
        return [GLOBAL] if self.has_global else self.sites

    @torch.inference_mode()
    def predict(self, items: list, head_set: str | None = None, *, kind: str | None = None, **opts):
        """Predictions for `items` (in the kind's item form: a text, a (heavy, light) pair, ...) as the kind's
        `head_outputs` gives them (an array, or a dict of arrays, float32, first axis the items); the mean over
        sites when no global heads exist and no site is named. One trunk pass, fanned out to the heads.
        `kind`: the kind the caller expects (a bundle of another kind raises BundleError); `opts`: the kind's
        options (e.g. `tasks`)."""
        if kind is not None and kind != self.kind:
            raise BundleError(f"{self.path}: a {self.kind} bundle cannot predict {kind}")
        task = get(self.kind)
        emb = self.model.embed_tokens(task.tokenize(self.model, list(items))).float()
        outs = [task.head_outputs(self.model, emb, self.head_sets[n], **opts) for n in self.resolve_sets(head_set)]
        if isinstance(outs[0], dict):
            return {k: np.mean(np.stack([o[k] for o in outs]), axis=0) for k in outs[0]}
        return np.mean(np.stack(outs), axis=0)


def _parse_manifest(raw: bytes, mpath: Path) -> dict:
    try:
        manifest = json.loads(raw)
    except ValueError as exc:
        raise BundleError(f"{mpath}: unreadable manifest: {exc}") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise BundleError(f"{mpath}: not a {FORMAT} manifest")
    if manifest.get("format_version") != FORMAT_VERSION:
        raise BundleError(f"{mpath}: format version {manifest.get('format_version')} is not supported "
                          f"(this fedtune reads version {FORMAT_VERSION})")
    return manifest


def _read_manifest_bytes(path: Path) -> bytes:
    try:
        return (path / MANIFEST).read_bytes()
    except (FileNotFoundError, NotADirectoryError, IsADirectoryError):
        raise BundleError(f"{path}: not a bundle (no {MANIFEST})") from None
    except OSError as exc:
        raise BundleError(f"{path / MANIFEST}: unreadable manifest: {exc}") from None


def read_manifest(path: str | Path) -> dict:
    path = Path(path)
    return _parse_manifest(_read_manifest_bytes(path), path / MANIFEST)


class _Files:
    """The files of one bundle folder as its manifest lists them. Every name the manifest uses must be a plain
    relative path inside the bundle that the digest map lists; each file is read once, hashed, and used from
    those same bytes (no second read a swap on disk could slip into)."""

    def __init__(self, root: Path, manifest: dict):
        self.root = root
        files = manifest.get("files")
        if not isinstance(files, dict) or not files:
            raise BundleError(f"{root}: manifest lists no files")
        for rel, digest in files.items():
            self._check_name(rel)
            if not (isinstance(digest, str) and len(digest) == 64 and all(c in "0123456789abcdef" for c in digest)):
                raise BundleError(f"{root}: {rel}: the manifest's digest is not a sha256 hex string")
        self.digests: dict[str, str] = files
        self.unread = set(files)

    def _check_name(self, rel) -> str:
        if not isinstance(rel, str) or not rel or "\\" in rel or "\0" in rel:
            raise BundleError(f"{self.root}: the manifest names an invalid file {rel!r}")
        pure = PurePosixPath(rel)
        if pure.is_absolute() or ".." in pure.parts or str(pure) != rel or rel == MANIFEST:
            raise BundleError(f"{self.root}: the manifest names {rel!r}, which is not a plain path inside the bundle")
        return rel

    def named(self, rel) -> str:
        """A file the manifest names outside its digest map: must be in the map too."""
        self._check_name(rel)
        if rel not in self.digests:
            raise BundleError(f"{self.root}: the manifest names {rel!r}, which its digest map does not list")
        return rel

    def read(self, rel: str) -> bytes:
        f = self.root / self.named(rel)
        try:
            if f.resolve(strict=True) != f:      # no link (of the file or a folder on its way) out of the bundle
                raise BundleError(f"{self.root}: {rel} is a symbolic link; a bundle holds plain files only")
            fd = os.open(f, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)    # a FIFO must not block the load
            with os.fdopen(fd, "rb") as fh:
                if not stat.S_ISREG(os.fstat(fh.fileno()).st_mode):
                    raise BundleError(f"{self.root}: {rel} is not a regular file")
                data = fh.read()
        except (FileNotFoundError, NotADirectoryError, IsADirectoryError):
            raise BundleError(f"{self.root}: missing file {rel}") from None
        except (OSError, RuntimeError) as exc:
            raise BundleError(f"{self.root}: {rel}: unreadable: {exc}") from None
        actual, expected = hashlib.sha256(data).hexdigest(), self.digests[rel]
        if actual != expected:
            raise BundleError(f"{self.root}: {rel} is corrupt: sha256 {actual[:16]}... does not match the "
                              f"manifest's {expected[:16]}...")
        self.unread.discard(rel)
        return data

    def read_rest(self) -> None:
        for rel in sorted(self.unread):
            self.read(rel)

    def tensors(self, rel: str, manifest: dict) -> dict[str, torch.Tensor]:
        expected = manifest["tensors"].get(self.named(rel))
        if expected is None:
            raise BundleError(f"{self.root}: {rel} has no tensor list in the manifest")
        try:
            state = load_safetensors(self.read(rel))
        except SafetensorError as exc:
            raise BundleError(f"{self.root}: {rel}: unreadable weights: {exc}") from None
        if _tensor_spec(state) != expected:
            missing = set(expected) ^ set(state)
            detail = f"keys differ: {sorted(missing)[:5]}" if missing else "shapes or dtypes differ"
            raise BundleError(f"{self.root}: {rel} does not match the manifest ({detail})")
        return state

    def trunk_folder(self, manifest: dict, out: Path) -> Path:
        """The trunk's config and tokenizer files (verified bytes) written to `out`: Hugging Face loads them
        from there, so it sees exactly the listed files, never anything else lying in the bundle."""
        listed = [self.named(rel) for rel in manifest["trunk"]["files"]]
        for rel in listed:
            if not rel.startswith("trunk/"):
                raise BundleError(f"{self.root}: trunk file {rel!r} is not under trunk/")
            if rel.endswith(".safetensors"):
                continue                         # weights: loaded from their bytes, not from a folder
            target = out / rel.removeprefix("trunk/")
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(self.read(rel))
        return out


def _load_into(module: nn.Module, state: dict, path: Path, rel: str) -> None:
    try:
        module.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise BundleError(f"{path}: {rel} does not fit the model described by the manifest: "
                          f"{str(exc).splitlines()[0]}") from None


def load_bundle(path: str | Path, device: str | torch.device = "cpu") -> Bundle:
    """Load and fully verify a bundle. Raises BundleError on anything missing, corrupt or mismatched.

    A symlinked bundle (the published `<name>` -> a version folder) is resolved once, here: every file comes
    from that one version folder, even if the link is replaced meanwhile; `Bundle.path` is that folder."""
    try:
        root = Path(path).resolve(strict=True)
    except (OSError, RuntimeError):
        raise BundleError(f"{path}: not a bundle (no such folder)") from None
    raw = _read_manifest_bytes(root)
    manifest = _parse_manifest(raw, root / MANIFEST)
    files = _Files(root, manifest)
    try:
        task = get(manifest.get("kind"))
    except UnknownKind:
        raise BundleError(f"{root}: unknown kind {manifest.get('kind')!r}") from None
    try:
        with tempfile.TemporaryDirectory(prefix="fedtune-trunk-") as tmp:
            cfg = TrunkConfig.from_dict({**manifest["trunk"]["config"],
                                         "source": str(files.trunk_folder(manifest, Path(tmp)))})
            trunk = load_trunk(cfg, weights=False)
        _load_into(trunk.encoder, files.tensors("trunk/model.safetensors", manifest), root,
                   "trunk/model.safetensors")
        if manifest["trunk"].get("virtual_tokens"):
            trunk.prompt = FixedPrompt(torch.zeros(manifest["trunk"]["virtual_tokens"], trunk.hidden_size))
            _load_into(trunk.prompt, files.tensors("trunk/prompt.safetensors", manifest), root,
                       "trunk/prompt.safetensors")
        hidden = tuple(manifest["heads"]["hidden"])
        model = task.model_from_manifest(trunk, manifest, hidden)
        head_sets = {}
        for name, spec in manifest["heads"]["sets"].items():
            heads = model.new_heads()
            _load_into(heads, files.tensors(spec["file"], manifest), root, spec["file"])
            head_sets[name] = heads
        if not head_sets:
            raise BundleError(f"{root}: the bundle holds no heads")
        for rel in manifest["tensors"]:
            files.named(rel)
        files.read_rest()                        # every listed file is verified, used or not
        stats = {name: task.stats_from_dict(d) for name, d in manifest.get("target_stats", {}).items()}
        if task.needs_stats and set(stats) != set(head_sets):
            raise BundleError(f"{root}: target statistics missing for head sets "
                              f"{sorted(set(head_sets) - set(stats))}")
    except (KeyError, TypeError, ValueError, AttributeError, OSError) as exc:
        raise BundleError(f"{root}: manifest does not describe a usable model: {exc!r}") from None
    model.heads = head_sets.get(GLOBAL, next(iter(head_sets.values())))
    model.to(device).eval()
    for heads in head_sets.values():
        heads.to(device).eval()
    return Bundle(root, manifest, model, head_sets, stats, hashlib.sha256(raw).hexdigest())
