"""What identifies the inputs of a run, for the fingerprints :class:`agci.runs.RunFolder` compares: digests of
data and files, a checkpoint's weights by content (cached, so a 15 GB checkpoint is read once), and the installed
versions that change the numbers."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

from .runs import write_json


def data_digest(data) -> str:
    """sha256 (16 hex digits) of ``data`` as canonical JSON (keys sorted): what a fingerprint keeps of a list."""
    return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()[:16]


def file_digest(*paths: str | Path) -> str:
    """sha256 (16 hex digits) of the files' bytes, in the order given; a missing file counts as absent."""
    h = hashlib.sha256()
    for p in paths:
        p = Path(p)
        h.update(p.name.encode() + b"\0")
        if p.is_file():
            with p.open("rb") as f:
                for block in iter(lambda: f.read(1 << 20), b""):
                    h.update(block)
    return h.hexdigest()[:16]


WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".gguf")
CACHE_ENV = "AGCI_CACHE_DIR"  # where the content digests of large files are cached (default: ~/.cache/agci)
DIGEST_CACHE = "file-digests.json"


def cache_dir() -> Path:
    """``$AGCI_CACHE_DIR``, else ``$XDG_CACHE_HOME/agci``, else ``~/.cache/agci``."""
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV])
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "agci"


def _content_digest(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            h.update(block)
    return h.hexdigest()[:16]


def content_digests(paths, cache: bool = True) -> dict[str, str | None]:
    """sha256 (16 hex digits) of each file's bytes by its resolved path; None for a file that is absent.

    A digest is kept in the user's cache (:func:`cache_dir`) against the file's size, mtime_ns, ctime_ns and
    inode, and read from there while all four are unchanged: a 15 GB checkpoint is read once, not on every
    start, and rewriting a file (even to the same size) changes its mtime and ctime, so it is read again.
    Files are hashed on a few threads (hashlib releases the GIL)."""
    from concurrent.futures import ThreadPoolExecutor

    stamps: dict[str, list | None] = {}
    for p in paths:
        p = Path(p).resolve()
        try:
            st = p.stat()
            stamps[str(p)] = [st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino] if p.is_file() else None
        except OSError:
            stamps[str(p)] = None
    store = cache_dir() / DIGEST_CACHE
    known: dict = {}
    if cache:
        try:
            known = json.loads(store.read_text())
        except (OSError, ValueError):
            known = {}
        known = known if isinstance(known, dict) else {}
    found: dict[str, str | None] = {}
    todo = []
    for name, stamp in stamps.items():
        entry = known.get(name)
        if stamp is None:
            found[name] = None
        elif isinstance(entry, list) and len(entry) == 5 and entry[:4] == stamp:
            found[name] = entry[4]
        else:
            todo.append(name)
    if todo:
        with ThreadPoolExecutor(max_workers=min(4, len(todo))) as pool:
            for name, digest in zip(todo, pool.map(lambda n: _content_digest(Path(n)), todo), strict=True):
                found[name] = digest
                known[name] = [*stamps[name], digest]
        if cache:
            known = {k: v for k, v in known.items() if k in stamps or Path(k).is_file()}
            try:
                store.parent.mkdir(parents=True, exist_ok=True)
                write_json(store, known)
            except OSError:
                pass  # a cache that cannot be written only costs reading the files again next time
    return found


def model_fingerprint(model: str | Path) -> dict:
    """What identifies a checkpoint: its resolved path, its config.json's hash and the names and contents
    of its weight files (content digests cached by :func:`content_digests`; a hub id is identified by its
    name only)."""
    path = Path(model)
    if not path.exists():
        return {"model": str(model)}
    folder = path if path.is_dir() else path.parent
    files = sorted(p for p in folder.iterdir() if p.suffix in WEIGHT_SUFFIXES and p.is_file())
    digests = content_digests(files)
    weights = [f"{p.name}:{digests[str(p.resolve())]}" for p in files]
    return {
        "model": str(path.resolve()),
        "model_config": file_digest(folder / "config.json"),
        "model_weights": hashlib.sha256("\n".join(weights).encode()).hexdigest()[:16],
    }


def versions(*packages: str) -> dict:
    """Installed versions of agci, transformers and ``packages`` (they change the numbers a run writes)."""
    import importlib.metadata as md

    from . import __version__

    found = {"agci": __version__}
    for name in ("transformers", *packages):
        try:
            found[name] = md.version(name)
        except md.PackageNotFoundError:
            found[name] = None
    return found
