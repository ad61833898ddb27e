"""The family matrix: every model type of the installed transformers' causal-LM auto mapping,
built tiny with random weights, decoded with ARGS on each rgk loop and compared with the
naive oracle (`naive_args_generate`).

`tiny_config(model_type)` starts from the family's default config and shrinks it through
the usual attribute names (hidden size, layers, heads, experts, vocabulary, window), with a
short table of per-family overrides where the defaults need more.  `run_family` returns one
row: built or not (why), refused (the refusal's message) or, per loop and reward kind,
exact or not.  Used by tests/test_family_matrix.py and `python tests/_families.py`
(prints the table, markdown with --md).
"""
from __future__ import annotations

import sys
import time
import traceback
import warnings

import torch

VOCAB = 96
WINDOW = 8            # sliding windows shorter than every prompt
PROMPT_LENS = (9, 14, 20)
NEW = 8
K, W = 4, 1.0
MAX_PARAMS = 6_000_000

# shrunk through whichever of these names a config has
SIZES = {
    ("hidden_size", "n_embd", "d_model", "dim", "model_dim"): 32,
    ("num_hidden_layers", "n_layer", "num_layers", "n_layers"): 2,
    ("num_attention_heads", "n_head", "num_heads", "n_heads"): 4,
    ("num_key_value_heads", "num_kv_heads", "n_kv_heads", "multi_query_group_num"): 2,
    ("intermediate_size", "n_inner", "ffn_dim", "d_ff", "ffn_hidden_size"): 64,
    ("head_dim", "kv_channels"): 8,
    ("rotary_dim",): 4,             # GPT-J / CodeGen: the rotated part of a head of 8
    ("vocab_size",): VOCAB,
    ("max_position_embeddings", "n_positions", "n_ctx", "seq_length", "max_seq_len"): 128,
    ("num_experts", "num_local_experts", "n_routed_experts", "moe_num_experts"): 4,
    ("num_experts_per_tok", "moe_topk", "top_k"): 2,
    ("moe_intermediate_size", "expert_intermediate_size", "shared_expert_intermediate_size"): 32,
    ("sliding_window", "window_size"): WINDOW,
    # multi-head latent attention (DeepSeek-style)
    ("kv_lora_rank", "q_lora_rank"): 16,
    ("qk_rope_head_dim", "qk_nope_head_dim", "v_head_dim"): 8,
    # encoder-decoder and per-stack sizes
    ("encoder_layers", "decoder_layers"): 1,
    ("encoder_attention_heads", "decoder_attention_heads"): 4,
    ("encoder_ffn_dim", "decoder_ffn_dim"): 64,
}
# per family: what the generic shrink cannot guess
OVERRIDES = {
    "qwen2": {"use_sliding_window": True, "max_window_layers": 1},
    "qwen3": {"use_sliding_window": True, "max_window_layers": 1},
    "smollm3": {"use_sliding_window": True},
    "gemma2": {"query_pre_attn_scalar": 8, "attn_logit_softcapping": 50.0, "final_logit_softcapping": 30.0},
    "gemma3_text": {"query_pre_attn_scalar": 8, "sliding_window_pattern": 2},
    "cohere": {"logit_scale": 0.5},
    "granite": {"logits_scaling": 4.0},
    "falcon": {"new_decoder_architecture": False, "multi_query": True, "alibi": False},
    "gpt_neox": {"rotary_pct": 0.5},
    # defaults that do not build at a tiny size (validators, a sub-config transformers reads a
    # field from that it does not define, per-layer-kind RoPE tables without the kind used)
    "dbrx": {"attn_config": {"kv_n_heads": 2, "rope_theta": 10000.0, "clip_qkv": 8.0},
             "ffn_config": {"ffn_hidden_size": 64, "moe_num_experts": 4, "moe_top_k": 2}},
    "dots1": {"n_shared_experts": 1},
    # a text config that carries its vision and audio towers' configs (Phi-4-multimodal)
    "phi4_multimodal": {"vision_config": {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1,
                                          "num_attention_heads": 4},
                        "audio_config": {"hidden_size": 32, "intermediate_size": 64, "num_blocks": 1,
                                         "num_attention_heads": 4, "depthwise_separable_out_channel": 32,
                                         "ext_pw_out_channel": 32, "nemo_conv_channels": 32}},
    "lfm2_moe": {"layer_types": ["conv", "full_attention"]},
    "granitemoehybrid": {"mamba_n_heads": 4, "mamba_d_head": 16},
    "bamba": {"mamba_n_heads": 4, "mamba_d_head": 16},
    "mamba2": {"num_heads": 8},
    "kolibri1_1": {"head_dim": 16, "index_num_heads": 2},
    "zaya": {"num_experts_per_tok": 1},
    "cohere_compass_text": {"rope_parameters": {"full_attention": {"rope_type": "default", "rope_theta": 10000.0},
                                                "sliding_attention": {"rope_type": "default", "rope_theta": 10000.0}}},
    # Llama 3.2 Vision: a cross-attention layer between two self-attention ones (text-only, it is skipped)
    "mllama_text_model": {"num_hidden_layers": 3, "cross_attention_layers": [1]},
    "gpt_neo": {"attention_types": [[["global", "local"], 1]]},
    # KV sharing: the last two layers reuse the keys/values of the last earlier layer of their kind
    "gemma4_text": {"num_hidden_layers": 4, "num_kv_shared_layers": 2, "hidden_size_per_layer_input": 8,
                    "vocab_size_per_layer_input": VOCAB, "layer_types": ["sliding_attention", "full_attention"] * 2},
    "gemma3n_text": {"num_hidden_layers": 4, "num_kv_shared_layers": 2, "hidden_size_per_layer_input": 8,
                     "vocab_size_per_layer_input": VOCAB, "layer_types": ["sliding_attention", "full_attention"] * 2,
                     "activation_sparsity_pattern": [0.0] * 4, "altup_num_inputs": 2, "laurel_rank": 4,
                     "intermediate_size": [64] * 4},
}


