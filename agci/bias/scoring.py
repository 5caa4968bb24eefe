"""The old name of :mod:`agci.bias.model_runs` (running the model over probe items), kept because the README
named it: ``agci.bias.scoring`` is that module itself, so ``agci.bias.scoring.load_probe_vlm`` and the rest
still import. New code imports :mod:`agci.bias.model_runs`."""

import sys

from . import model_runs

sys.modules[__name__] = model_runs
