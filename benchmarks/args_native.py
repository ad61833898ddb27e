"""ARGS end to end, every way in, one run: HF greedy `generate`; naive ARGS; the processor
inside `generate`; rgk's native loop with a separate reward model, with the shared head,
and plain decoding (vanilla); plus the Python (dynamic) loop and the compute floor, all
measured in the same process, one after another.

The compute floor is what one generated token cannot cost less than: the model forwards
against the prefix cache (mid-generation, prefix = prompt + half the new tokens; each
with the lm_head) — a k-token forward of the LM for the shared head, a 1-token LM
forward plus a k-token reward-model forward for a separate reward model, a 1-token
forward for plain decoding — plus each model's prompt prefill spread over the new tokens.

    python benchmarks/args_native.py                       # CPU: the real SmolLM2, B 1 and 4
    python benchmarks/args_native.py --device cuda --shapes smollm2,llama1b --batch 1,8 --prompt 128,1024 \\
        --new 128 --random-weights                         # GPU (gpu_check.sh runs a quick subset)

Writes <out>/args_native.json, .md and .png (default benchmarks/results/).  Medians of
`--repeats` timed runs after one warm-up; ms per generated token.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from transformers import LlamaConfig, LlamaForCausalLM, LogitsProcessorList  # noqa: E402

from rgk.args import ARGSLogitsProcessor, ForkCache, RewardModel, args_generate, naive_args_generate  # noqa: E402
from rgk.args.decode import vanilla_generate  # noqa: E402
from rgk.models import RewardHead, RewardHeadConfig  # noqa: E402

SHAPES = {
    "smollm2": dict(vocab_size=49152, hidden_size=576, intermediate_size=1536, num_hidden_layers=30,
                    num_attention_heads=9, num_key_value_heads=3, head_dim=64, tie_word_embeddings=True),
    "llama1b": dict(vocab_size=128256, hidden_size=2048, intermediate_size=8192, num_hidden_layers=16,
                    num_attention_heads=32, num_key_value_heads=8, head_dim=64, tie_word_embeddings=True),
}


def load(shape: str, random_weights: bool, device, dtype):
    if not random_weights and shape == "smollm2":
        from rgk.models import load_model
        m, _ = load_model(dtype=dtype, device=device)
        return m, "real SmolLM2-135M-Instruct"
    torch.manual_seed(0)
    cfg = LlamaConfig(max_position_embeddings=8192, rms_norm_eps=1e-5, rope_theta=100000.0, bos_token_id=1,
                      eos_token_id=2, pad_token_id=2, **SHAPES[shape])
    cfg._attn_implementation = "sdpa"
    with torch.device(device):
        m = LlamaForCausalLM(cfg).to(dtype).eval()
    return m, f"random ({shape} shape)"


def sync(dev):
    if dev.type == "cuda":
        torch.cuda.synchronize()


def timed(fn, dev, repeats):
    fn()
    sync(dev)
    ts = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        sync(dev)
        ts.append(time.perf_counter() - t0)
    return statistics.median(ts)


@torch.no_grad()
def floor_ms(model, rm, ids, mask, k, n_new, dev, repeats):
    """(k-token LM forward, 1-token LM forward, k-token RM forward) against a prefix cache
    holding the prompt + n_new/2 tokens, and the prompt's prefill forward, in ms."""
    B, T = ids.shape
    half = max(1, n_new // 2)
    out = {}

    def prefill():
        c = ForkCache.for_model(model, B, T + 1, 1)
        c.extend(model.get_decoder(), ids, mask)
    out["prefill"] = 1e3 * timed(prefill, dev, repeats)
    for name, m, kk in (("lm_k", model, k), ("lm_1", model, 1), ("rm_k", rm, k)):
        dec = m.get_decoder()
        cache = ForkCache.for_model(m, B, T + half + 1, kk)
        extra = torch.randint(3, 1000, (B, half), device=dev)
        cache.extend(dec, torch.cat([ids, extra], 1), torch.cat([mask, torch.ones_like(extra)], 1))
        cand = torch.randint(3, 1000, (B, kk), device=dev)
        head = m.get_output_embeddings()

        def run():
            h = cache.fork(dec, cand)
            head(h[:, 0])
        out[name] = 1e3 * timed(run, dev, repeats * 3)
    return out


def run_case(model, rm_model, head, B, P, N, k, dev, repeats, naive_new, variants, compiled=False):
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(3, 40000, (B, P), generator=g).to(dev)
    mask = torch.ones_like(ids)
    rm = RewardModel(rm_model, head)
    kw = dict(k=k, w=1.5, max_new_tokens=N, eos_token_id=-1)
    gen_kw = dict(attention_mask=mask, max_new_tokens=N, min_new_tokens=N, do_sample=False, pad_token_id=2,
                  top_k=None, top_p=None, temperature=None)

    def processor():
        proc = ARGSLogitsProcessor(RewardModel(rm_model, head), k=k, w=1.5, attention_mask=mask)
        model.generate(ids, logits_processor=LogitsProcessorList([proc]), **gen_kw)

    fns = {
        "HF greedy generate": (lambda: model.generate(ids, **gen_kw), N),
        "naive ARGS (shared head)": (lambda: naive_args_generate(model, ids, mask, reward=head,
                                                                 **{**kw, "max_new_tokens": naive_new}), naive_new),
        "processor in generate (separate RM)": (processor, N),
        "native ARGS, separate RM": (lambda: args_generate(model, ids, mask, reward=rm, **kw), N),
        "native ARGS, shared head": (lambda: args_generate(model, ids, mask, reward=head, **kw), N),
        "native vanilla greedy": (lambda: vanilla_generate(model, ids, mask, max_new_tokens=N, eos_token_id=-1), N),
        "native ARGS, separate RM (compiled)": (lambda: args_generate(model, ids, mask, reward=rm, loop="compiled",
                                                                      **kw), N),
        "native ARGS, shared head (compiled)": (lambda: args_generate(model, ids, mask, reward=head,
                                                                      loop="compiled", **kw), N),
        "native vanilla greedy (compiled)": (lambda: vanilla_generate(model, ids, mask, max_new_tokens=N,
                                                                      eos_token_id=-1, loop="compiled"), N),
        "dynamic loop ARGS, separate RM": (lambda: args_generate(model, ids, mask, reward=rm, loop="dynamic", **kw),
                                           N),
        "dynamic loop ARGS, shared head": (lambda: args_generate(model, ids, mask, reward=head, loop="dynamic",
                                                                 **kw), N),
    }
    res = {}
    for name, (fn, n) in fns.items():
        if variants and not any(v in name for v in variants):
            continue
        if "(compiled)" in name and (not compiled or dev.type == "cuda"):
            continue
        t = timed(fn, dev, 1 if name.startswith("naive") else repeats)
        res[name] = 1e3 * t / n
        print(f"  B={B} P={P}: {name:38s} {res[name]:9.2f} ms/token", flush=True)
    fl = floor_ms(model, rm_model, ids, mask, k, N, dev, repeats)
    pf = fl["prefill"] / N          # the prompt's forward, spread over the new tokens
    res["floor: k-token LM forward"] = fl["lm_k"] + pf
    res["floor: 1-token LM + k-token RM forward"] = fl["lm_1"] + fl["rm_k"] + 2 * pf
    res["floor: 1-token LM forward"] = fl["lm_1"] + pf
    res["(prefill, ms per prompt)"] = fl["prefill"]
    for name in list(res)[-4:]:
        print(f"  B={B} P={P}: {name:38s} {res[name]:9.2f} ms", flush=True)
    return res


def ratios(r):
    g = r.get("HF greedy generate")
    out = {}
    pairs = [("native ARGS, shared head", "floor: k-token LM forward"),
             ("native ARGS, separate RM", "floor: 1-token LM + k-token RM forward"),
             ("native vanilla greedy", "floor: 1-token LM forward"),
             ("processor in generate (separate RM)", "native ARGS, separate RM"),
             ("native ARGS, shared head", "dynamic loop ARGS, shared head"),
             ("native ARGS, shared head (compiled)", "native ARGS, shared head"),
             ("native ARGS, separate RM (compiled)", "native ARGS, separate RM"),
             ("processor in generate (separate RM)", "native ARGS, separate RM (compiled)"),
             ("native ARGS, separate RM", "dynamic loop ARGS, separate RM"),
             ("naive ARGS (shared head)", "native ARGS, shared head")]
    for a, b in pairs:
        if a in r and b in r:
            out[f"{a} / {b}"] = r[a] / r[b]
    if g:
        for a in ("native ARGS, shared head", "native ARGS, separate RM", "processor in generate (separate RM)",
                  "native vanilla greedy"):
            if a in r:
                out[f"HF greedy / {a} (tokens/s ratio)"] = g / r[a]
    return out


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--shapes", default="smollm2")
    ap.add_argument("--batch", default="1,4")
    ap.add_argument("--prompt", default="128")
    ap.add_argument("--new", type=int, default=32)
    ap.add_argument("--naive-new", type=int, default=4, help="new tokens for the (slow) naive reference")
    ap.add_argument("--k", type=int, default=10)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--random-weights", action="store_true")
    ap.add_argument("--compiled", action="store_true", help="also time the torch.compile'd step (CPU; the "
                    "one-time compile, about a minute per shape, is in the warm-up, not in the figure)")
    ap.add_argument("--variants", default="", help="comma list of name fragments to run (default all)")
    ap.add_argument("--out", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "results"))
    ns = ap.parse_args(argv)
    dev = torch.device(ns.device)
    dtype = torch.bfloat16 if dev.type == "cuda" else torch.float32
    if dev.type == "cpu":
        torch.set_num_threads(max(1, torch.get_num_threads()))
    os.makedirs(ns.out, exist_ok=True)
    variants = [v for v in ns.variants.split(",") if v]
    rows = []
    for shape in ns.shapes.split(","):
        model, weights = load(shape, ns.random_weights, dev, dtype)
        rm_model, _ = load(shape, ns.random_weights, dev, dtype)      # a separate same-size reward model
        head = RewardHead(RewardHeadConfig(model.config.hidden_size, "linear")).to(dev)
        for B in map(int, ns.batch.split(",")):
            for P in map(int, ns.prompt.split(",")):
                r = run_case(model, rm_model, head, B, P, ns.new, ns.k, dev, ns.repeats, ns.naive_new, variants,
                             ns.compiled)
                rows.append(dict(shape=shape, weights=weights, B=B, prompt=P, new=ns.new, k=ns.k, ms=r,
                                 ratios=ratios(r)))
        del model, rm_model
    dev_name = torch.cuda.get_device_name() if dev.type == "cuda" else f"cpu ({torch.get_num_threads()} threads)"
    meta = dict(date=time.strftime("%Y-%m-%d"), device=dev_name, dtype=str(dtype), torch=torch.__version__,
                command="python benchmarks/args_native.py " + " ".join(argv if argv is not None else sys.argv[1:]))
    with open(os.path.join(ns.out, "args_native.json"), "w") as f:
        json.dump(dict(meta=meta, rows=rows), f, indent=1)
    md = [f"ARGS end to end, {meta['date']}, {dev_name}, {dtype}, torch {torch.__version__}; "
          f"`{meta['command']}`", ""]
    for row in rows:
        md.append(f"**{row['weights']}, B={row['B']}, prompt {row['prompt']}, {row['new']} new tokens, k={row['k']}**")
        md.append("")
        md.append("| variant | ms/token |")
        md.append("|---|---|")
        for name, v in row["ms"].items():
            md.append(f"| {name} | {v:.2f} |")
        md.append("")
        md.append("| ratio | value |")
        md.append("|---|---|")
        for name, v in row["ratios"].items():
            md.append(f"| {name} | {v:.3f} |")
        md.append("")
    with open(os.path.join(ns.out, "args_native.md"), "w") as f:
        f.write("\n".join(md))
    print("\n".join(md))
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        fig, axes = plt.subplots(1, len(rows), figsize=(6 * len(rows), 4.5), squeeze=False)
        for ax, row in zip(axes[0], rows):
            names = [n for n in row["ms"] if not n.startswith(("floor", "("))]
            vals = [row["ms"][n] for n in names]
            ax.barh(range(len(names)), vals, color="tab:blue")
            for fl, c in (("floor: k-token LM forward", "tab:red"), ("floor: 1-token LM + k-token RM forward",
                                                                     "tab:orange"),
                          ("floor: 1-token LM forward", "tab:green")):
                ax.axvline(row["ms"][fl], color=c, ls="--", label=fl)
            ax.set_yticks(range(len(names)), names, fontsize=7)
            ax.set_xscale("log")
            ax.set_xlabel("ms per generated token (log)")
            ax.set_title(f"{row['weights']}, B={row['B']}, P={row['prompt']}", fontsize=8)
            ax.legend(fontsize=6)
        fig.tight_layout()
        fig.savefig(os.path.join(ns.out, "args_native.png"), dpi=110)
    except ImportError:
        print("matplotlib missing: no plot")


if __name__ == "__main__":
    main()
