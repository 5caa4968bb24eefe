"""Model patches (per family) and the transformers-version facts they rely on (``versions``)."""
