"""ARGS end to end on Gemma-3- and Qwen3-shaped models (random weights of SmolLM2-135M's size,
`bench_args_e2e.SHAPES`), a sliding window (64) shorter than the prompt (128), against the
naive loop: the same tokens, or, where they part, a tie in the naive loop's own scores at
that step (bf16 rounds near-ties differently on a cached and a recomputed path).

    python benchmarks/families_check.py --device cuda            # bf16, loop="graph" (gpu_check --quick)
    python benchmarks/families_check.py --device cpu --layers 2  # CI: fp32, loop="eager"

Prints one line per (shape, reward kind) and writes --out (JSON).  Exit status 1 when a case
differs without a tie.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
if HERE not in sys.path:
    sys.path.insert(0, HERE)

import torch  # noqa: E402

from bench_args_e2e import build_model  # noqa: E402

SHAPES = ("gemma3-135m", "qwen3-135m")


def _first_split(a, b, T):
    d = (a[:, T:] != b[:, T:]).nonzero()
    return None if d.numel() == 0 else (int(d[0, 0]), int(d[0, 1]))


def _tie(lm, src, ref, out, ids, mask, k, w, tol):
    """Whether the first place `out` leaves `ref` is a tie (within tol) of the naive scores."""
    from rgk import hf, ops
    T = ids.shape[1]
    b, t = _first_split(out, ref, T)
    seqs = ref[b:b + 1, :T + t]
    m = torch.cat([mask[b:b + 1], torch.ones(1, t, dtype=mask.dtype, device=mask.device)], 1)
    with torch.no_grad():
        logits = lm(input_ids=seqs, attention_mask=m, position_ids=hf.positions(m)).logits[:, -1].float()
        lp, cid = ops.topk_logprobs(logits, k)
        cand = torch.cat([seqs.repeat_interleave(k, 0), cid.reshape(-1, 1)], 1)
        cm = torch.cat([m.repeat_interleave(k, 0), torch.ones(k, 1, dtype=m.dtype, device=m.device)], 1)
        r = src.reference_rewards(lm, cand, cm, T).reshape(k).float()
    score = lp[0] + w * r
    a, o = int(ref[b, T + t]), int(out[b, T + t])
    ia, io = (cid[0] == a).nonzero(), (cid[0] == o).nonzero()
    if ia.numel() != 1 or io.numel() != 1:
        return False, f"row {b} step {t}: token {o} is not among the naive top-{k}"
    gap = abs(float(score[ia[0, 0]] - score[io[0, 0]]))
    return gap <= tol, f"row {b} step {t}: naive {a} vs {o}, score gap {gap:.3g} (tie tolerance {tol})"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--dtype", default="auto", choices=["auto", "fp32", "bf16"])
    ap.add_argument("--loop", default="auto", help="args_generate loop (auto: graph on CUDA, eager on CPU)")
    ap.add_argument("--layers", type=int, default=None, help="fewer layers (CPU tests)")
    ap.add_argument("--batch", type=int, default=2)
    ap.add_argument("--prompt", type=int, default=128)
    ap.add_argument("--new", type=int, default=16)
    ap.add_argument("--k", type=int, default=4)
    ap.add_argument("--out", default="")
    ns = ap.parse_args(argv)
    from rgk.args import RewardModel, args_generate
    from rgk.args.search import check_source, naive_args_generate
    from rgk.models import RewardHead, RewardHeadConfig
    dev = torch.device(ns.device)
    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16}.get(ns.dtype) or \
        (torch.bfloat16 if dev.type == "cuda" else torch.float32)
    tol = 1e-3 if dtype == torch.float32 else 5e-2
    w = 1.0
    rows, bad = [], 0
    for shape in SHAPES:
        lm, desc = build_model(shape, dev, dtype, random_weights=True, layers=ns.layers, seed=0)
        rm, _ = build_model(shape, dev, dtype, random_weights=True, layers=ns.layers, seed=1)
        torch.manual_seed(2)
        head = RewardHead(RewardHeadConfig(lm.config.hidden_size, "linear")).to(dev)
        g = torch.Generator().manual_seed(3)
        ids = torch.randint(3, 40000, (ns.batch, ns.prompt), generator=g).to(dev)
        mask = torch.ones_like(ids)
        if ns.batch > 1:                       # a left-padded row
            mask[0, : ns.prompt // 4] = 0
            ids[0, : ns.prompt // 4] = 0
        for kind, src in (("shared", head), ("model", RewardModel(rm, head))):
            kw = dict(k=ns.k, w=w, max_new_tokens=ns.new, eos_token_id=-1, pad_token_id=0)
            t0 = time.time()
            ref = naive_args_generate(lm, ids, mask, reward=src, **kw)
            t1 = time.time()
            out = args_generate(lm, ids, mask, reward=src, loop=ns.loop, **kw)
            t2 = time.time()
            if torch.equal(out.sequences, ref.sequences):
                verdict, note = "PASS", "same tokens"
            else:
                ok, note = _tie(lm, check_source(src, lm), ref.sequences, out.sequences, ids, mask, ns.k, w, tol)
                verdict = "PASS (tie)" if ok else "FAIL"
            bad += verdict == "FAIL"
            row = dict(shape=shape, model=desc, dtype=str(dtype)[6:], reward=kind, loop=ns.loop, verdict=verdict,
                       note=note, window=getattr(lm.config, "sliding_window", None), prompt=ns.prompt,
                       naive_s=round(t1 - t0, 2), native_s=round(t2 - t1, 2))
            rows.append(row)
            print(f"[families] {shape:<12} {kind:<6} {row['dtype']:<8} loop={ns.loop:<6} {verdict:<10} {note}",
                  flush=True)
    if ns.out:
        with open(ns.out, "w") as f:
            json.dump(rows, f, indent=1)
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
