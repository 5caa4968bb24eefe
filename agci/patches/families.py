"""The family registry moved to :mod:`agci.registry` (engine-neutral: transformers and vLLM read it); this name
keeps ``from agci.patches.families import FAMILIES`` working."""

from ..registry import (  # noqa: F401
    FAMILIES,
    GROUPINGS,
    HOOKS,
    SUPPORTED_MODEL_TYPES,
    Broken,
    Family,
    broken_notes,
    markdown_table,
    table_rows,
    text_table,
)
