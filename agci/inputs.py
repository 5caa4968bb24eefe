"""Reading what a user points agci at, with errors that name the file and the fix instead of a traceback.

Every error here is a ``FileNotFoundError`` or ``ValueError`` (the command line turns both into one line
and exit code 2)."""

from __future__ import annotations

import json
import pickle
import re
from pathlib import Path

HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*(/[A-Za-z0-9][\w.-]*)?")  # name or owner/name


def check_model_path(path: str | Path, what: str = "model") -> bool:
    """True for a local path; False for a hub id; FileNotFoundError for a local path that does not exist
    (anything that cannot be a hub id)."""
    if Path(path).exists():
        return True
    if HUB_ID.fullmatch(str(path)):
        return False
    raise FileNotFoundError(f"{what} path {path} does not exist; give a checkpoint folder or a hub id")


def hub_error(path: str | Path, exc: BaseException) -> FileNotFoundError:
    """The error for a hub id that could not be read (no network, no local cache, no such repo)."""
    first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return FileNotFoundError(
        f"{path} is not a local folder, and as a hub id it could not be read ({first}); check the path, or "
        "download the model first (hub ids need network access or the local HF cache)"
    )


def read_json(path: str | Path, what: str):
    """The JSON in ``path``; ``what`` says what the file should be, for the messages."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist; give {what}")
    try:
        return json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ValueError(f"{path} is not valid JSON ({exc}); give {what}") from exc


def read_jsonl(path: str | Path, what: str = "a JSON Lines file (one JSON object a line)",
               keys: tuple[str, ...] = ()) -> list[dict]:  # fmt: skip
    """The rows of a JSON Lines file, each an object with ``keys``; a file that does not exist, a line that
    is not JSON and a row without one of the keys are refused naming ``PATH:LINE`` and ``what`` to give."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist; give {what}")
    try:
        lines = path.read_text().splitlines()
    except UnicodeDecodeError as exc:
        raise ValueError(f"{path} is not a text file ({exc}); give {what}") from exc
    rows = []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise ValueError(f"{path}:{number} is not valid JSON ({exc}); give {what}") from exc
        if not isinstance(row, dict):
            raise ValueError(f"{path}:{number} holds a {type(row).__name__}, not an object; give {what}")
        missing = [k for k in keys if k not in row]
        if missing:
            raise ValueError(f"{path}:{number} lacks {', '.join(map(repr, missing))}; give {what}")
        rows.append(row)
    return rows


def read_pickle(path: str | Path, what: str):
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist; give {what}")
    try:
        with path.open("rb") as f:
            return pickle.load(f)
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError, ImportError) as exc:
        raise ValueError(f"{path} is not a readable pickle ({exc}); give {what}") from exc


def require_keys(data, keys: tuple[str, ...], where: str | Path, what: str) -> None:
    """ValueError naming the keys that the mapping ``data`` (read from ``where``) lacks."""
    if not isinstance(data, dict):
        raise ValueError(f"{where} holds a {type(data).__name__}, not an object; give {what}")
    missing = [k for k in keys if k not in data]
    if missing:
        raise ValueError(f"{where} lacks {', '.join(map(repr, missing))}; give {what}")


def read_config(path: str | Path, trust_remote_code: bool = False):
    """A checkpoint's transformers config (no weights read): a local folder that does not exist, a
    config.json that is not valid JSON and a hub id that cannot be reached are refused in words."""
    from transformers import AutoConfig

    local = check_model_path(path)
    if local:
        config_file = Path(path) / "config.json" if Path(path).is_dir() else Path(path)
        read_json(config_file, "a checkpoint folder with its config.json")  # names the file and the JSON error
    try:
        return AutoConfig.from_pretrained(path, trust_remote_code=trust_remote_code)
    except OSError as exc:
        if local:
            raise ValueError(f"{path}: no checkpoint config can be read there ({exc})") from exc
        raise hub_error(path, exc) from exc
