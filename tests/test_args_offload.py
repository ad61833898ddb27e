"""Large models across devices: ARGS on an LM (and a reward model) dispatched with accelerate's
big-model inference — here CPU + disk offload, hooks active, weights on "meta" until each
layer runs — equals the undispatched models on every loop; the fork cache's per-layer
placement from a device map naming several devices; the memory check that refuses, before
allocating, a cache that cannot fit."""
from __future__ import annotations

import pytest
import torch

import _families as F
from rgk.args import ARGSLogitsProcessor, RewardModel, args_generate
from rgk.args import cache as fc
from rgk.models import RewardHead, RewardHeadConfig

KW = dict(k=4, w=1.0, max_new_tokens=6, eos_token_id=-1, pad_token_id=0)


def _dispatched(model_type, seed, tmp_path):
    from accelerate import dispatch_model
    dm = {"model.embed_tokens": "cpu", "model.layers.0": "cpu", "model.layers.1": "disk", "model.norm": "cpu",
          "model.rotary_emb": "cpu", "lm_head": "disk"}
    return dispatch_model(F.build(model_type, seed), device_map=dm, offload_dir=str(tmp_path / f"off{seed}"))


@pytest.mark.parametrize("model_type", ["qwen3", "gemma2"])
def test_offloaded_models_decode_like_the_undispatched_ones(model_type, tmp_path):
    lm, rm = F.build(model_type, 0), F.build(model_type, 1)
    torch.manual_seed(1)
    head = RewardHead(RewardHeadConfig(lm.config.hidden_size, "linear", base_model="tiny"))
    ids, mask = F.prompts()
    lm_off, rm_off = _dispatched(model_type, 0, tmp_path), _dispatched(model_type, 1, tmp_path)
    assert "disk" in lm_off.hf_device_map.values()
    assert any(p.device.type == "meta" for p in lm_off.parameters())        # offloaded for real
    for loop in ("dynamic", "eager"):
        for src, src_off in ((head, head), (RewardModel(rm, head), RewardModel(rm_off, head))):
            want = args_generate(lm, ids, mask, reward=src, loop=loop, **KW)
            got = args_generate(lm_off, ids, mask, reward=src_off, loop=loop, **KW)
            assert torch.equal(got.sequences, want.sequences), (loop, type(src).__name__)
            torch.testing.assert_close(got.rewards, want.rewards, atol=1e-4, rtol=1e-4)
    # the processor inside the dispatched LM's own generate, reward model offloaded too
    outs = []
    for m, r in ((lm, rm), (lm_off, rm_off)):
        proc = ARGSLogitsProcessor(RewardModel(r, head), k=4, w=1.0, attention_mask=mask)
        m.generation_config.eos_token_id = None
        outs.append(m.generate(ids, attention_mask=mask, logits_processor=[proc], max_new_tokens=6, min_new_tokens=6,
                               do_sample=False, pad_token_id=0, eos_token_id=None))
    assert torch.equal(outs[0], outs[1])


def test_the_cache_follows_a_device_map_that_names_several_devices():
    lm = F.build("llama", 0)
    lm.hf_device_map = {"model.embed_tokens": 0, "model.layers.0": 0, "model.layers.1": 1, "model.norm": 1,
                        "lm_head": 1}
    assert fc._layer_devices(lm, 2) == [torch.device("cuda", 0), torch.device("cuda", 1)]
    need = fc.fork_cache_bytes(lm, 4, 100, 10)
    # 2 (K, V) x batch 4 x 2 kv heads x (100 + 10) x head size 8 x 4 bytes, one layer per device
    per_layer = 2 * 4 * 2 * 110 * 8 * 4
    assert need == {torch.device("cuda", 0): per_layer, torch.device("cuda", 1): per_layer}
    lm.hf_device_map = {"model.embed_tokens": "cpu", "model.layers.0": "disk", "model.layers.1": "cuda:1",
                        "lm_head": "cpu"}
    assert fc._layer_devices(lm, 2) == [torch.device("cpu"), torch.device("cuda", 1)]   # disk: runs where it executes


