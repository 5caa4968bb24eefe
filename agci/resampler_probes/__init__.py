"""Diagnostic probes for vision-language resamplers (the "Lost in Space" study of Q-Formers).

Features of every Q-Former layer are extracted once and cached (safetensors, memory-mapped); linear
and SwiGLU probes then learn box regression (RefCOCOg), spatial-caption verification (VSR) and Region
Cell Matching (RCM) from them. ``agci resampler-probe`` runs the steps.
"""