def _layer_types(cfg, n: int, default=None) -> None:
    """Resize a config's per-layer list to n layers, keeping at least one of each kind (of the
    family's default config `default` too, where the tiny config derived fewer kinds)."""
    lt = getattr(cfg, "layer_types", None)
    if not (isinstance(lt, (list, tuple)) and lt):
        return
    kinds = list(dict.fromkeys(lt))
    try:
        dlt = getattr(default, "layer_types", None) if default is not None else None
    except Exception:  # noqa: BLE001
        dlt = None
    missing = [k for k in dict.fromkeys(dlt or ()) if k not in kinds]
    if len(lt) == n and not missing:
        return
    kinds = list(dict.fromkeys(list(dlt or ()) or kinds)) if missing else kinds
    try:
        if len(kinds) > n and hasattr(cfg, "num_hidden_layers"):
            n = cfg.num_hidden_layers = len(kinds)
        cfg.layer_types = _cycled(kinds, n)
    except AttributeError:          # derived from another field (a property without a setter)
        pass


def _resized_layer_types(cfg, kw: dict) -> None:
    """kw["layer_types"]: `cfg`'s per-layer list resized to kw's layer count, where the
    config validates the two against each other when it is built."""
    n = kw.get("num_hidden_layers")
    if isinstance(getattr(type(cfg), "layer_types", None), property):    # derived from another field
        return
    lt = getattr(cfg, "layer_types", None)
    if n is not None and isinstance(lt, (list, tuple)) and lt and len(lt) != n and "layer_types" not in kw:
        kw["layer_types"] = _cycled(list(dict.fromkeys(lt)), n)


def _cycled(kinds: list, n: int) -> list:
    """n layer kinds, cycling through `kinds` (each kind at least once when n >= len(kinds))."""
    return [kinds[i % len(kinds)] for i in range(n)]


def _size_kwargs(cfg) -> dict:
    """The SIZES entries that config object `cfg` has (scalars only; read-only properties skipped)."""
    kw = {}
    for names, v in SIZES.items():
        for n in names:
            prop = getattr(type(cfg), n, None)
            if isinstance(prop, property) and prop.fset is None:      # derived (e.g. Falcon's head_dim)
                continue
            try:
                present = hasattr(cfg, n) and not isinstance(getattr(cfg, n), (list, dict))
            except Exception:  # noqa: BLE001 - a per-layer value (transformers' per-layer configs): set it globally
                present = True
            if present:
                kw[n] = v
    if "kv_lora_rank" in kw and "num_key_value_heads" in kw:     # MLA: every head has its own K/V
        kw["num_key_value_heads"] = kw.get("num_attention_heads", 4)
    return kw


