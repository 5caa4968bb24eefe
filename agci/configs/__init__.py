"""The config keys that control AGCI, how their values are read and checked, and how lambda is set
on a model for a while and written as text.

Every key name lives here; nothing else in agci spells one out. No torch or transformers import.
"""

from __future__ import annotations

import contextlib
import math
import numbers
import re
from collections.abc import Iterator

LAMBDA_KEY = "global_context_broadcast_lambda"
DEFAULT_LAMBDA = 0.0
# "image" (default): one mean per image. "reference": the authors' code, which per family takes one mean
# over every image of a call or one per image (Family.reference_mean in agci/registry.py).
SCOPE_KEY = "global_context_broadcast_scope"
SCOPES = ("image", "reference")
# true: videos get AGCI too, one context per video (default: left alone, as in the reference)
VIDEOS_KEY = "global_context_broadcast_videos"
# The largest lambda accepted. The op adds lambda * (1 - cos) * g, and (1 - cos) reaches 2: below this bound that
# term stays under float16's largest value (65504) for mean-feature entries up to 32, and lambda * 2 is finite in
# every float type. Useful values are around 0.1 to 2; at 1000 every token is already ~the image mean.
MAX_LAMBDA = 1000.0
# A number as text: plain decimal or scientific notation (no "_" separators, no hex); "nan"/"inf" are read too,
# so that validate_lambda can name them.
_NUMBER = re.compile(r"[+-]?([0-9]+\.?[0-9]*|\.[0-9]+)([eE][+-]?[0-9]+)?|[+-]?(nan|inf|infinity)", re.IGNORECASE)


class NotANumberError(TypeError, ValueError):
    """A lambda that is not a number. A TypeError, and a ValueError too: the commands refuse it (exit 2) as they
    refuse other bad values, also when it comes from a checkpoint's config.json."""


def validate_lambda(value: object, *, name: str = LAMBDA_KEY) -> float:
    """Return ``value`` as a float after checking it is a finite number in [0, ``MAX_LAMBDA``] (-0.0 comes back
    as 0.0).

    Raises ``NotANumberError`` (a TypeError) for non-numbers (bools, strings, lists and dicts included) and
    ``ValueError`` for negative, NaN, infinite or too large values, naming the key and what to write instead.
    """
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise NotANumberError(
            f"{name} must be a real number >= 0 (e.g. 0.5), got {value!r} of type "
            f"{type(value).__name__}. Use 0 (or null) to turn AGCI off."
        )
    value = float(value)
    if math.isnan(value) or math.isinf(value):
        raise ValueError(f"{name} must be finite, got {value}. Use a value such as 0.5, or 0 to turn AGCI off.")
    if value < 0:
        raise ValueError(f"{name} must be >= 0, got {value}. Use 0 to turn AGCI off.")
    if value > MAX_LAMBDA:
        raise ValueError(
            f"{name} must be <= {MAX_LAMBDA:g}, got {value:g}: beyond that lambda * (1 - cos) * g overflows float16 "
            "and the image tokens are only their mean; use a value such as 0.5"
        )
    return value + 0.0  # -0.0 + 0.0 is 0.0: one zero, one folder name


def parse_lambda(text: str) -> float:
    """One lambda written as text (plain decimal or scientific notation), checked; ValueError otherwise. Stricter
    than ``float()``, which also reads "1_0" as 10."""
    text = str(text).strip()
    if not _NUMBER.fullmatch(text):
        raise ValueError(f"{text!r} is not a number")
    return validate_lambda(float(text))


def parse_lambdas(text: str) -> list[float]:
    """``"0,0.5,1"`` -> ``[0.0, 0.5, 1.0]``, each value checked and each given once (-0 is 0); ValueError names
    the bad one, or says that none was given."""
    values = [parse_lambda(part) for part in str(text).split(",") if part.strip()]
    if not values:
        raise ValueError(f"no lambda in {text!r}")
    return list(dict.fromkeys(values))


def format_lambda(lam: float) -> str:
    """Lambda as text that reads back as the same float (``float(format_lambda(x)) == x``): ``repr`` without
    a trailing ``.0``, so 0.5 -> "0.5", 1.0 -> "1", 0.1234567 -> "0.1234567" (``{:g}`` would give
    "0.123457"). Used in folder names, summary keys and arguments passed to other processes."""
    text = repr(float(lam) + 0.0)  # -0.0 is written "0"
    return text[:-2] if text.endswith(".0") else text


def read_lambda(config) -> float:
    """The checked lambda of a model config: 0 when the key is absent or null, else a number (``""``, ``false``,
    ``[]`` are refused like ``"0.5"``, not read as 0)."""
    value = getattr(config, LAMBDA_KEY, None)
    return DEFAULT_LAMBDA if value is None else validate_lambda(value)


def misplaced_lambda(config) -> tuple[str, object] | None:
    """(name, value) of a sub-config (``text_config``, ``vision_config``, ...) that carries a lambda other than 0
    while the top level has none: agci reads only the top level, so that value does nothing."""
    if getattr(config, LAMBDA_KEY, None) is not None:
        return None
    for name, sub in vars(config).items():
        value = vars(sub).get(LAMBDA_KEY) if hasattr(sub, "__dict__") and name.endswith("config") else None
        if value is not None and not (isinstance(value, numbers.Real) and value == 0):
            return name, value
    return None


def read_scope(config) -> str:
    """The checked scope of a model config: "image" when the key is absent or null."""
    scope = getattr(config, SCOPE_KEY, None)
    if scope is None:
        return "image"
    if scope == "batch":  # the old name, which was batch-wide for every family
        raise ValueError(
            f'{SCOPE_KEY} "batch" was renamed "reference" (the authors\' code, per family: batch-wide for some, '
            'per image for others; see reference_mean in agci/registry.py); set it to "reference" or "image"'
        )
    if scope not in SCOPES:
        raise ValueError(f"{SCOPE_KEY} must be one of {SCOPES}, got {scope!r}")
    return scope


def read_videos(config) -> bool:
    """Whether videos get AGCI: false when the key is absent or null, else it must be true or false."""
    value = getattr(config, VIDEOS_KEY, None)
    if value is None:
        return False
    if not isinstance(value, bool):
        raise ValueError(f"{VIDEOS_KEY} must be true or false, got {value!r}")
    return value


def write_lambda(config, value: object) -> float:
    """Check ``value`` and store it in ``config``; returns it as a float."""
    value = validate_lambda(value)
    setattr(config, LAMBDA_KEY, value)
    return value


@contextlib.contextmanager
def using_lambda(model, lam: float) -> Iterator[float]:
    """Run the block with ``model``'s lambda set to ``lam``, then put the previous value back (also when the
    block raises; a key that was absent is removed again).

    ``model`` is a VLM (patched or not, also inside PEFT or other wrappers that forward ``.config``) or its
    config. The patched model reads lambda from its config at every call, so one model serves a sweep::

        for lam in (0.0, 0.5):
            with agci.using_lambda(model, lam):
                logits = model(**inputs).logits
    """
    config = getattr(model, "config", model)
    had_key = LAMBDA_KEY in vars(config)
    previous = getattr(config, LAMBDA_KEY, None)
    value = write_lambda(config, lam)
    try:
        yield value
    finally:
        if had_key:
            setattr(config, LAMBDA_KEY, previous)
        else:
            with contextlib.suppress(AttributeError):
                delattr(config, LAMBDA_KEY)
