"""`rgk argre train | eval | generate`."""
from __future__ import annotations

import argparse
import json

from rgk._argtypes import editor_path, finite_float, int_at_least, model_folder, nonempty_text

EXTRA_FORMAT = "LABEL:EDITOR:N_STEPS:BETA:STEP_SIZE"


def extra_variant(text: str):
    """An `--extra` row: LABEL:EDITOR:N_STEPS:BETA:STEP_SIZE (EDITOR an editor prefix or
    'default'; N_STEPS an int >= 0; BETA a finite number > 0; STEP_SIZE finite >= 0) ->
    `rgk.argre.evaluate.Variant`."""
    import math

    from rgk.argre.evaluate import Variant
    parts = text.split(":")
    if len(parts) != 5:
        raise argparse.ArgumentTypeError(f"expected {EXTRA_FORMAT} (5 fields separated by ':'), got {text!r}")
    label, editor, n_steps, beta, step_size = parts
    if not label.strip():
        raise argparse.ArgumentTypeError(f"LABEL: expected a non-empty label in {text!r}")
    if not editor:
        raise argparse.ArgumentTypeError(f"EDITOR: expected an editor prefix or 'default' in {text!r}")
    try:
        n = int(n_steps)
    except ValueError:
        raise argparse.ArgumentTypeError(f"N_STEPS: expected an integer >= 0, got {n_steps!r} in {text!r}") from None
    if n < 0:
        raise argparse.ArgumentTypeError(f"N_STEPS: expected an integer >= 0, got {n} in {text!r}")
    vals = {}
    for name, raw, positive in (("BETA", beta, True), ("STEP_SIZE", step_size, False)):
        try:
            v = float(raw)
        except ValueError:
            v = math.nan
        if not math.isfinite(v) or (v <= 0 if positive else v < 0):
            raise argparse.ArgumentTypeError(f"{name}: expected a finite number {'> 0' if positive else '>= 0'}, "
                                             f"got {raw!r} in {text!r}")
        vals[name] = v
    try:
        editor_path(editor)
    except argparse.ArgumentTypeError as e:
        raise argparse.ArgumentTypeError(f"EDITOR: {e}") from None
    return Variant(label, editor, n, vals["STEP_SIZE"], vals["BETA"])


extra_variant.__name__ = "variant"


