"""Crash-safe checkpoint folders: write in a temporary folder, fsync, manifest, rename.

A checkpoint (an adapter or a full model folder) is published by writing `MANIFEST.json` (every
file's relative path, size and sha256) into its temporary folder, fsyncing every file and the
folder, renaming the folder into place and fsyncing the parent. Only then does the engine commit the
`updates` row naming it, so the database never points at a checkpoint that is not complete. A
folder whose manifest does not verify is never loaded. Leftover temporary folders (`.tmp-*`) are
removed at the next start.

A write that fails for lack of space (ENOSPC, EDQUOT), the updater's own or the manifest's, is a
`loop.store.DiskFull` naming the checkpoint folder (`checkpoint_space`): the half-written folder
stays a `.tmp-*` folder, which the next start deletes.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
from pathlib import Path
from typing import Any, Iterator

MANIFEST = "MANIFEST.json"
TMP_PREFIX = ".tmp-"


class CheckpointError(Exception):
    """A checkpoint that is missing or does not match its manifest; the message names it."""


@contextlib.contextmanager
def checkpoint_space(folder: Path) -> Iterator[None]:
    """Writes into checkpoint `folder`: one that fails for lack of space is a DiskFull naming
    it."""
    from loop.store import DiskFull, is_disk_full

    try:
        yield
    except OSError as exc:
        if is_disk_full(exc):
            raise DiskFull(f"the checkpoint folder {folder}") from exc
        raise


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _fsync_path(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file() and p.name != MANIFEST)


def write_manifest(folder: Path) -> dict:
    """Fsync every file, then write the manifest (itself fsynced) and return it."""
    files = {}
    for path in _files(folder):
        _fsync_path(path)
        files[str(path.relative_to(folder))] = {"size": path.stat().st_size,
                                                "sha256": _sha256(path)}
    manifest = {"files": files}
    tmp = folder / (MANIFEST + ".tmp")
    with open(tmp, "w") as fh:
        json.dump(manifest, fh, indent=1, sort_keys=True)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, folder / MANIFEST)
    _fsync_path(folder)
    return manifest


def checkpoint_hash(folder: Path) -> str:
    """The checkpoint's identity: sha256 of its manifest (paths, sizes and file hashes)."""
    return hashlib.sha256((Path(folder) / MANIFEST).read_bytes()).hexdigest()


def publish(tmp: Path, final: Path) -> str:
    """Make `tmp` the checkpoint at `final` atomically; return its hash."""
    with checkpoint_space(tmp):
        write_manifest(tmp)
        final.parent.mkdir(parents=True, exist_ok=True)
    if final.exists():  # a checkpoint from a try that died before its row was committed
        shutil.rmtree(final)
    os.replace(tmp, final)
    _fsync_path(final.parent)
    return checkpoint_hash(final)


def verify(folder: str | Path) -> None:
    """Raise CheckpointError unless every file in the manifest is present with its size and hash."""
    folder = Path(folder)
    manifest_path = folder / MANIFEST
    if not folder.is_dir():
        raise CheckpointError(f"checkpoint {folder} is missing")
    try:
        manifest = json.loads(manifest_path.read_text())
        files = manifest["files"]
    except (OSError, ValueError, KeyError, TypeError):
        raise CheckpointError(f"checkpoint {folder}: {MANIFEST} is missing or unreadable") from None
    for rel, facts in files.items():
        path = folder / rel
        if not path.is_file():
            raise CheckpointError(f"checkpoint {folder}: {rel} is missing")
        if path.stat().st_size != facts.get("size") or _sha256(path) != facts.get("sha256"):
            raise CheckpointError(f"checkpoint {folder}: {rel} does not match its manifest")


def scratch_path(run_dir: Path, name: str) -> Path:
    """The path of a temporary folder `name` in `run_dir`, which `remove_temporary` deletes at
    the next start if a killed process left it behind."""
    return Path(run_dir) / f"{TMP_PREFIX}{name}"


def scratch_dir(context: Any, name: str) -> Path:
    """A fresh, empty scratch folder for an updater (trainer state, intermediate files), beside
    the context's output folder. Nothing in it survives: a restart after a crash removes it, and
    the updater should remove it when done. `name` makes it unique within the round."""
    path = scratch_path(Path(context.output_dir).parent, f"{name}-round-{context.round_index}")
    shutil.rmtree(path, ignore_errors=True)
    path.mkdir(parents=True)
    return path


def remove_temporary(run_dir: Path) -> list[Path]:
    """Delete unfinished temporary checkpoint folders left by a killed process."""
    removed = []
    if run_dir.is_dir():
        for path in run_dir.glob(TMP_PREFIX + "*"):
            shutil.rmtree(path, ignore_errors=True)
            removed.append(path)
    return removed
