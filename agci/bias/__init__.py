"""Spatial-bias probes of the AGCI paper: probe sets, fast scoring, summaries and heatmaps.

``agci probe`` is the command-line entry; :func:`agci.bias.runner.run_probe` the Python one.
"""
