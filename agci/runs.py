"""Output folders that a run owns: one run at a time, resumed only by the same inputs, files never half-written.

Every command that writes results into a folder (``agci probe``, ``probe-set``, ``eval``, ``ris evaluate``,
``resampler-probe extract|train|search``) opens it with :class:`RunFolder`:

- an exclusive lock on ``OUT/.agci-lock`` for the whole run: a second run into the folder is refused at once,
  naming the process that holds it. The lock is the operating system's (``flock``), so it ends with its
  process: a run killed with ``kill -9`` leaves nothing that blocks the next one;
- ``OUT/agci-run.json`` records, per kind of result (``key``), the fingerprint of what defines the results
  (model and its config, data, options, versions). A rerun resumes only when the fingerprint is the same;
  otherwise it is refused with what differs. ``force`` discards that key's results and starts over;
- :func:`write_text` and :func:`save_figure` write to a temporary file and rename it, so a kill never leaves
  half a summary.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import sys
import time
from pathlib import Path

RECORD = "agci-run.json"
LOCK = ".agci-lock"


class RunRefused(ValueError):
    """A run that may not write into its output folder (in use, other inputs, not a folder)."""


def write_text(path: str | Path, text: str) -> Path:
    """Write ``text`` to ``path`` through a temporary file in the same folder and an atomic rename."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        tmp.write_text(text)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)  # nothing half-written is left beside the file
        raise
    return path


def write_json(path: str | Path, data) -> Path:
    return write_text(path, json.dumps(data, indent=1) + "\n")


def save_figure(fig, path: str | Path, **kwargs) -> Path:
    """``fig.savefig`` through a temporary file and an atomic rename."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp{path.suffix}")
    fig.savefig(tmp, **kwargs)
    os.replace(tmp, path)
    return path


def drop_partial_line(path: str | Path) -> None:
    """A JSONL file that a kill cut mid-line ends without its newline: cut that line, so that appending
    stays valid and the row is computed again."""
    path = Path(path)
    if not path.is_file():
        return
    data = path.read_bytes()
    if data and not data.endswith(b"\n"):
        path.write_bytes(data[: data.rfind(b"\n") + 1])


def _lock_file(fd: int) -> bool:
    """Take the exclusive lock on ``fd`` without waiting; False when another process holds it."""
    try:
        import fcntl
    except ImportError:  # Windows
        import msvcrt

        try:
            msvcrt.locking(fd, msvcrt.LK_NBLCK, 1)
            return True
        except OSError:
            return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return True
    except BlockingIOError:
        return False


_UNREAD = object()


def _holds_a_file(path: Path) -> bool:
    if not path.is_dir() or path.is_symlink():
        return True
    return any(p.is_file() for p in path.rglob("*"))


def _describe_holder(text: str) -> str:
    try:
        holder = json.loads(text)
        return f"pid {holder['pid']} on {holder['host']}, `{holder['command']}`, started {holder['started']}"
    except (ValueError, KeyError, TypeError):
        return "another process"


def _differences(old: dict, new: dict, prefix: str = "") -> list[str]:
    """``key: old then, new now`` for every differing entry, nested dicts flattened to ``a.b``."""
    out = []
    for key in sorted(set(old) | set(new)):
        a, b = old.get(key), new.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            out += _differences(a, b, f"{prefix}{key}.")
        elif a != b:
            out.append(f"{prefix}{key}: {json.dumps(a)} then, {json.dumps(b)} now")
    return out


def _command_line() -> str:
    """This process's command line, as the user typed it (``agci ...`` for ``python -m agci`` too)."""
    program = Path(sys.argv[0]).name if sys.argv and sys.argv[0] else "python"
    program = "agci" if program in ("agci", "__main__.py") else program
    return " ".join([program, *sys.argv[1:]])


