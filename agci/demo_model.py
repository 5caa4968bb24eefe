"""The model ``agci demo`` builds: a small LLaVA configuration that builds offline in a second (it is an
architecture, not a config key, so it is not in :mod:`agci.configs`).

CLIP vision tower at 224 px with 14 px patches (a 16 x 16 grid, 256 visual tokens per image, as
LLaVA-1.5 has 576 at 336 px) and a two-layer Llama; random weights.
"""

TINY_LLAVA = {
    "vision_config": {
        "model_type": "clip_vision_model", "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2,
        "num_attention_heads": 2, "image_size": 224, "patch_size": 14, "projection_dim": 64,
    },
    "text_config": {
        "model_type": "llama", "vocab_size": 128, "hidden_size": 64, "intermediate_size": 128,
        "num_hidden_layers": 2, "num_attention_heads": 2, "num_key_value_heads": 2,
        "max_position_embeddings": 512, "pad_token_id": 0, "bos_token_id": 1, "eos_token_id": 2,
    },
    "image_token_index": 100,
    "image_seq_length": 256,
    "vision_feature_layer": -2,
    "vision_feature_select_strategy": "default",
    "projector_hidden_act": "gelu",
}  # fmt: skip
GRID = 16
# CLIP's normalisation, shared by this demo model and the embedded probe model (agci.bias.training.model)
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
