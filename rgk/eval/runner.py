"""Shared machinery of `rgk eval`: decoding methods run in seeded batches on one loop, and
the JSON / Markdown writers."""
from __future__ import annotations

import contextlib
import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from tqdm.auto import tqdm

from rgk.eval.metrics import responses
from rgk.hf import left_pad


@dataclass
class Method:
    """One decoding method.  kind: "greedy" (rgk's static loop, exactly HF greedy),
    "nucleus" (HF `generate`, top-p sampling at temperature 1) or "args" (`args_generate`
    with `reward`, k, w, temperature, eos_reward).  editor: an ARGRE editor attached to the
    model while this method decodes (None: unedited)."""
    label: str
    kind: str
    k: int = 10
    w: float = 1.5
    temperature: float = 0.0
    top_p: float = 0.9
    eos_reward: str = "candidate"
    reward: object = None
    editor: object = None
    editor_label: str | None = None
    notes: str = ""

    def __post_init__(self):
        if self.kind not in ("greedy", "nucleus", "args"):
            raise ValueError(f"kind: expected 'greedy', 'nucleus' or 'args', got {self.kind!r}")
        if self.kind == "args" and self.reward is None:
            raise ValueError(f"reward: method {self.label!r} is ARGS and needs a reward")

    def settings(self) -> dict:
        s = {"kind": self.kind}
        if self.kind == "nucleus":
            s.update(top_p=self.top_p, temperature=1.0)
        if self.kind == "args":
            s.update(k=self.k, w=self.w, temperature=self.temperature, eos_reward=self.eos_reward)
        if self.editor is not None:
            s.update(editor=self.editor_label, n_steps=self.editor.n_steps, beta=self.editor.beta,
                     step_size=self.editor.step_size)
        return s


@dataclass
class Generations:
    answers: list[list[int]]          # token ids before EOS, in prompt order
    ended: list[bool]                 # emitted an EOS within the budget
    seconds: float                    # decoding wall time (model calls only)
    extra: dict = field(default_factory=dict)

    @property
    def n_tokens(self) -> int:
        """Tokens the method emitted (EOS included)."""
        return sum(len(a) + int(e) for a, e in zip(self.answers, self.ended))


def eos_ids(model) -> list[int]:
    e = model.generation_config.eos_token_id
    return [int(x) for x in (e if isinstance(e, (list, tuple)) else [e])] if e is not None else []


@torch.no_grad()
def run_method(model, tok, method: Method, prompts: list[list[int]], *, max_new_tokens: int, batch_size: int,
               seed: int = 0, progress: bool = True) -> Generations:
    """Decode every prompt (token ids) with `method`: prompts sorted by length into batches of
    `batch_size` (left padding), batch i seeded with seed * 1_000_003 + i."""
    from rgk.args import args_generate
    from rgk.args.decode import vanilla_generate
    pad = tok.pad_token_id if tok.pad_token_id is not None else 0
    eos = eos_ids(model)
    order = sorted(range(len(prompts)), key=lambda i: (len(prompts[i]), i))
    answers: list = [None] * len(prompts)
    ended: list = [None] * len(prompts)
    seconds = 0.0
    starts = list(range(0, len(order), batch_size))
    for bi, s in enumerate(tqdm(starts, desc=method.label, unit="batch", disable=not progress, leave=False)):
        idx = order[s:s + batch_size]
        ids, mask = left_pad([prompts[i] for i in idx], pad)
        bseed = seed * 1_000_003 + bi
        ctx = method.editor.attach(model) if method.editor is not None else contextlib.nullcontext()
        t0 = time.perf_counter()
        with ctx:
            if method.kind == "greedy":
                seqs = vanilla_generate(model, ids, mask, temperature=0.0, max_new_tokens=max_new_tokens,
                                        pad_token_id=pad)
            elif method.kind == "nucleus":
                torch.manual_seed(bseed)
                seqs = model.generate(ids, attention_mask=mask, do_sample=True, top_p=method.top_p, top_k=0,
                                      temperature=1.0, max_new_tokens=max_new_tokens, pad_token_id=pad)
            else:
                seqs = args_generate(model, ids, mask, reward=method.reward, k=method.k, w=method.w,
                                     temperature=method.temperature, max_new_tokens=max_new_tokens,
                                     pad_token_id=pad, generator=torch.Generator().manual_seed(bseed),
                                     eos_reward=method.eos_reward).sequences
        seconds += time.perf_counter() - t0
        ans, end = responses(seqs, ids.shape[1], eos)
        for j, i in enumerate(idx):
            answers[i], ended[i] = ans[j], end[j]
    return Generations(answers, ended, seconds)