class RunFolder:
    """``with RunFolder(out, "probe", fingerprint, outputs=[...]) as folder:`` around a run that writes
    into ``out``.

    ``key`` names the kind of result (a folder may hold several, e.g. one per dataset split),
    ``fingerprint`` is a JSON-able dict of everything that defines those results, and ``outputs`` are the
    glob patterns (relative to ``out``) of the files that they are made of: ``force`` deletes those and
    starts again, and files matching them without a record of their run are refused (they may come from
    any run). ``option`` is how the command line spells force, for the messages. ``found_fingerprint`` is
    the fingerprint that results written without a record carry by other means (a probe set's manifest):
    they are then treated as recorded with it.
    """

    def __init__(self, out: str | Path, key: str, fingerprint: dict, *, outputs: tuple[str, ...] | list[str],
                 force: bool = False, option: str = "--out", command: str | None = None,
                 found_fingerprint: dict | None = None):  # fmt: skip
        self.path = Path(out)
        self.key = key
        self.fingerprint = json.loads(json.dumps(fingerprint))  # as it will read back from disk
        self.outputs = tuple(outputs)
        self.force = force
        self.option = option
        self.found_fingerprint = found_fingerprint and json.loads(json.dumps(found_fingerprint))
        self.command = command or _command_line()
        self.resumed = False
        self._fd: int | None = None
        self._created = False
        self._record_before: str | None | object = _UNREAD  # the record file's text before this run; None: none

    def __enter__(self) -> RunFolder:
        if self.path.exists() and not self.path.is_dir():
            raise RunRefused(f"{self.option} {self.path} is an existing file, not a folder; give a folder path")
        self._created = not self.path.exists()
        try:
            self.path.mkdir(parents=True, exist_ok=True)
        except NotADirectoryError as exc:
            raise RunRefused(
                f"{self.option} {self.path} cannot be created: a part of its path is a file; give a folder path"
            ) from exc
        except OSError as exc:
            raise self._unwritable(exc) from exc
        try:
            self._lock()
        except OSError as exc:
            self._release_claim()
            raise self._unwritable(exc) from exc
        try:
            self._check_record()
        except OSError as exc:
            self._release_claim()
            raise self._unwritable(exc) from exc
        except BaseException:
            self._release_claim()
            raise
        return self

    def __exit__(self, exc_type, *exc) -> None:
        if exc_type is not None and not self._existing_outputs():
            self._release_claim()  # failed before writing a result: leave the folder as it was found
        else:
            self._unlock()

    def _unwritable(self, exc: OSError) -> RunRefused:
        return RunRefused(
            f"{self.option} {self.path} cannot be written ({exc.strerror or exc}); give a folder you can write to"
        )

    def _release_claim(self) -> None:
        """Undo what claiming the folder did: the record as it was before, and the lock file and the folder
        itself when this run created them."""
        if self._record_before is not _UNREAD:
            try:
                if self._record_before is None:
                    (self.path / RECORD).unlink(missing_ok=True)
                else:
                    write_text(self.path / RECORD, self._record_before)
            except OSError:
                pass
        self._unlock()
        if self._created:
            try:
                (self.path / LOCK).unlink(missing_ok=True)
                self.path.rmdir()  # only when nothing else is left in it
            except OSError:
                pass

    # the lock
    def _lock(self) -> None:
        fd = os.open(self.path / LOCK, os.O_RDWR | os.O_CREAT, 0o644)
        if not _lock_file(fd):
            holder = os.pread(fd, 4096, 0).decode(errors="replace") if hasattr(os, "pread") else ""
            os.close(fd)
            raise RunRefused(
                f"{self.path} is in use by another agci run ({_describe_holder(holder)}); wait for it to finish, "
                f"stop it, or give another {self.option}"
            )
        holder = {"pid": os.getpid(), "host": socket.gethostname(), "command": self.command,
                  "started": time.strftime("%Y-%m-%d %H:%M:%S")}  # fmt: skip
        os.ftruncate(fd, 0)
        os.write(fd, json.dumps(holder).encode())
        self._fd = fd

    def _unlock(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing the descriptor releases the lock
            self._fd = None

    # the record
    def _read_record(self) -> dict:
        path = self.path / RECORD
        if not path.is_file():
            return {"runs": {}}
        try:
            text = path.read_text()
            record = json.loads(text)
            record["runs"]  # noqa: B018
            return record
        except (ValueError, KeyError, TypeError) as exc:
            raise RunRefused(
                f"{path} is not a run record agci can read ({exc}); give another {self.option}, or delete "
                f"the folder's results and the record to start over"
            ) from exc

    def _existing_outputs(self, empty_folders: bool = False) -> list[Path]:
        """The outputs in the folder; a folder among them counts only when it holds a file (or ``empty_folders``)."""
        found: list[Path] = []
        for pattern in self.outputs:
            found += [p for p in self.path.glob(pattern) if not p.name.startswith(".")]
        return sorted(p for p in set(found) if empty_folders or _holds_a_file(p))

    def _check_record(self) -> None:
        path = self.path / RECORD
        before = path.read_text() if path.is_file() else None
        record = self._read_record()
        self._record_before = before
        previous = record["runs"].get(self.key)
        if previous is None and self.found_fingerprint is not None:
            previous = {"fingerprint": self.found_fingerprint}
        existing = self._existing_outputs()
        if previous is not None and previous.get("fingerprint") == self.fingerprint and not self.force:
            self.resumed = bool(existing)
        elif not existing:
            pass  # no results to keep: a record alone (of a run that wrote nothing) does not block
        elif not self.force:
            if previous is None:
                names = ", ".join(p.name for p in existing[:3]) + (" ..." if len(existing) > 3 else "")
                raise RunRefused(
                    f"{self.path} already holds results ({names}) with no record of the run that wrote them, so "
                    f"they cannot be resumed safely; give another {self.option}, or --force to delete them and "
                    "start over"
                )
            differs = _differences(previous.get("fingerprint", {}), self.fingerprint)
            raise RunRefused(
                f"{self.path} holds results of a run with other inputs ({'; '.join(differs)}); a rerun resumes "
                f"only the same inputs: give another {self.option}, or --force to delete those results and "
                "start over"
            )
        else:
            for p in self._existing_outputs(empty_folders=True):
                shutil.rmtree(p) if p.is_dir() and not p.is_symlink() else p.unlink()
        entry = {"command": self.command, "fingerprint": self.fingerprint,
                 "started": time.strftime("%Y-%m-%d %H:%M:%S"), "finished": None}  # fmt: skip
        if self.resumed:
            entry["runs"] = previous.get("runs", 1) + 1
        record["runs"][self.key] = entry
        write_json(self.path / RECORD, record)

    def finished(self) -> None:
        """Mark this key's run complete in the record."""
        record = self._read_record()
        record["runs"][self.key]["finished"] = time.strftime("%Y-%m-%d %H:%M:%S")
        write_json(self.path / RECORD, record)
