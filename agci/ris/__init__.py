"""Mid-layer zero-shot referring image segmentation with CLIP-like encoders (the B2G companion).

A spatial map from a middle layer's patch tokens, clustered into regions, picks among mask proposals
together with the final-layer global score of each mask. ``agci ris`` evaluates on the RefCOCO family.
"""
