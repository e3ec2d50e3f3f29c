"""Publish a folder at a path so that the path always holds a complete one: versioned folders plus a symlink
that is atomically replaced.

    <parent>/<name>                       symlink -> .<name>.versions/<version>   (what readers open)
    <parent>/.<name>.versions/            made by fedtune (marker file .fedtune-versions)
        <UTC time>-<random>/              one complete folder per publication; the newest KEEP are kept

A reader that opens `<name>/manifest.json` always gets a whole version; each publication is a new folder, so
its files have new inodes. Only what this module made is ever replaced or removed: anything else at `<name>`
(a user's folder, a foreign symlink) or at the versions folder is refused before any work, untouched. A plain
folder at `<name>` that `is_ours` accepts (written by an older fedtune) is moved into the versions folder.
"""

from __future__ import annotations

import ctypes
import datetime as dt
import os
import re
import secrets
import shutil
import tempfile
from pathlib import Path
from typing import Callable

KEEP = 3                                   # the live version and the two before it
MARKER = ".fedtune-versions"
VERSION = re.compile(r"\d{8}T\d{6}\.\d{6}Z-[a-z0-9_]{8}")    # mkdtemp's suffix: 8 of [a-z0-9_]
LEGACY = "00000000T000000.000000Z-legacy00"                  # a plain folder migrated in: the oldest


class PublishError(ValueError):
    """The destination holds something fedtune did not publish: nothing was changed."""


def versions_dir(out: Path) -> Path:
    return out.with_name(f".{out.name}.versions")


def check_target(out: str | Path, is_ours: Callable[[Path], bool]) -> None:
    """Raise PublishError unless `out` is absent, a link this module made, or a plain folder `is_ours`."""
    out = Path(out)
    vdir = versions_dir(out)
    if (vdir.exists() or vdir.is_symlink()) and (vdir.is_symlink() or not (vdir / MARKER).is_file()):
        raise PublishError(f"{vdir} exists and was not made by fedtune: nothing written; choose another output")
    if out.is_symlink():
        target = Path(os.readlink(out))
        if target.parent != Path(vdir.name) or not VERSION.fullmatch(target.name):
            raise PublishError(f"{out} is a symlink fedtune did not make (-> {target}): not replaced; choose "
                               f"another output or remove it yourself")
    elif out.exists() and not (out.is_dir() and is_ours(out)):
        raise PublishError(f"{out} exists and is not an earlier fedtune output: not replaced, nothing written; "
                           f"choose another output or move it away yourself")


def new_version(out: str | Path, is_ours: Callable[[Path], bool]) -> Path:
    """An empty folder to write the next version into (after check_target)."""
    out = Path(out)
    check_target(out, is_ours)
    vdir = versions_dir(out)
    vdir.mkdir(parents=True, exist_ok=True)
    (vdir / MARKER).touch()
    stamp = dt.datetime.now(dt.timezone.utc).strftime("%Y%m%dT%H%M%S.%fZ")
    return Path(tempfile.mkdtemp(prefix=f"{stamp}-", dir=vdir))


def _exchange(a: Path, b: Path) -> bool:
    """Atomically swap two paths (Linux renameat2 RENAME_EXCHANGE); False where not available."""
    try:
        fn = ctypes.CDLL(None, use_errno=True).renameat2
    except (OSError, AttributeError):
        return False
    fn.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    at_fdcwd, rename_exchange = -100, 2
    return fn(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange) == 0


def publish(version: Path, out: str | Path, is_ours: Callable[[Path], bool], keep: int = KEEP) -> None:
    """Point `out` at `version` (a folder from new_version, fully written) in one rename; prune old versions."""
    out = Path(out)
    check_target(out, is_ours)
    vdir = versions_dir(out)
    link = out.with_name(f".{out.name}.link-{secrets.token_hex(6)}")
    os.symlink(f"{vdir.name}/{version.name}", link)
    try:
        if out.is_dir() and not out.is_symlink():    # an older fedtune's plain folder: move it in
            legacy = vdir / LEGACY
            if legacy.exists():
                raise PublishError(f"{legacy} already exists: {out} not migrated")
            if _exchange(link, out):
                os.rename(link, legacy)
            else:                                     # no atomic swap here: a moment without a folder
                os.rename(out, legacy)
                os.replace(link, out)
        else:
            os.replace(link, out)
    finally:
        if link.is_symlink():
            link.unlink()
    prune(vdir, keep, version.name)


def prune(vdir: Path, keep: int, live: str) -> None:
    """Remove all but the newest `keep` versions (never `live`, never anything not named like a version)."""
    names = sorted((p.name for p in vdir.iterdir() if VERSION.fullmatch(p.name) and p.is_dir()
                    and not p.is_symlink()), reverse=True)
    kept = {live, *names[:max(keep, 1)]}
    for name in names:
        if name not in kept:
            shutil.rmtree(vdir / name, ignore_errors=True)