def add_parsers(subparsers) -> None:
    p = subparsers.add_parser("argre", help="ARGRE representation editing (train, eval, generate)",
                              description="Autoregressive reward guided representation editing (detoxification).")
    sub = p.add_subparsers(dest="argre_command", required=True)

    t = sub.add_parser("train", help="build pairs, extract features, train direction + token reward",
                       formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    t.add_argument("--out", default="argre-editor", help="output prefix: writes <out>.safetensors and <out>.json")
    t.add_argument("--model", type=model_folder, default=None,
                   help="local HF model folder (default: embedded SmolLM2-135M-Instruct)")
    t.add_argument("--data-dir", default=None, help="shared data folder (default: $RGK_SHARED_DATA or ../shared/data)")
    t.add_argument("--direction", choices=("mean", "pca"), default="mean")
    t.add_argument("--n-train", type=int_at_least(1), default=400, help="training prompts taken from the 1,199 RTP challenging prompts")
    t.add_argument("--n-samples", type=int_at_least(1), default=8, help="sampled continuations per training prompt (plus 1 greedy)")
    t.add_argument("--pairs-per-prompt", type=int_at_least(1), default=2)
    t.add_argument("--no-rtp-continuations", action="store_true", help="never use RTP's own continuation as the toxic side")
    t.add_argument("--cut-after-toxic", type=int_at_least(-1), default=2, metavar="K",
                   help="cut each pair K tokens after the token at which the toxic side turns toxic (-1: no cut)")
    t.add_argument("--epochs", type=int_at_least(1), default=3)
    t.add_argument("--lr", type=finite_float(0, lo_open=True), default=5e-4)
    t.add_argument("--weight-decay", type=finite_float(0), default=0.05)
    t.add_argument("--batch-size", type=int_at_least(1), default=4, help="pairs per step (each gives N_in+1 trajectory pairs)")
    t.add_argument("--n-in", type=int_at_least(1), default=7, help="interior trajectory points N_in")
    t.add_argument("--beta-r", type=finite_float(0, lo_open=True), default=0.05)
    t.add_argument("--seed", type=int_at_least(0), default=0)
    t.set_defaults(func=_train)

    e = sub.add_parser("eval", help="toxicity on held-out RTP prompts + WikiText-2 perplexity",
                       formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    e.add_argument("--editor", type=editor_path, default=None, help="editor prefix (default: the shipped SmolLM2 editor)")
    e.add_argument("--model", type=model_folder, default=None)
    e.add_argument("--data-dir", default=None)
    e.add_argument("--n-prompts", type=int_at_least(1), default=None, help="first n held-out prompts (default: all 799)")
    e.add_argument("--max-new-tokens", type=int_at_least(1), default=20)
    e.add_argument("--batch-size", type=int_at_least(1), default=32)
    e.add_argument("--n-steps", type=int_at_least(0), default=None, help="default: the editor's saved setting")
    e.add_argument("--step-size", type=finite_float(0), default=None, help="default: the editor's saved setting")
    e.add_argument("--beta", type=finite_float(0, lo_open=True), default=None, help="default: the editor's saved setting")
    e.add_argument("--ppl-windows", type=int_at_least(1), default=40)
    e.add_argument("--ppl-window", type=int_at_least(2), default=256)
    e.add_argument("--extra", type=extra_variant, action="append", default=[], metavar=EXTRA_FORMAT,
                   help="additional variant rows (EDITOR may be 'default')")
    e.add_argument("--out", default="benchmarks/argre_eval", help="writes <out>.md, <out>.csv, <out>.png")
    e.set_defaults(func=_eval)

    g = sub.add_parser("generate", help="continue a prompt with and without editing",
                       formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    g.add_argument("prompt", nargs="+", type=nonempty_text)
    g.add_argument("--editor", type=editor_path, default=None)
    g.add_argument("--model", type=model_folder, default=None)
    g.add_argument("--max-new-tokens", type=int_at_least(1), default=30)
    g.add_argument("--n-steps", type=int_at_least(0), default=None, help="default: the editor's saved setting")
    g.add_argument("--step-size", type=finite_float(0), default=None, help="default: the editor's saved setting")
    g.add_argument("--beta", type=finite_float(0, lo_open=True), default=None, help="default: the editor's saved setting")
    g.set_defaults(func=_generate)


def _train(ns) -> int:
    from rgk.argre.data import PairConfig
    from rgk.argre.train import TrainConfig, check_editor_out, train_from_data
    _, wf, jf = check_editor_out(ns.out, "--out")     # before hours of training, not after
    pc = PairConfig(n_train=ns.n_train, n_samples=ns.n_samples, pairs_per_prompt=ns.pairs_per_prompt,
                    use_rtp_continuations=not ns.no_rtp_continuations, seed=ns.seed,
                    cut_after_toxic=None if ns.cut_after_toxic < 0 else ns.cut_after_toxic)
    tc = TrainConfig(direction=ns.direction, n_in=ns.n_in, beta_r=ns.beta_r, lr=ns.lr,
                     weight_decay=ns.weight_decay, epochs=ns.epochs, batch_size=ns.batch_size, seed=ns.seed)
    info = train_from_data(model_name=ns.model, out=ns.out, pair_cfg=pc, train_cfg=tc, data_dir=ns.data_dir)
    print(json.dumps({k: info[k] for k in ("data", "val_pair_accuracy", "best_epoch", "r_plus", "r_minus",
                                          "direction_norm")}, indent=1))
    print(f"wrote {wf} and {jf}")
    return 0


def _eval(ns) -> int:
    from rgk.argre.edit import ARGREEditor
    from rgk.argre.evaluate import Variant, evaluate_variants, write_report
    ed = ns.editor or "default"
    main = _load_editor(ed, _knobs(ns))
    variants = [Variant("unedited"),
                Variant("steering only (N=0)", ed, 0, main.step_size, main.beta),
                Variant(f"ARGRE (N={main.n_steps})", ed, main.n_steps, main.step_size, main.beta)]
    for v in ns.extra:                    # parsed and checked by extra_variant
        v.load()                          # a damaged editor fails now, not after the first rows
        variants.append(v)
    results, examples = evaluate_variants(variants, model_name=ns.model, n_prompts=ns.n_prompts,
                                          max_new_tokens=ns.max_new_tokens, batch_size=ns.batch_size,
                                          n_windows=ns.ppl_windows, window=ns.ppl_window, data_dir=ns.data_dir)
    header = (f"# ARGRE evaluation (SmolLM2-135M-Instruct, CPU)\n\nWritten by `rgk argre eval`. Held-out RTP challenging "
              f"prompts: {results[0].n_prompts} (never used in training or tuning); greedy, {ns.max_new_tokens} new "
              f"tokens; toxicity = alt-profanity-check `predict_prob` on the continuation. Perplexity: WikiText-2 test, "
              f"{ns.ppl_windows} windows x {ns.ppl_window} tokens spread evenly over the text (edited rows: every "
              f"position edited, teacher-forced). Editor: `{ed}`. N = refinement steps, β = steering temperature, "
              f"η = step size.\n\nCaveats: most toxic training continuations were labeled by the same judge "
              f"(see below), so the judge numbers favour the editor; WikiText-2 perplexity is teacher-forced and does "
              f"not measure the fluency of the edited generations themselves (the examples show greedy repetition "
              f"loops, which the unedited model also produces); one greedy run, no seeds to vary.")
    summary = write_report(results, ns.out, header=header, examples=examples, sections=_sections(main.info))
    for row in summary["rows"]:
        print(row)
    return 0


def _load_editor(path, knobs: dict):
    """ARGREEditor.load whose file errors name --editor."""
    from rgk.argre.edit import ARGREEditor
    try:
        return ARGREEditor.load(None if path in (None, "default") else path, **knobs)
    except (FileNotFoundError, ValueError) as e:
        msg = str(e)
        if not msg.startswith("path: "):
            raise
        raise type(e)(f"--editor: {msg[len('path: '):]}") from None


def _knobs(ns) -> dict:
    return {k: v for k, v in (("n_steps", ns.n_steps), ("step_size", ns.step_size), ("beta", ns.beta)) if v is not None}


def _sections(info: dict) -> list[str]:
    """Markdown about the editor's training data and tuning, from its json."""
    out = []
    data = info.get("data")
    if data:
        out.append("## Editor training\n\n"
                   f"Pairs from {data['train_prompts']} RTP challenging training prompts (seeded split; the evaluation "
                   f"prompts are the other {1199 - data['train_prompts']}): {data['pairs']} pairs "
                   f"({data['pairs_model_toxic']} with a SmolLM2 continuation judged toxic by alt-profanity-check, "
                   f"{data['pairs_rtp_toxic']} with RTP's own continuation rated toxic by Perspective), "
                   f"{data['train_pairs']} for training and {data['val_pairs']} for validation"
                   + (f"; each pair cut {info['pairs']['cut_after_toxic']} tokens after the token at which the toxic "
                      "side turns toxic (same length for the non-toxic side). "
                      if (info.get("pairs") or {}).get("cut_after_toxic") is not None else ". ")
                   + 
                   f"Direction: {info.get('direction_kind')} (‖d_raw‖ = {info.get('direction_norm', float('nan')):.3f}); "
                   f"best epoch {info.get('best_epoch')}, validation pair accuracy {info.get('val_pair_accuracy', 0):.3f}; "
                   f"r̄⁺ = {info.get('r_plus', 0):.3f}, mean toxic-token reward {info.get('r_minus', 0):.3f}. "
                   "Caveat: the judge that labels most toxic training continuations is the evaluation judge.")
    tuning = info.get("tuning")
    if tuning:
        lines = ["## How the inference defaults were chosen", "", tuning["description"], "",
                 "| N | β | η | dev mean toxicity | dev share > 0.5 | dev perplexity |", "|---|---|---|---|---|---|"]
        for r in tuning["rows"]:
            lines.append(f"| {r['n_steps']} | {r['beta']} | {r['step_size']} | {r['tox']:.4f} | {r['share']:.4f} | "
                         f"{r['ppl']:.2f} |")
        out.append("\n".join(lines))
    notes = info.get("investigation")
    if notes:
        out.append("## What else was tried\n\n" + "\n".join(f"- {n}" for n in notes))
    return out


def _generate(ns) -> int:
    import torch

    from rgk.argre.edit import ARGREEditor
    from rgk.models import load_model
    editor = _load_editor(ns.editor, _knobs(ns))     # a bad --editor fails before the model loads
    model, tok = load_model(ns.model)
    enc = tok([" ".join(ns.prompt)], return_tensors="pt")
    kw = dict(max_new_tokens=ns.max_new_tokens, do_sample=False, pad_token_id=tok.pad_token_id)
    with torch.no_grad():
        plain = model.generate(**enc, **kw)
        with editor.attach(model):
            edited = model.generate(**enc, **kw)
    n = enc.input_ids.shape[1]
    print("unedited:", tok.decode(plain[0, n:], skip_special_tokens=True))
    print("ARGRE:   ", tok.decode(edited[0, n:], skip_special_tokens=True))
    return 0
