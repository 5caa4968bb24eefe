"""The embedded model's training script runs (a few steps, tiny pool), with and without the alignment loss
and the curriculum."""

import json

import pytest

from agci.bias.training.embedded import train


@pytest.mark.parametrize(("align", "curriculum"), [(0.0, 0.0), (1.0, 0.5)])
def test_training_script_runs_and_saves_a_loadable_checkpoint(tmp_path, align, curriculum):
    from transformers import AutoProcessor, LlavaForConditionalGeneration

    record = train(tmp_path, steps=4, batch_size=4, lr=1e-3, seed=0, pool=18, agci_lambda=0.5,
                   align_weight=align, curriculum=curriculum)  # fmt: skip
    assert record["steps_done"] == 4 and record["align_weight"] == align
    assert set(record["held_out_accuracy_by_cell"]) == {"lambda_0", "lambda_0.5"}
    written = json.loads((tmp_path / "training.json").read_text())
    assert written["curriculum"] == curriculum and written["agci_from"] == 0.5
    steps_logged = [entry["objects_up_to"] for entry in written["loss_log"]]
    assert steps_logged[0] == (1 if curriculum else 9) and steps_logged[-1] == 9
    model = LlavaForConditionalGeneration.from_pretrained(tmp_path)
    assert (
        AutoProcessor.from_pretrained(tmp_path).tokenizer.convert_tokens_to_ids("Yes")
        < model.config.text_config.vocab_size
    )
