"""How the shipped probe assets were made: the embedded tiny VLM (``embedded``, its architecture in ``model``) and
its LoRA adapters with and without AGCI (``lora``), from synthetic canvases (``canvases``). A floor of its own:
nothing of the runtime imports it (the paths and loaders of what it made are in :mod:`agci.bias.shipped`)."""
