"""ARGS end to end, every way in, one run: HF greedy `generate`; naive ARGS (re-runs the LM
and the reward over every full candidate sequence); `ARGSLogitsProcessor` inside
`generate`; rgk's native loop with a separate reward model, with the shared-backbone head,
and plain decoding (native vanilla) — plus, on CPU, the Python (dynamic) loop and the
compute floor — all in one process, one after another, ms per generated token.

    # CPU: the real SmolLM2-135M-Instruct (LM, and a second copy as the reward model)
    python benchmarks/bench_args_e2e.py                      # B 1 and 4, prompt 128, 32 new tokens
    # GPU: random weights of SmolLM2-135M's and Llama-3.2-1B's shapes (no download), bf16
    python benchmarks/bench_args_e2e.py --device cuda --shapes smollm2-135m,llama-3.2-1b --random-weights \\
        --batch 1,8 --prompt 128,1024 --new 128
    # pytest-benchmark entry (each variant one benchmark; the last test writes the report)
    python -m pytest benchmarks/bench_args_e2e.py --benchmark-only

`gpu_check.sh --quick` runs the two GPU cases of `_targets.QUICK_CASES["args_e2e"]` under
`--budget`.  Timing: one warm-up call, then `--repeats` timed calls (synchronised on CUDA;
the naive reference once); the figure is the median.  On CUDA the native loops run
`loop="graph"` (the step captured in a CUDA graph and replayed; the capture is part of
every call, as for a user).  `--budget S` keeps the run inside S seconds: fewer timed calls
when time is short (at least one), a variant that no longer fits is skipped and said so
(never given a figure), and the naive reference runs only in the B=8, prompt-1024 cases
(`--naive-cases`).  `--warmup-new N` warms the `generate`-based variants and the naive
reference with N new tokens instead of the full count (the native loops always warm up
with the timed shape; N and --new both multiples of 16 keep the cache capacities alike
modulo 16, as Triton specialises integer arguments, so the timed call compiles nothing).

The compute floor (CPU default, `--floor`) is what one generated token cannot cost less
than: model forwards against the prefix cache mid-generation (prefix = prompt + half the
new tokens) — a k-token LM forward plus the lm_head on one position for the shared head; a
1-token LM forward with lm_head plus a k-token reward-model forward with the reward head
for a separate reward model; a 1-token LM forward with lm_head for plain decoding — plus
each model's prompt prefill spread over the new tokens.  On CUDA it is off by default: an
eager forward is launch-bound there and says nothing about a graph-replayed loop.

Writes <out>/args_e2e.json, args_e2e.md (per-case tables, same-run ratios, the target
table) and args_e2e.png; every measured variant is also appended as one JSON line to
--records (default $RGK_BENCH_RECORDS when set; `_targets.py` reads it).  The targets: GPU
`_targets.ARGS_GPU_TARGETS`, CPU `_targets.ARGS_CPU_TARGETS`.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import shlex
import signal
import statistics
import sys
import time
import traceback
from dataclasses import dataclass

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
if HERE not in sys.path:
    sys.path.insert(0, HERE)  # _timing, _targets
try:
    import rgk  # noqa: F401
except ImportError:
    sys.path.append(ROOT)

import pytest  # noqa: E402
import torch  # noqa: E402

import _targets  # noqa: E402
from _timing import HAVE_PYTEST_BENCHMARK, quick  # noqa: E402

if not HAVE_PYTEST_BENCHMARK:
    from _timing import benchmark  # noqa: F401,E402

# Architectures (their config.json), no weights needed; rope scaling (Llama-3.2's "llama3"
# type) is left out: it changes no timing.  "tiny" is the pytest entry's CPU model.
SHAPES = {
    "smollm2-135m": dict(vocab_size=49152, hidden_size=576, intermediate_size=1536, num_hidden_layers=30,
                         num_attention_heads=9, num_key_value_heads=3, head_dim=64, rope_theta=100000.0,
                         max_position_embeddings=8192, tie_word_embeddings=True, bos_token_id=1, eos_token_id=2),
    "llama-3.2-1b": dict(vocab_size=128256, hidden_size=2048, intermediate_size=8192, num_hidden_layers=16,
                         num_attention_heads=32, num_key_value_heads=8, head_dim=64, rope_theta=500000.0,
                         max_position_embeddings=131072, tie_word_embeddings=True, bos_token_id=128000,
                         eos_token_id=128001),
    # SmolLM2-135M's size in other families (random weights only): Qwen3 (q/k norms), and Gemma 3
    # with a 64-token sliding window on 5 layers of 6 (shorter than a 128-token prompt: the
    # window is active), soft-capped final logits off as in the released checkpoints
    "qwen3-135m": dict(model_type="qwen3", vocab_size=49152, hidden_size=576, intermediate_size=1536,
                       num_hidden_layers=30, num_attention_heads=9, num_key_value_heads=3, head_dim=64,
                       max_position_embeddings=8192, tie_word_embeddings=True, bos_token_id=1, eos_token_id=2),
    "gemma3-135m": dict(model_type="gemma3_text", vocab_size=49152, hidden_size=576, intermediate_size=1536,
                        num_hidden_layers=30, num_attention_heads=9, num_key_value_heads=3, head_dim=64,
                        query_pre_attn_scalar=64, sliding_window=64, max_position_embeddings=8192,
                        tie_word_embeddings=True, bos_token_id=1, eos_token_id=2),
    "tiny": dict(vocab_size=4096, hidden_size=256, intermediate_size=512, num_hidden_layers=4, num_attention_heads=4,
                 num_key_value_heads=2, head_dim=64, rope_theta=10000.0, max_position_embeddings=2048,
                 tie_word_embeddings=False, bos_token_id=1, eos_token_id=2),
}
ALIASES = {"smollm2": "smollm2-135m", "llama1b": "llama-3.2-1b"}  # args_native.py's names
PAD = 2
W = 1.5

HF, SHARED, RM, VANILLA = _targets.HF, _targets.SHARED, _targets.RM, _targets.VANILLA
PROCESSOR, NAIVE, CUSTOM = _targets.PROCESSOR, _targets.NAIVE, _targets.CUSTOM
# key -> record name; the order is the order of measurement within a case
VARIANTS = {
    "hf": HF,
    "native_shared": SHARED,
    "native_rm": RM,
    "native_vanilla": VANILLA,
    "processor": PROCESSOR,
    "custom_shared": CUSTOM,
    "naive": NAIVE,
    "dynamic_shared": "dynamic loop ARGS, shared head",
    "dynamic_rm": "dynamic loop ARGS, separate RM",
    "compiled_shared": "native ARGS, shared head (compiled)",
    "compiled_rm": "native ARGS, separate RM (compiled)",
    "compiled_vanilla": "native vanilla greedy (compiled)",
}
CORE = ("hf", "native_shared", "native_rm", "native_vanilla", "processor", "custom_shared", "naive")
FLOOR = "floor"  # pseudo-variant: the compute floor of the case
FLOORS = ("floor: k-token LM forward", "floor: 1-token LM + k-token RM forward", "floor: 1-token LM forward")
PREFILL = "(prefill, ms per prompt)"


# ----------------------------------------------------------------------------- the models
def model_config(shape: str, layers: int | None = None):
    """The config of `shape` (SHAPES: a LlamaConfig, or the family's own config where the shape
    names a model_type), optionally with fewer layers (tests)."""
    from transformers import LlamaConfig
    if shape not in SHAPES:
        raise ValueError(f"--shapes: unknown shape {shape!r} (known: {', '.join(SHAPES)})")
    kw = dict(SHAPES[shape])
    if layers is not None:
        kw["num_hidden_layers"] = layers
    mt = kw.pop("model_type", None)
    if mt is not None:            # another family at this size
        from transformers import CONFIG_MAPPING
        cfg = CONFIG_MAPPING[mt](pad_token_id=PAD, **kw)
        cfg._attn_implementation = "sdpa"
        return cfg
    cfg = LlamaConfig(rms_norm_eps=1e-5, hidden_act="silu", pad_token_id=PAD, **kw)
    cfg._attn_implementation = "sdpa"
    return cfg


def rope_theta(cfg) -> float:
    rp = getattr(cfg, "rope_parameters", None) or {}
    return float(rp.get("rope_theta", getattr(cfg, "rope_theta", float("nan"))))


def describe(shape: str, random_weights: bool, layers: int | None = None) -> str:
    if not random_weights:
        return "real SmolLM2-135M-Instruct"
    n = layers if layers is not None else SHAPES[shape]["num_hidden_layers"]
    return f"random ({shape} shape{'' if layers is None else f', {n} layers'})"


def build_model(shape: str, device, dtype, *, random_weights: bool, layers: int | None = None, seed: int = 0):
    """(model, description): the real SmolLM2-135M-Instruct, or a random-weight causal LM of
    `shape` (Llama unless the shape names another family) initialised on `device`, cast to `dtype`."""
    if not random_weights:
        if shape != "smollm2-135m" or layers is not None:
            raise ValueError(f"--shapes: real weights exist only for smollm2-135m (got {shape!r}"
                             f"{', --layers' if layers is not None else ''}); pass --random-weights")
        from rgk.models import load_model
        m, _ = load_model(dtype=dtype, device=device)
        m.config._attn_implementation = "sdpa"
        return m.eval(), describe(shape, False)
    from transformers import AutoModelForCausalLM
    torch.manual_seed(seed)
    with torch.device(device):
        m = AutoModelForCausalLM.from_config(model_config(shape, layers))
    return m.to(dtype).eval(), describe(shape, True, layers)


# ----------------------------------------------------------------------------- plan
@dataclass(frozen=True)
class Case:
    shape: str
    B: int
    P: int

    def id(self, new: int, k: int, layers: int | None = None) -> str:
        tag = self.shape if layers is None else f"{self.shape}-L{layers}"
        return f"{tag}-B{self.B}-P{self.P}-N{new}-k{k}"


def _ints(name, text, lo=1):
    try:
        vals = [int(x) for x in str(text).split(",") if x.strip()]
    except ValueError:
        raise ValueError(f"{name}: expected comma-separated integers, got {text!r}") from None
    if not vals or any(v < lo for v in vals):
        raise ValueError(f"{name}: expected integers >= {lo}, got {text!r}")
    return vals


def _shape(name, s):
    s = ALIASES.get(s.strip(), s.strip())
    if s not in SHAPES:
        raise ValueError(f"{name}: unknown shape {s!r} (known: {', '.join(SHAPES)})")
    return s


def parse_cases(name, text) -> list[Case]:
    """'shape:B:P,...' -> cases."""
    out = []
    for item in [x for x in text.split(",") if x.strip()]:
        parts = item.strip().split(":")
        if len(parts) != 3:
            raise ValueError(f"{name}: expected shape:batch:prompt items, got {item!r}")
        B, P = _ints(name, parts[1])[0], _ints(name, parts[2])[0]
        out.append(Case(_shape(name, parts[0]), B, P))
    if not out:
        raise ValueError(f"{name}: no case given")
    return out


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cpu", help="cpu or cuda (default cpu)")
    ap.add_argument("--dtype", default="auto", choices=["auto", "fp32", "bf16", "fp16"],
                    help="model dtype (auto: bf16 on CUDA, fp32 on CPU)")
    ap.add_argument("--shapes", default="smollm2-135m", help=f"comma list of {', '.join(SHAPES)}")
    ap.add_argument("--batch", default="1,4")
    ap.add_argument("--prompt", default="128")
    ap.add_argument("--cases", default="", help="explicit shape:batch:prompt list, run in this order "
                    "(replaces --shapes x --batch x --prompt)")
    ap.add_argument("--new", type=int, default=32, help="new tokens per call")
    ap.add_argument("--naive-new", type=int, default=4, help="new tokens for the (slow) naive reference")
    ap.add_argument("--naive-cases", default="auto", help="where the naive reference runs: all, none, a "
                    "shape:batch:prompt list, or auto (all; with --budget only batch 8, prompt 1024)")
    ap.add_argument("--warmup-new", type=int, default=0, help="new tokens of the warm-up call of the generate-"
                    "based variants and the naive reference (0: the timed count)")
    ap.add_argument("--k", type=int, default=10)
    ap.add_argument("--repeats", type=int, default=3, help="timed calls per variant (the naive reference: 1)")
    ap.add_argument("--budget", type=float, default=0.0, help="seconds the whole run may take (0: no limit)")
    ap.add_argument("--random-weights", action="store_true", help="random weights of the shapes' configs")
    ap.add_argument("--floor", dest="floor", action="store_true", default=None,
                    help="measure the compute floor (default on CPU)")
    ap.add_argument("--no-floor", dest="floor", action="store_false", help="skip the compute floor (default on CUDA)")
    ap.add_argument("--paired", type=int, default=0, help="after a case's variants, alternate each native loop "
                    "with its floor (prefill + new-token forwards) this many times and report both medians and "
                    "the median per-pair ratio: drift of a shared machine cancels (CPU; 0: off); the processor "
                    "alternates with the native separate-RM loop and custom_generate with the native shared-head "
                    "loop (args_generate) the same way")
    ap.add_argument("--compiled", action="store_true", help="also time the torch.compile'd step (CPU; the "
                    "one-time compile, about a minute per shape, is in the warm-up, not in the figure)")
    ap.add_argument("--variants", default="", help="comma list of variant keys or name fragments (default: "
                    "all but the compiled ones on CPU; on CUDA the six of the issue: "
                    f"{', '.join(CORE)}); keys: {', '.join(VARIANTS)}")
    ap.add_argument("--out", default="", help="output folder (default benchmarks/results/args_e2e-<time>); "
                    "existing results there are not overwritten without --overwrite")
    ap.add_argument("--overwrite", action="store_true")
    ap.add_argument("--records", default=None, help="JSONL file to append records to (default "
                    "$RGK_BENCH_RECORDS when set, else none)")
    ap.add_argument("--plan", action="store_true", help="print the plan (cases, variants) and exit")
    ap.add_argument("--layers", type=int, default=None, help=argparse.SUPPRESS)  # tests: fewer layers
    return ap


def resolve(ns, ap):
    """Check and complete the parsed arguments (errors name the argument)."""
    try:
        ns.device = torch.device(ns.device)
    except (RuntimeError, ValueError):
        ap.error(f"--device: not a device: {ns.device!r}")
    if ns.device.type not in ("cpu", "cuda"):
        ap.error(f"--device: expected cpu or cuda, got {ns.device}")
    try:
        if ns.cases:
            ns.case_list = parse_cases("--cases", ns.cases)
        else:
            shapes = [_shape("--shapes", s) for s in ns.shapes.split(",") if s.strip()]
            if not shapes:
                raise ValueError("--shapes: no shape given")
            ns.case_list = [Case(s, B, P) for s in shapes for B in _ints("--batch", ns.batch)
                            for P in _ints("--prompt", ns.prompt)]
        if ns.naive_cases in ("auto", "all", "none"):
            ns.naive_list = None
        else:
            ns.naive_list = parse_cases("--naive-cases", ns.naive_cases)
    except ValueError as e:
        ap.error(str(e))
    for name in ("new", "naive_new", "k", "repeats"):
        if getattr(ns, name) < 1:
            ap.error(f"--{name.replace('_', '-')}: expected >= 1, got {getattr(ns, name)}")
    if ns.warmup_new < 0:
        ap.error(f"--warmup-new: expected >= 0, got {ns.warmup_new}")
    if ns.paired < 0:
        ap.error(f"--paired: expected a number of alternations >= 0, got {ns.paired}")
    if ns.budget < 0 or not math.isfinite(ns.budget):
        ap.error(f"--budget: expected seconds >= 0, got {ns.budget}")
    if ns.layers is not None and ns.layers < 1:
        ap.error(f"--layers: expected >= 1, got {ns.layers}")
    if not ns.random_weights and any(c.shape != "smollm2-135m" for c in ns.case_list):
        ap.error("--shapes: real weights exist only for smollm2-135m; pass --random-weights for the others")
    cuda = ns.device.type == "cuda"
    ns.dtype = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}.get(
        ns.dtype, torch.bfloat16 if cuda else torch.float32)
    if ns.floor is None:
        ns.floor = not cuda
    ns.loop = "graph" if cuda else "eager"
    if ns.variants:
        toks = [t.strip() for t in ns.variants.split(",") if t.strip()]
        keys = [k for k, name in VARIANTS.items() if any(t == k or t in name for t in toks)]
        if not keys:
            ap.error(f"--variants: {ns.variants!r} matches no variant (keys: {', '.join(VARIANTS)})")
        ns.keys = keys
    else:
        ns.keys = [k for k in VARIANTS if (k in CORE or not cuda) and not k.startswith("compiled")]
    if ns.compiled:
        ns.keys += [k for k in VARIANTS if k.startswith("compiled") and k not in ns.keys]
    return ns


def case_keys(ns, case: Case) -> list[str]:
    """The variants (and the floor) measured for `case`, in order."""
    keys = [k for k in ns.keys if k != "naive" or naive_here(ns, case)]
    return keys + ([FLOOR] if ns.floor else [])


def naive_here(ns, case: Case) -> bool:
    if ns.naive_list is not None:
        return case in ns.naive_list
    if ns.naive_cases == "none":
        return False
    if ns.naive_cases == "auto" and ns.budget:
        return (case.B, case.P) == (8, 1024)
    return True


# ----------------------------------------------------------------------------- timing
def sync(dev):
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)


def _stats(xs):
    return statistics.median(xs)


@torch.no_grad()
def floor_fns(model, rm_model, head, ids, mask, k, n_new, dev):
    """The compute floor's parts as callables: `prefill` (the prompt's forward into a fresh
    cache); `lm_k` / `lm_1` (a k-token / 1-token LM forward with the lm_head on one
    position) and `rm_k` (a k-token reward-model forward with the reward head on its k
    positions), each against a prefix cache of the prompt + n_new/2 tokens."""
    from rgk.args import ForkCache
    B, T = ids.shape
    half = max(1, n_new // 2)
    out = {}

    @torch.no_grad()
    def prefill():
        c = ForkCache.for_model(model, B, T + 1, 1)
        c.extend(model.get_decoder(), ids, mask)
    out["prefill"] = prefill
    g = torch.Generator().manual_seed(2)
    for name, m, kk, read in (("lm_k", model, k, "lm"), ("lm_1", model, 1, "lm"), ("rm_k", rm_model, k, "reward")):
        dec = m.get_decoder()
        cache = ForkCache.for_model(m, B, T + half + 1, kk)
        extra = torch.randint(3, 1000, (B, half), generator=g).to(dev)
        cache.extend(dec, torch.cat([ids, extra], 1), torch.cat([mask, torch.ones_like(extra)], 1))
        cand = torch.randint(3, 1000, (B, kk), generator=g).to(dev)
        lm_head = m.get_output_embeddings()

        @torch.no_grad()
        def run(cache=cache, dec=dec, cand=cand, lm_head=lm_head, read=read):
            h = cache.fork(dec, cand)
            if read == "lm":
                lm_head(h[:, 0])
            else:
                head(h.float())
        out[name] = run
    return out


def floor_ms(model, rm_model, head, ids, mask, k, n_new, dev, repeats):
    """The compute floor's parts (`floor_fns`) in ms, each the median of its timed calls."""
    fns = floor_fns(model, rm_model, head, ids, mask, k, n_new, dev)

    def timed(fn, n):
        fn()
        sync(dev)
        ts = []
        for _ in range(n):
            t0 = time.perf_counter()
            fn()
            sync(dev)
            ts.append(time.perf_counter() - t0)
        return 1e3 * _stats(ts)
    return {name: timed(fn, repeats if name == "prefill" else repeats * 3) for name, fn in fns.items()}