def _sub_configs(base) -> dict:
    """{attribute: sub-config} of a composite config (text, vision, audio ...)."""
    from transformers import PretrainedConfig
    out = {}
    for n in getattr(type(base), "sub_configs", {}) or {}:
        sub = getattr(base, n, None)
        if isinstance(sub, PretrainedConfig):
            out[n] = sub
    return out


def tiny_config(model_type: str, all_kinds: bool = True):
    from transformers import CONFIG_MAPPING
    cls = CONFIG_MAPPING[model_type]
    try:
        base = cls()
    except Exception:  # noqa: BLE001 - a default its own validator rejects: start from the overrides
        base = cls(**OVERRIDES.get(model_type, {}))
    text = base.get_text_config() if hasattr(base, "get_text_config") else base
    special = dict(pad_token_id=0, eos_token_id=1, bos_token_id=2, tie_word_embeddings=False)
    subs = _sub_configs(base) if text is not base else {}
    if subs:
        # a composite (vision-language) config: shrink each part through its own class; the text
        # part gets the family overrides and the special tokens
        kw = {}
        for name, sub in subs.items():
            skw = _size_kwargs(sub)
            if sub is text:
                skw.update(OVERRIDES.get(getattr(sub, "model_type", ""), {}))
                skw.update(special)
            try:
                kw[name] = type(sub)(**skw)
            except TypeError:
                kw[name] = type(sub)(**{k: v for k, v in skw.items() if k in special or hasattr(sub, k)})
        kw.update(OVERRIDES.get(model_type, {}))
        try:
            cfg = cls(**kw, **special)
        except TypeError:
            cfg = cls(**kw)
        text = cfg.get_text_config()
        n_layers = getattr(text, "num_hidden_layers", None)
        if n_layers is not None:
            _layer_types(text, n_layers, default=base.get_text_config() if all_kinds else None)
        return cfg
    kw = _size_kwargs(text)
    kw.update(OVERRIDES.get(model_type, {}))
    kw.update(special)
    try:
        cfg = cls(**kw)
    except Exception:  # noqa: BLE001 - a validator that checks the layer count against layer_types
        _resized_layer_types(text, kw)
        if "layer_types" not in kw:
            raise
        cfg = cls(**kw)
    for n in ("num_hidden_layers", "n_layer", "num_layers"):
        if hasattr(cfg, n):
            _layer_types(cfg, getattr(cfg, n), default=text if all_kinds else None)
            break
    return cfg


