"""The transformers engine: finding a family's classes (``discovery``), the hook kinds and their wrappers
(``hooks``), putting them on and off (``lifecycle``), ``AutoAGCIModelForImageTextToText`` (``auto``); ``core`` keeps
the old single namespace. The family records and the grouping rules are engine-neutral: :mod:`agci.registry`,
:mod:`agci.grouping`."""