def floor_token_fns(fns, n_new):
    """Per floor (FLOORS order), one callable doing what n_new generated tokens cannot cost
    less than: the prompt prefill(s) and n_new step forwards (`--paired`)."""
    def shared():
        fns["prefill"]()
        for _ in range(n_new):
            fns["lm_k"]()

    def rm():
        fns["prefill"](), fns["prefill"]()
        for _ in range(n_new):
            fns["lm_1"](), fns["rm_k"]()

    def vanilla():
        fns["prefill"]()
        for _ in range(n_new):
            fns["lm_1"]()
    return dict(zip(FLOORS, (shared, rm, vanilla)))


class Clock:
    def __init__(self, budget: float):
        self.t0 = time.perf_counter()
        self.budget = budget

    def left(self) -> float:
        return math.inf if not self.budget else self.budget - (time.perf_counter() - self.t0)


class Skip(Exception):
    """A variant left out (time budget); never given a figure."""


# ----------------------------------------------------------------------------- the benchmark
class Bench:
    def __init__(self, ns, clock: Clock | None = None):
        self.ns = ns
        self.dev = ns.device
        self.clock = clock or Clock(ns.budget)
        self.rows: dict[Case, dict] = {}
        self._models: dict[str, tuple] = {}
        self._inputs: dict[Case, tuple] = {}
        self.todo = sum(len(case_keys(ns, c)) for c in ns.case_list)
        if self.dev.type == "cuda":
            self.dev_name = torch.cuda.get_device_name(self.dev)
        else:
            self.dev_name = f"cpu ({torch.get_num_threads()} threads)"
        self.records = ns.records if ns.records is not None else os.environ.get("RGK_BENCH_RECORDS") or None

    # models and inputs
    def models(self, shape):
        if shape not in self._models:
            if self.dev.type == "cpu":  # one shape in memory at a time on CPU
                self._models.clear()
                self._inputs.clear()
            ns = self.ns
            lm, desc = build_model(shape, self.dev, ns.dtype, random_weights=ns.random_weights, layers=ns.layers,
                                   seed=0)
            rm, _ = build_model(shape, self.dev, ns.dtype, random_weights=ns.random_weights, layers=ns.layers,
                                seed=1)  # a separate same-size reward model
            from rgk.models import RewardHead, RewardHeadConfig
            torch.manual_seed(2)
            head = RewardHead(RewardHeadConfig(lm.config.hidden_size, "linear")).to(self.dev)
            if self.dev.type == "cuda":  # CUDA context, cuBLAS handles, allocator: not in the first variant's warm-up
                with torch.no_grad():
                    for m in (lm, rm):
                        m(torch.full((1, 8), 3, dtype=torch.long, device=self.dev))
                sync(self.dev)
            self._models[shape] = (lm, rm, head, desc)
            print(f"[args_e2e] {shape}: {desc}, {ns.dtype}, on {self.dev_name}", flush=True)
        return self._models[shape]

    def inputs(self, case):
        if case not in self._inputs:
            lm = self.models(case.shape)[0]
            g = torch.Generator().manual_seed(1)
            ids = torch.randint(3, min(40000, lm.config.vocab_size), (case.B, case.P), generator=g).to(self.dev)
            self._inputs[case] = (ids, torch.ones_like(ids))
        return self._inputs[case]

    def case_id(self, case):
        return case.id(self.ns.new, self.ns.k, self.ns.layers)

    def row(self, case):
        if case not in self.rows:
            ns = self.ns
            self.rows[case] = dict(case=self.case_id(case), shape=case.shape,
                                   weights=describe(case.shape, ns.random_weights, ns.layers),
                                   B=case.B, prompt=case.P, new=ns.new, naive_new=ns.naive_new, k=ns.k,
                                   loop=ns.loop, ms={}, rounds={}, samples_ms={}, skipped={}, errors={}, floor_ms={})
        return self.rows[case]

    def fn(self, case, key):
        """(call(n_new), timed new tokens, warm-up new tokens) of a variant."""
        from transformers import LogitsProcessorList

        from rgk.args import ARGSLogitsProcessor, RewardModel, args_generate, custom_generate, naive_args_generate
        from rgk.args.decode import vanilla_generate
        ns = self.ns
        lm, rm_model, head, _ = self.models(case.shape)
        ids, mask = self.inputs(case)
        rm = RewardModel(rm_model, head)
        N, k = ns.new, ns.k
        warm = min(ns.warmup_new or N, N)
        kw = dict(k=k, w=W, eos_token_id=-1)

        def gen_kw(n):
            return dict(attention_mask=mask, max_new_tokens=n, min_new_tokens=n, do_sample=False, pad_token_id=PAD,
                        top_k=None, top_p=None, temperature=None)

        def processor(n):
            proc = ARGSLogitsProcessor(RewardModel(rm_model, head), k=k, w=W, attention_mask=mask)
            lm.generate(ids, logits_processor=LogitsProcessorList([proc]), **gen_kw(n))

        loop, cl = ns.loop, "compiled"
        table = {
            "hf": (lambda n: lm.generate(ids, **gen_kw(n)), N, warm),
            "processor": (processor, N, warm),
            # transformers' generate handing over to rgk's loop: the same loop as native_shared
            "custom_shared": (lambda n: lm.generate(ids, attention_mask=mask, custom_generate=custom_generate,
                                                    reward=head, k=k, w=W, max_new_tokens=n, eos_token_id=-1,
                                                    pad_token_id=PAD, loop=loop, do_sample=False, top_k=None,
                                                    top_p=None, temperature=None), N, N),
            "naive": (lambda n: naive_args_generate(lm, ids, mask, reward=head, max_new_tokens=n, **kw), ns.naive_new,
                      min(ns.warmup_new or ns.naive_new, ns.naive_new)),
            "native_rm": (lambda n: args_generate(lm, ids, mask, reward=rm, max_new_tokens=n, loop=loop, **kw), N, N),
            "native_shared": (lambda n: args_generate(lm, ids, mask, reward=head, max_new_tokens=n, loop=loop, **kw),
                              N, N),
            "native_vanilla": (lambda n: vanilla_generate(lm, ids, mask, max_new_tokens=n, eos_token_id=-1, loop=loop),
                               N, N),
            "dynamic_rm": (lambda n: args_generate(lm, ids, mask, reward=rm, max_new_tokens=n, loop="dynamic", **kw),
                           N, N),
            "dynamic_shared": (lambda n: args_generate(lm, ids, mask, reward=head, max_new_tokens=n, loop="dynamic",
                                                       **kw), N, N),
            "compiled_rm": (lambda n: args_generate(lm, ids, mask, reward=rm, max_new_tokens=n, loop=cl, **kw), N, N),
            "compiled_shared": (lambda n: args_generate(lm, ids, mask, reward=head, max_new_tokens=n, loop=cl, **kw),
                                N, N),
            "compiled_vanilla": (lambda n: vanilla_generate(lm, ids, mask, max_new_tokens=n, eos_token_id=-1, loop=cl),
                                 N, N),
        }
        return table[key]

    def _rounds(self, key, t_est):
        base = 1 if key == "naive" else self.ns.repeats
        left = self.clock.left()
        if math.isinf(left):
            return base
        share = left / max(1, self.todo)
        return max(1, min(base, int(share // max(t_est, 1e-6))))

    def measure(self, case, key, timer=None):
        """Warm up and time one variant of a case (or the floor, key FLOOR); returns the row.
        timer(run, rounds) runs `run` `rounds` times (default: a plain loop; pytest passes
        benchmark.pedantic).  A variant left out for time raises Skip; errors are recorded
        (the summary shows them as FAIL) and re-raised."""
        ns = self.ns
        row = self.row(case)
        name = "compute floor" if key == FLOOR else VARIANTS[key]
        try:
            if self.clock.left() <= 0:
                raise Skip(f"time budget ({ns.budget:.0f}s) spent before it started")
            if key == FLOOR:
                self._floor(case, row)
                return row
            call, n, warm = self.fn(case, key)
            t = time.perf_counter()
            call(warm)
            sync(self.dev)
            t_warm = time.perf_counter() - t
            t_est = t_warm * (n / warm)
            if t_est > self.clock.left():
                raise Skip(f"one timed call (~{t_est:.1f}s after a {t_warm:.1f}s warm-up) does not fit in the "
                           f"{self.clock.left():.1f}s left of the time budget")
            rounds = self._rounds(key, t_est)
            samples = []

            def run():
                sync(self.dev)
                t0 = time.perf_counter()
                call(n)
                sync(self.dev)
                samples.append(time.perf_counter() - t0)
            if timer is None:
                for _ in range(rounds):
                    run()
            else:
                timer(run, rounds)
            ms = 1e3 * _stats(samples) / n
            row["ms"][name], row["rounds"][name] = ms, len(samples)
            row["samples_ms"][name] = [1e3 * s / n for s in samples]
            self._record(case, name, ms, rounds=len(samples), new=n)
            print(f"  {row['case']}: {name:40s} {ms:10.3f} ms/token  ({len(samples)} timed, warm-up "
                  f"{t_warm:.1f}s, {self.clock.left():.0f}s left)" if ns.budget else
                  f"  {row['case']}: {name:40s} {ms:10.3f} ms/token  ({len(samples)} timed)", flush=True)
            return row
        except Skip as e:
            row["skipped"][name] = str(e)
            print(f"  {row['case']}: SKIP {name}: {e}", flush=True)
            raise
        except Exception as e:
            msg = f"{type(e).__name__}: {str(e).splitlines()[0][:300] if str(e) else ''}"
            row["errors"][name] = msg
            print(f"  {row['case']}: ERROR {name}: {msg}", flush=True)
            traceback.print_exc()
            try:
                sync(self.dev)
                if self.dev.type == "cuda":
                    torch.cuda.empty_cache()
            except Exception:  # a sticky CUDA error: later variants will say so themselves
                pass
            if key != FLOOR:
                self._record(case, name, None, error=msg)
            raise
        finally:
            self.todo -= 1

    def _floor(self, case, row):
        ns = self.ns
        lm, rm_model, head, _ = self.models(case.shape)
        ids, mask = self.inputs(case)
        fl = floor_ms(lm, rm_model, head, ids, mask, ns.k, ns.new, self.dev, ns.repeats)
        pf = fl["prefill"] / ns.new  # the prompt's forward, spread over the new tokens
        vals = {FLOORS[0]: fl["lm_k"] + pf, FLOORS[1]: fl["lm_1"] + fl["rm_k"] + 2 * pf, FLOORS[2]: fl["lm_1"] + pf}
        row["floor_ms"] = fl
        for name, v in vals.items():
            row["ms"][name], row["rounds"][name] = v, ns.repeats * 3
            self._record(case, name, v, rounds=ns.repeats * 3)
        row["ms"][PREFILL] = fl["prefill"]
        for name in (*FLOORS, PREFILL):
            print(f"  {row['case']}: {name:40s} {row['ms'][name]:10.3f} ms", flush=True)

    PAIRS = (("native_shared", 0), ("native_rm", 1), ("native_vanilla", 2), ("processor", "native_rm"),
             ("custom_shared", "native_shared"))
    PROC_BASE = f"{VARIANTS['native_rm']} (paired with the processor)"
    CUSTOM_BASE = _targets.CUSTOM_BASE

    def paired(self, case, rounds: int):
        """Each measured native loop alternated with its floor `rounds` times (loop, floor,
        loop, floor, ...), and the processor with the native separate-RM loop: adds
        "<variant> (paired)" and "<floor> (paired)" ms/token (the medians of their
        alternated calls; the RM loop's against the processor is PROC_BASE) and the per-pair
        ratios to the row."""
        ns = self.ns
        row = self.row(case)
        lm, rm_model, head, _ = self.models(case.shape)
        ids, mask = self.inputs(case)
        todo = [(key, b) for key, b in self.PAIRS
                if VARIANTS[key] in row["ms"] and (isinstance(b, int) or VARIANTS[b] in row["ms"])]
        if not todo:
            return
        floors = floor_token_fns(floor_fns(lm, rm_model, head, ids, mask, ns.k, ns.new, self.dev), ns.new)
        row.setdefault("paired", {})
        for key, b in todo:
            call = self.fn(case, key)[0]
            if isinstance(b, int):
                fl, bname, fb = floors[FLOORS[b]], FLOORS[b], f"{FLOORS[b]} (paired)"
            else:
                other = self.fn(case, b)[0]
                fl, bname = (lambda: other(ns.new)), VARIANTS[b]
                fb = self.PROC_BASE if key == "processor" else self.CUSTOM_BASE
            fl()
            a, c = [], []
            for _ in range(rounds):
                for fn, xs in ((lambda: call(ns.new), a), (fl, c)):
                    sync(self.dev)
                    t0 = time.perf_counter()
                    fn()
                    sync(self.dev)
                    xs.append(1e3 * (time.perf_counter() - t0) / ns.new)
            va = f"{VARIANTS[key]} (paired)"
            for name, xs in ((va, a), (fb, c)):
                row["ms"][name], row["rounds"][name] = _stats(xs), rounds
                row["samples_ms"][name] = xs
                self._record(case, name, row["ms"][name], rounds=rounds)
            per = sorted(x / y for x, y in zip(a, c))
            row["paired"][f"{VARIANTS[key]} / {bname}"] = dict(median=_stats(per), ratios=per)
            print(f"  {row['case']}: paired {VARIANTS[key]} / {bname}: median {_stats(per):.3f} over {rounds} "
                  f"pairs ({va} {row['ms'][va]:.2f}, {fb} {row['ms'][fb]:.2f} ms/token)", flush=True)

    def _rec(self, case, name, ms, **extra):
        row = self.rows[case]
        return dict(op="args_e2e", case=row["case"], impl=name, eager_ms=ms, device=self.dev_name,
                    backend=self.dev.type, dtype=str(self.ns.dtype).replace("torch.", ""), weights=row["weights"],
                    shape=case.shape, B=case.B, prompt=case.P, k=self.ns.k, loop=self.ns.loop,
                    time=time.strftime("%Y-%m-%dT%H:%M:%S"), **extra)

    def _record(self, case, name, ms, **extra):
        if not self.records:
            return
        rec = self._rec(case, name, ms, **extra)
        if ms is None:
            rec.pop("eager_ms")
        os.makedirs(os.path.dirname(os.path.abspath(self.records)) or ".", exist_ok=True)
        with open(self.records, "a") as f:
            f.write(json.dumps(rec) + "\n")

    # results
    def records_of_run(self):
        out = []
        for case, row in self.rows.items():
            for name, ms in row["ms"].items():
                if name != PREFILL:
                    out.append(self._rec(case, name, ms, rounds=row["rounds"].get(name)))
            for name, msg in row["errors"].items():
                out.append({**self._rec(case, name, None), "error": msg})
        return out

    def target_rows(self):
        targets = _targets.ARGS_GPU_TARGETS if self.dev.type == "cuda" else (
            _targets.ARGS_CPU_TARGETS + (_targets.ARGS_CPU_PAIRED_TARGETS if self.ns.paired else []))
        recs = [r for r in self.records_of_run() if r.get("eager_ms") is not None or r.get("error")]
        return _targets.evaluate(recs, targets=targets, why_missing="not measured in this run")

    def meta(self, argv):
        return dict(date=time.strftime("%Y-%m-%d %H:%M"), device=self.dev_name, dtype=str(self.ns.dtype),
                    torch=torch.__version__, loop=self.ns.loop, budget_s=self.ns.budget or None,
                    seconds=round(time.perf_counter() - self.clock.t0, 1),
                    command="python benchmarks/bench_args_e2e.py " + " ".join(shlex.quote(a) for a in argv))

    def write(self, out, argv, png=True, quiet=False):
        """args_e2e.json / .md (and .png) under `out`; prints the tables unless quiet."""
        os.makedirs(out, exist_ok=True)
        rows = [dict(r, ratios=ratios(r["ms"])) for r in self.rows.values()]
        meta = self.meta(argv)
        trows = self.target_rows()
        with open(os.path.join(out, "args_e2e.json"), "w") as f:
            json.dump(dict(meta=meta, rows=rows, targets=trows), f, indent=1)
        md = markdown(meta, rows, trows)
        with open(os.path.join(out, "args_e2e.md"), "w") as f:
            f.write(md)
        if not quiet:
            print(md, flush=True)
            _targets.print_table(trows, self.dev_name, title="ARGS end-to-end targets")
        if png:
            plot(rows, meta, os.path.join(out, "args_e2e.png"))


def ratios(ms: dict) -> dict:
    """Same-run ratios of a case's ms/token figures."""
    out = {}
    pairs = [(SHARED, FLOORS[0]), (RM, FLOORS[1]), (VANILLA, FLOORS[2]), (PROCESSOR, RM), (PROCESSOR, HF),
             (SHARED, VANILLA), (RM, VANILLA), (SHARED, VARIANTS["dynamic_shared"]), (RM, VARIANTS["dynamic_rm"]),
             (VARIANTS["compiled_shared"], SHARED), (VARIANTS["compiled_rm"], RM), (NAIVE, SHARED)]
    for a, b in pairs:
        if a in ms and b in ms and ms[b]:
            out[f"{a} / {b}"] = ms[a] / ms[b]
    if ms.get(HF):
        for a in (SHARED, RM, PROCESSOR, VANILLA):
            if ms.get(a):
                out[f"HF greedy / {a} (tokens/s ratio)"] = ms[HF] / ms[a]
    return out


def markdown(meta, rows, trows) -> str:
    md = [f"# ARGS end to end, {meta['date']}", "",
          f"{meta['device']}, {meta['dtype']}, torch {meta['torch']}, native loop `{meta['loop']}`, "
          f"{meta['seconds']} s; `{meta['command']}`", ""]
    for row in rows:
        md += [f"## {row['case']}: {row['weights']}, B={row['B']}, prompt {row['prompt']}, {row['new']} new tokens "
               f"(naive {row['naive_new']}), k={row['k']}", "", "| variant | ms/token | timed calls |", "|---|---|---|"]
        for name, v in row["ms"].items():
            md.append(f"| {name} | {v:.3f} | {row['rounds'].get(name, '-')} |")
        for name, why in row["skipped"].items():
            md.append(f"| {name} | not measured: {why} | 0 |")
        for name, why in row["errors"].items():
            md.append(f"| {name} | error: {why} | 0 |")
        if row["ratios"]:
            md += ["", "| ratio (same run) | value |", "|---|---|"]
            md += [f"| {name} | {v:.3f} |" for name, v in row["ratios"].items()]
        if row.get("paired"):
            md += ["", "| paired ratio (loop and floor alternated) | median | per pair |", "|---|---|---|"]
            md += [f"| {name} | {v['median']:.3f} | {', '.join(f'{x:.3f}' for x in v['ratios'])} |"
                   for name, v in row["paired"].items()]
        md.append("")
    md += ["## Targets", "", f"{_targets.tally(trows)}.", "",
           "| target | case | ARGS variant | baseline | baseline ms/token | variant ms/token | ratio | required | "
           "verdict | note |", "|---|---|---|---|---|---|---|---|---|---|"]
    for r in trows:
        c = _targets._cells(r)
        md.append("| " + " | ".join(str(x).replace("|", "\\|") for x in [c[0], c[1], c[2], r["baseline"], c[4], c[5],
                                                                          c[6], c[7], c[8], c[9]]) + " |")
    md.append("")
    return "\n".join(md)


def plot(rows, meta, path) -> bool:
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("[args_e2e] matplotlib is not installed: no PNG", file=sys.stderr)
        return False
    rows = [r for r in rows if any(not n.startswith(("floor", "(")) for n in r["ms"])]
    if not rows:
        return False
    ncol = min(4, len(rows))
    nrow = math.ceil(len(rows) / ncol)
    fig, axes = plt.subplots(nrow, ncol, figsize=(5.2 * ncol, 3.8 * nrow), squeeze=False)
    for ax in axes.flat[len(rows):]:
        ax.axis("off")
    for ax, row in zip(axes.flat, rows):
        names = [n for n in row["ms"] if not n.startswith(("floor", "("))]
        vals = [row["ms"][n] for n in names]
        ax.barh(range(len(names)), vals, color=["tab:grey" if n in (HF, NAIVE) else "tab:blue" for n in names])
        for y, v in enumerate(vals):
            ax.text(v, y, f" {v:.2f}", va="center", fontsize=6)
        for fl, c in zip(FLOORS, ("tab:red", "tab:orange", "tab:green")):
            if fl in row["ms"]:
                ax.axvline(row["ms"][fl], color=c, ls="--", label=fl, lw=0.9)
        ax.set_yticks(range(len(names)), names, fontsize=6)
        ax.invert_yaxis()
        ax.set_xscale("log")
        lo = min(vals + [row["ms"][fl] for fl in FLOORS if fl in row["ms"]])
        ax.set_xlim(lo / 2, max(vals) * 2.5)
        ax.set_xlabel("ms per generated token (log)", fontsize=7)
        ax.set_title(f"{row['weights']}\nB={row['B']}, prompt {row['prompt']}, {row['new']} new, k={row['k']}",
                     fontsize=7)
        if any(fl in row["ms"] for fl in FLOORS):
            ax.legend(fontsize=5, loc="upper center", bbox_to_anchor=(0.5, -0.22), ncol=2, frameon=False)
    fig.suptitle(f"ARGS end to end — {meta['device']}, {meta['dtype']}, {meta['date']}; grey: baselines "
                 f"(HF greedy generate, naive ARGS)", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)
    return True


# ----------------------------------------------------------------------------- CLI
def _default_out():
    return os.path.join(HERE, "results", "args_e2e-" + time.strftime("%Y%m%d-%H%M%S"))


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    ap = parser()
    ns = resolve(ap.parse_args(argv), ap)
    if ns.plan:
        for case in ns.case_list:
            print(f"{case.id(ns.new, ns.k, ns.layers)}: {', '.join(case_keys(ns, case))}")
        print(f"device {ns.device}, {ns.dtype}, loop {ns.loop}, budget {ns.budget or 'none'}")
        return 0
    if ns.device.type == "cuda" and not torch.cuda.is_available():
        ap.error("--device: cuda was asked for but no CUDA device is available")
    out = ns.out or _default_out()
    if not ns.overwrite and any(os.path.exists(os.path.join(out, f"args_e2e.{e}")) for e in ("json", "md", "png")):
        ap.error(f"--out: {out} already holds results of an earlier run; pass another folder or --overwrite")
    clock = Clock(ns.budget)

    def on_term(signum, frame):  # `timeout` sends SIGTERM: write what was measured, then stop
        raise SystemExit(128 + signum)
    prev_term = signal.signal(signal.SIGTERM, on_term)
    bench = Bench(ns, clock)
    from tqdm.auto import tqdm
    bar = tqdm(total=bench.todo, desc="args_e2e", unit="variant", mininterval=5, file=sys.stderr)
    status = 0
    try:
        for case in ns.case_list:
            print(f"[args_e2e] case {case.id(ns.new, ns.k, ns.layers)} "
                  f"({clock.left():.0f}s of the budget left)" if ns.budget else
                  f"[args_e2e] case {case.id(ns.new, ns.k, ns.layers)}", flush=True)
            for key in case_keys(ns, case):
                try:
                    bench.measure(case, key)
                except Skip:
                    pass
                except Exception:
                    status = 1
                bar.update(1)
            if ns.paired and ns.floor and case in bench.rows:
                try:
                    bench.paired(case, ns.paired)
                except Exception:
                    traceback.print_exc()
                    status = 1
            bench.write(out, argv, png=False, quiet=True)  # a run cut later keeps this case
    finally:
        bar.close()
        if bench.rows:
            bench.write(out, argv)
            print(f"[args_e2e] wrote {out}/args_e2e.json, .md, .png", flush=True)
        signal.signal(signal.SIGTERM, prev_term)   # called in-process (tests): leave no handler behind
    return status


# ----------------------------------------------------------------------------- pytest entry
# `python -m pytest benchmarks/bench_args_e2e.py`: one benchmark per (case, variant) through
# pytest-benchmark, then test_zz_report writes the same outputs as the CLI.  The cases:
# $RGK_ARGS_E2E_FLAGS (CLI flags) when set; else on CUDA the GPU cases (RGK_BENCH_QUICK=1:
# those of _targets.QUICK_CASES), on CPU a tiny random Llama (4 layers, hidden 256: the
# real SmolLM2 with every variant is the CLI's job, not a test suite's).
def _pytest_flags() -> list[str]:
    if os.environ.get("RGK_ARGS_E2E_FLAGS"):
        return shlex.split(os.environ["RGK_ARGS_E2E_FLAGS"])
    if torch.cuda.is_available():
        cases = "llama-3.2-1b:8:1024,smollm2-135m:1:128" if quick() else \
            ",".join(f"{s}:{b}:{p}" for s in ("smollm2-135m", "llama-3.2-1b") for b in (1, 8) for p in (128, 1024))
        return ["--device", "cuda", "--random-weights", "--cases", cases, "--new", "128",
                "--naive-cases", "llama-3.2-1b:8:1024", "--naive-new", "4"] + (["--repeats", "2"] if quick() else [])
    return ["--shapes", "tiny", "--random-weights", "--batch", "2", "--prompt", "64", "--new", "8", "--naive-new", "4"]


_PFLAGS = _pytest_flags()
try:
    _PNS = resolve(parser().parse_args(_PFLAGS), parser())
    _PLAN = [(c, k) for c in _PNS.case_list for k in case_keys(_PNS, c)]
except SystemExit:  # bad $RGK_ARGS_E2E_FLAGS: argparse said why; the tests then fail with it
    _PNS, _PLAN = None, []
_PSTATE: dict = {}


def _pbench() -> Bench:
    if _PNS is None:
        pytest.fail(f"RGK_ARGS_E2E_FLAGS: invalid flags {_PFLAGS}")
    if "bench" not in _PSTATE:
        _PSTATE["bench"] = Bench(_PNS)
    return _PSTATE["bench"]


@pytest.mark.benchmark(group="args-e2e")
@pytest.mark.parametrize("case,key", _PLAN, ids=[f"{c.id(_PNS.new, _PNS.k, _PNS.layers)}-{k}" for c, k in _PLAN])
def test_variant(benchmark, case, key):
    if _PNS.device.type == "cuda" and not torch.cuda.is_available():
        pytest.skip("needs a CUDA device")
    used = []

    def timer(run, rounds):
        used.append(rounds)
        benchmark.pedantic(run, rounds=rounds, iterations=1, warmup_rounds=0)
    try:
        row = _pbench().measure(case, key, timer=timer)
    except Skip as e:
        pytest.skip(str(e))
    if not used:  # the floor: timed inside; keep pytest-benchmark's one call per test
        benchmark.pedantic(lambda: None, rounds=1, iterations=1)
    benchmark.extra_info.update(case=row["case"], variant=key, ms_per_token={n: row["ms"].get(n) for n in row["ms"]})


@pytest.mark.benchmark(group="args-e2e")
def test_zz_report(benchmark, tmp_path_factory):
    """One report of the variants above (same process): tables, targets, PNG."""
    bench = _PSTATE.get("bench")
    if bench is None or not bench.rows:
        pytest.skip("no variant was timed")
    out = os.environ.get("RGK_ARGS_E2E_OUT") or str(tmp_path_factory.mktemp("args_e2e"))
    if os.path.exists(os.path.join(out, "args_e2e.json")) and "--overwrite" not in _PFLAGS:
        pytest.fail(f"RGK_ARGS_E2E_OUT: {out} already holds results of an earlier run; pick another folder")
    bench.write(out, ["(pytest)"] + _PFLAGS)
    benchmark.pedantic(lambda: None, rounds=1, iterations=1)
    assert os.path.exists(os.path.join(out, "args_e2e.json"))


if __name__ == "__main__":
    sys.exit(main())