def prompts(seed: int = 0, lens=PROMPT_LENS):
    """A left-padded batch of random prompts of `lens` tokens (ids >= 3: no special token)."""
    g = torch.Generator().manual_seed(seed)
    T = max(lens)
    ids = torch.zeros(len(lens), T, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for b, n in enumerate(lens):
        ids[b, T - n:] = torch.randint(3, VOCAB, (n,), generator=g)
        mask[b, T - n:] = 1
    return ids, mask


def build(model_type: str, seed: int = 0):
    """The tiny model: with every layer kind of the family's default config, or, where the
    tiny sizes leave a kind unbuildable, with the kinds its own config derives."""
    try:
        return _build(tiny_config(model_type), seed)
    except Exception:  # noqa: BLE001
        return _build(tiny_config(model_type, all_kinds=False), seed)


def _build(cfg, seed: int):
    from transformers import AutoModelForCausalLM
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with torch.device("meta"):           # size it first: a config the shrink missed may be huge
            n = sum(p.numel() for p in AutoModelForCausalLM.from_config(cfg).parameters())
        if n > MAX_PARAMS:
            raise ValueError(f"the tiny config still has {n / 1e6:.1f}M parameters (the shrink missed a size)")
        torch.manual_seed(seed)
        model = AutoModelForCausalLM.from_config(cfg).eval()
    return model


def _same(a, b) -> bool:
    """Same tokens; rewards and scores to float tolerance (fp32 sums in another order)."""
    return a.sequences.shape == b.sequences.shape and torch.equal(a.sequences, b.sequences) and \
        torch.allclose(a.rewards, b.rewards, atol=1e-3, rtol=1e-3, equal_nan=True) and \
        torch.allclose(a.scores, b.scores, atol=1e-3, rtol=1e-3, equal_nan=True)


def _near_tie(lm, src, ids, mask, ref, out, tol: float = 1e-3) -> bool:
    """Where `out` first leaves the oracle's tokens, whether the two tokens' oracle scores
    are within `tol` (a tie at float precision: either choice is exact ARGS);
    benchmarks/families_check.py's rule."""
    from pathlib import Path
    bench = str(Path(__file__).resolve().parents[1] / "benchmarks")
    if bench not in sys.path:
        sys.path.insert(0, bench)
    from families_check import _first_split, _tie
    if _first_split(out.sequences, ref.sequences, ids.shape[1]) is None:
        return False
    return _tie(lm, src, ref.sequences, out.sequences, ids, mask, K, W, tol)[0]


LOOPS = ("dynamic", "eager", "processor", "compiled")


def run_family(model_type: str, loops=LOOPS, reward_kinds=("shared", "model")) -> dict:
    """{'family', 'status': 'exact'|'refused'|'WRONG'|'crash'|'unbuilt', 'detail', 'loops': {...}}"""
    import rgk.args.decode
    from rgk.args import RewardModel, args_generate
    from rgk.args.search import naive_args_generate
    row = {"family": model_type, "loops": {}, "detail": ""}
    t0 = time.time()
    try:
        lm = build(model_type, 0)
        d = lm.get_output_embeddings().weight.shape[1] if lm.get_output_embeddings() is not None else None
        if d is None:
            raise ValueError("no output head")
        head = reward_head(d)
        rm = build(model_type, 1) if "model" in reward_kinds else None
    except Exception as e:  # noqa: BLE001
        row.update(status="unbuilt", detail=f"{type(e).__name__}: {str(e).splitlines()[0][:160]}")
        return row
    ids, mask = prompts()
    kw = dict(k=K, w=W, max_new_tokens=NEW, eos_token_id=-1, pad_token_id=0)
    try:
        sources = {"shared": head, "model": RewardModel(rm, head) if rm is not None else None}
    except ValueError as e:     # a head on the final hidden state that is not config.hidden_size wide
        row.update(status="refused", detail=str(e).splitlines()[0][:200])
        return row
    status = "exact"
    for kind in reward_kinds:
        src = sources[kind]
        try:        # rgk's refusal comes before any work: ask it first, skip the oracle then
            rgk.args.decode.check_family(lm)
            if kind == "model":
                rgk.args.decode.check_family(rm, "reward")
        except ValueError as e:
            row.update(status="refused", detail=str(e).splitlines()[0][:240])
            row["loops"].update({f"{kind}/{lp}": "refused" for lp in loops})
            return row
        try:
            ref = naive_args_generate(lm, ids, mask, reward=src, **kw)
        except Exception as e:  # noqa: BLE001 - the model cannot run this batch at all: rgk must refuse it
            oracle = f"{type(e).__name__}: {str(e).splitlines()[0][:120]}" if str(e) else type(e).__name__
            try:
                args_generate(lm, ids, mask, reward=src, loop=loops[0], **kw)
                row.update(status="oracle-fails", detail=f"the model's own forward fails ({oracle}); rgk ran")
            except Exception as e2:  # noqa: BLE001
                refused = isinstance(e2, ValueError) and "rgk cannot decode it exactly" in str(e2)
                row.update(status="refused" if refused else "oracle-fails",
                           detail=(str(e2).splitlines()[0][:200] if refused else
                                   f"the model's own forward fails on a padded batch ({oracle})"))
            return row
        for loop in loops:
            key = f"{kind}/{loop}"
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    if loop == "compiled":       # a fresh dynamo cache: the suite compiles many models
                        torch._dynamo.reset()
                    if loop == "processor":
                        out = _processor(lm, RewardModel(lm, head) if kind == "shared" else src, ids, mask)
                        ok = torch.equal(out.sequences, ref.sequences)
                    else:
                        out = args_generate(lm, ids, mask, reward=src, loop=loop, **kw)
                        ok = _same(out, ref)
                if not ok and _near_tie(lm, src if kind == "model" else _shared_src(lm, head), ids, mask, ref, out):
                    row["loops"][key] = "exact (tie)"
                else:
                    row["loops"][key] = "exact" if ok else "WRONG"
                    if not ok:
                        status = "WRONG"
            except (ValueError, RuntimeError, TypeError, NotImplementedError) as e:
                msg = str(e).splitlines()[0] if str(e) else type(e).__name__
                refused = "model_type" in msg or "not supported" in msg or "cannot" in msg
                if loop == "compiled" and msg.startswith("loop: 'compiled' cannot trace"):
                    refused = True        # a clear refusal of that loop for that family
                row["loops"][key] = "refused" if refused else "crash"
                if not row["detail"]:
                    tb = traceback.extract_tb(e.__traceback__)[-1]
                    row["detail"] = f"{type(e).__name__}: {msg[:200]} [{tb.filename.split('/')[-1]}:{tb.lineno}]"
                if status == "exact":
                    status = "refused" if refused else "crash"
                elif not refused:
                    status = "crash" if status != "WRONG" else status
    row["status"] = status
    row["seconds"] = round(time.time() - t0, 1)
    return row


def reward_head(d: int):
    """A linear reward head on hidden size d, its weights scaled so that rewards move the
    choice away from the LM's own."""
    from rgk.models import RewardHead, RewardHeadConfig
    torch.manual_seed(1)
    head = RewardHead(RewardHeadConfig(d, "linear", base_model="tiny"))
    with torch.no_grad():
        for p in head.parameters():
            p.mul_(8)
    return head


def _processor(lm, source, ids, mask):
    """ARGS as a LogitsProcessor inside the model's own generate (greedy, no EOS)."""
    import types
    from transformers import LogitsProcessorList
    from rgk.args import ARGSLogitsProcessor
    proc = ARGSLogitsProcessor(source, k=K, w=W, attention_mask=mask)
    lm.generation_config.eos_token_id = None
    out = lm.generate(ids, attention_mask=mask, logits_processor=LogitsProcessorList([proc]), max_new_tokens=NEW,
                      min_new_tokens=NEW, do_sample=False, pad_token_id=0, eos_token_id=None)
    return types.SimpleNamespace(sequences=out)


def _shared_src(lm, head):
    from rgk.args.search import check_source
    return check_source(head, lm)


def families() -> list[str]:
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES
    return sorted(MODEL_FOR_CAUSAL_LM_MAPPING_NAMES)


def main(argv) -> None:
    """python tests/_families.py [families...] [--compiled | --only-compiled] [--shared-only | --model-only]
    [--jsonl PATH]

    --jsonl appends one JSON row per family to PATH and skips the families PATH already
    holds, so a long run (the compiled loop on every family) can stop and resume."""
    import json
    from pathlib import Path
    jsonl = None
    if "--jsonl" in argv:
        i = argv.index("--jsonl")
        jsonl = Path(argv[i + 1])
        argv = argv[:i] + argv[i + 2:]
    names = [a for a in argv if not a.startswith("-")] or families()
    loops = LOOPS if "--compiled" in argv else ("dynamic", "eager", "processor")
    if "--only-compiled" in argv:
        loops = ("compiled",)
    kinds = ("shared",) if "--shared-only" in argv else ("model",) if "--model-only" in argv else ("shared", "model")
    done = set()
    if jsonl is not None and jsonl.exists():
        done = {json.loads(line)["family"] for line in jsonl.read_text().splitlines() if line.strip()}
    for mt in names:
        if mt in done:
            continue
        r = run_family(mt, loops=loops, reward_kinds=kinds)
        loops_s = " ".join(f"{k}={v}" for k, v in r["loops"].items())
        print(f"{mt:<28} {r['status']:<9} {r.get('seconds', '')!s:>5}s {loops_s} {r['detail']}", flush=True)
        if jsonl is not None:
            with jsonl.open("a") as f:
                f.write(json.dumps(r) + "\n")


if __name__ == "__main__":
    main(sys.argv[1:])
