"""Model patches: the family table (``families``), the wrapping of ``get_image_features`` (``core``) and
``AutoAGCIModelForImageTextToText`` (``auto``)."""