# ----------------------------------------------------------------------------- writing

def clean_json(obj):
    """`obj` with NaN / inf floats as None (strict JSON)."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: clean_json(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [clean_json(v) for v in obj]
    return obj


def output_files(out: str | Path, suffixes: tuple[str, ...]) -> list[Path]:
    """The files `<out><suffix>` a report writes (suffixes appended to the whole name)."""
    out = Path(out)
    if out.suffix in (".md", ".json", ".png"):
        out = out.with_suffix("")
    return [out.with_name(out.name + s) for s in suffixes]


def check_outputs(files: list[Path], overwrite: bool, flag: str = "--out") -> None:
    """FileExistsError naming `flag` when a report file exists and overwrite is off."""
    for f in files:
        if f.is_dir():
            raise IsADirectoryError(f"{flag}: {f} is a folder")
        if f.exists() and not overwrite:
            raise FileExistsError(f"{flag}: {f} exists; pass --overwrite to replace it or choose another --out")


def write_json(path: Path, obj) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(clean_json(obj), indent=1, ensure_ascii=False) + "\n")


def fmt(v, digits: int = 3) -> str:
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return "n/a"
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, int):
        return str(v)
    return f"{v:.{digits}f}"


def fmt_diff(d: dict | None, digits: int = 3, pct: bool = False) -> str:
    """'+0.123 [+0.01, +0.25]*' (* when the interval excludes 0)."""
    vals = [d.get(k) for k in ("diff", "lo", "hi")] if d else [None]
    if any(v is None or not math.isfinite(v) for v in vals):
        return "n/a"
    k = 100.0 if pct else 1.0
    unit = " pp" if pct else ""
    star = "*" if d["significant"] else ""
    return (f"{k * d['diff']:+.{digits}f}{unit} [{k * d['lo']:+.{digits}f}, {k * d['hi']:+.{digits}f}]{star}")


def md_table(headers: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)


def md_text(s: str, limit: int = 160) -> str:
    s = s.replace("`", "'").replace("\n", " ⏎ ").replace("|", "\\|")
    return s if len(s) <= limit else s[:limit] + "…"


@torch.no_grad()
def time_methods(model, tok, methods: list[Method], prompts: list[list[int]], *, max_new_tokens: int,
                 repeats: int = 3, seed: int = 0, progress: bool = True) -> dict[str, dict]:
    """Cost per token measured round-robin: `repeats` rounds, each decoding the same prompts
    (one batch) with every method in turn, so load that drifts over the run (a shared CPU)
    hits every method alike.  Per method: the median over rounds of wall ms / emitted token,
    and the list of rounds."""
    import statistics
    rounds: dict[str, list[float]] = {m.label: [] for m in methods}
    for _ in tqdm(range(repeats), desc="timing rounds", disable=not progress, leave=False):
        for m in methods:
            g = run_method(model, tok, m, prompts, max_new_tokens=max_new_tokens, batch_size=len(prompts),
                           seed=seed, progress=False)
            rounds[m.label].append(1000 * g.seconds / max(1, g.n_tokens))
    return {k: {"ms_per_token": statistics.median(v), "rounds": v, "prompts": len(prompts)}
            for k, v in rounds.items()}