def test_cache_size_follows_per_layer_head_sizes_and_kv_sharing():
    """Gemma 4: full-attention layers have their own head size (a per-layer config) and the
    last layers reuse earlier layers' keys and values (they allocate nothing)."""
    lm = F.build("gemma4_text", 0)
    cfg = lm.config
    n, shared = cfg.num_hidden_layers, cfg.num_kv_shared_layers
    assert shared > 0
    dims = [cfg.per_layer_config[i].head_dim for i in range(n - shared)]
    assert len(set(dims)) > 1                                  # the tiny config really varies per layer
    want = sum(2 * 3 * cfg.per_layer_config[i].num_key_value_heads * (40 + 4) * d * 4 for i, d in enumerate(dims))
    assert fc.fork_cache_bytes(lm, 3, 40, 4) == {torch.device("cpu"): want}
    cache = fc.ForkCache.for_model(lm, 3, 40, 4)
    assert cache.silent_layers == frozenset(range(n - shared, n))
    ids, mask = F.prompts()
    cache.extend(lm.get_decoder(), ids, mask)                  # the shared layers write nothing: no error
    allocated = 4 * (sum(layer.keys.numel() + layer.values.numel() for layer in cache.layers
                         if layer.is_initialized and not layer.shared) + cache._kv.numel())
    assert not any(layer.is_initialized for layer in cache.layers[n - shared:])
    # the all-layer buffer holds a slot per writing layer at the first layer's head size; layers of
    # another size keep their own buffers (their unused small slots are the only excess)
    assert want <= allocated <= 1.05 * want


def test_cross_attention_layers_of_a_text_only_decode_keep_no_cache():
    """Llama 3.2 Vision (MllamaForCausalLM, whose get_decoder() is itself): a cross-attention
    layer between two self-attention ones is skipped without images; it allocates nothing, the
    layers after it take the next slot of the shared buffer, and a write to it is an error."""
    from rgk import hf
    lm = F.build("mllama", 0)
    cfg = lm.config.get_text_config()
    assert list(cfg.cross_attention_layers) == [1] and cfg.num_hidden_layers == 3
    assert lm.get_decoder() is lm and hf.decoder(lm) is lm.model
    assert fc.silent_layers(cfg) == (1,)
    d = cfg.hidden_size // cfg.num_attention_heads
    per_layer = 2 * 3 * cfg.num_key_value_heads * (40 + 4) * d * 4
    assert fc.fork_cache_bytes(lm, 3, 40, 4) == {torch.device("cpu"): 2 * per_layer}
    cache = fc.ForkCache.for_model(lm, 3, 40, 4)
    ids, mask = F.prompts()
    cache.extend(hf.decoder(lm), ids, mask)
    assert [layer.is_initialized for layer in cache.layers] == [True, False, True]
    assert cache._kv.shape[1] == 2 * 2 * cfg.num_key_value_heads           # two writing layers
    assert cache.layers[2].keys.data_ptr() == cache._kv[:, 2 * cfg.num_key_value_heads].data_ptr()
    k = torch.zeros(3, cfg.num_key_value_heads, 1, d)
    with pytest.raises(RuntimeError, match="layer 1 wrote keys/values"):
        cache.layers[1].update(k, k)


def test_a_cache_that_cannot_fit_is_refused_before_any_work(monkeypatch):
    lm = F.build("llama", 0)
    torch.manual_seed(1)
    head = RewardHead(RewardHeadConfig(lm.config.hidden_size, "linear", base_model="tiny"))
    ids, mask = F.prompts()
    calls = []
    lm.get_decoder().register_forward_pre_hook(lambda *a: calls.append(1))
    monkeypatch.setattr(fc, "_free_bytes", lambda dev: 1000)
    fc_probe = __import__("rgk.args.decode", fromlist=["_PROBED"])._PROBED
    fc_probe[lm] = None                       # the family probe (its own tiny forward) already done
    for loop in ("dynamic", "eager"):
        with pytest.raises(ValueError, match=r"^max_cache_len: the fork cache for batch 3, capacity 26 \+ 4 "
                                             r"candidate slots needs .* GiB on cpu \(.* MiB per layer, 2 layers "
                                             r"there\) but 0.00 GiB is free"):
            args_generate(lm, ids, mask, reward=head, loop=loop, **KW)
    assert calls == []
