"""The record of a class-level patch: what was set on which class, so that exactly that can be undone."""

from __future__ import annotations

from ..registry import FAMILIES


class PatchHandle:
    """What ``patch`` changed, in order; ``undo()`` (or ``agci.unpatch()``) puts every original back."""

    def __init__(self):
        self.changes: list[tuple[type, str, object]] = []

    def _set(self, cls: type, name: str, value) -> None:
        self.changes.append((cls, name, cls.__dict__.get(name, _MISSING)))
        setattr(cls, name, value)

    def undo(self) -> None:
        for cls, name, original in reversed(self.changes):
            if original is _MISSING:
                delattr(cls, name)
            else:
                setattr(cls, name, original)
        self.changes.clear()
        _HANDLES.discard(self)

    @property
    def model_types(self) -> list[str]:
        return sorted({t for t, f in FAMILIES.items() for c, *_ in self.changes if c.__name__ == f.inner_class})

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.undo()


_MISSING = object()
_HANDLES: set[PatchHandle] = set()  # the handles not undone yet (agci.unpatch() undoes them all)


def _is_wrapped(cls: type, name: str) -> bool:
    return hasattr(cls.__dict__.get(name), "__agci_original__")
