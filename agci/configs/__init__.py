"""The config key that turns AGCI on, and the validation of its value."""

from __future__ import annotations

import math
import numbers

LAMBDA_KEY = "global_context_broadcast_lambda"
DEFAULT_LAMBDA = 0.0


def validate_lambda(value: object, *, name: str = LAMBDA_KEY) -> float:
    """Return ``value`` as a float after checking it is a finite number >= 0.

    Raises ``TypeError`` for non-numbers (bools and strings included) and ``ValueError`` for
    negative, NaN or infinite values, naming the key and what to write instead.
    """
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(
            f"{name} must be a real number >= 0 (e.g. 0.5), got {value!r} of type "
            f"{type(value).__name__}. Use 0 to turn AGCI off."
        )
    value = float(value)
    if math.isnan(value) or math.isinf(value):
        raise ValueError(f"{name} must be finite, got {value}. Use a value such as 0.5, or 0 to turn AGCI off.")
    if value < 0:
        raise ValueError(f"{name} must be >= 0, got {value}. Use 0 to turn AGCI off.")
    return value
