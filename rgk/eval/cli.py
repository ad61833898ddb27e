"""`rgk eval args | detox | eos-probe | train-judge`."""
from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path

from rgk._argtypes import finite_float, head_path, int_at_least, model_folder

JUDGE_HEAD = Path(__file__).resolve().parents[1] / "data" / "heads" / "smollm2-hh-rs"
TOX_HEAD = Path(__file__).resolve().parents[1] / "data" / "heads" / "smollm2-rtp-tox"


def _command(ns) -> str:
    return "rgk " + " ".join(shlex.quote(a) for a in getattr(ns, "argv", sys.argv[1:]))


def _common(p, out_default: str):
    p.add_argument("--model", type=model_folder, default=None,
                   help="local HF model folder (default: embedded SmolLM2-135M-Instruct)")
    p.add_argument("--data-dir", default=None, help="shared data folder (default: $RGK_SHARED_DATA or ../shared/data)")
    p.add_argument("--seed", type=int_at_least(0), default=0, help="prompt order, sampling and bootstrap seed")
    p.add_argument("--n-boot", type=int_at_least(100), default=2000, help="bootstrap resamples")
    p.add_argument("--out", default=out_default, help="writes <out>.json, <out>.md and <out>.png")
    p.add_argument("--overwrite", action="store_true", help="replace existing report files")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")


def add_parsers(subparsers) -> None:
    p = subparsers.add_parser("eval", help="measure quality and cost: ARGS on HH-RLHF, detoxification on RTP",
                              description="Evaluation with held-out prompts, two judges per task, paired "
                                          "bootstrap intervals, JSON + Markdown + PNG reports.")
    sub = p.add_subparsers(dest="eval_command", required=True)
    fmt = argparse.ArgumentDefaultsHelpFormatter

    a = sub.add_parser("args", help="greedy / nucleus / ARGS greedy / ARGS stochastic (+ k, w sweep) on held-out "
                       "HH-RLHF prompts", formatter_class=fmt)
    a.add_argument("--n-prompts", type=int_at_least(2), default=300)
    a.add_argument("--max-new-tokens", type=int_at_least(1), default=64)
    a.add_argument("--batch-size", type=int_at_least(1), default=16)
    a.add_argument("--k", type=int_at_least(1), default=10)
    a.add_argument("--w", type=finite_float(), default=1.5)
    a.add_argument("--temperature", type=finite_float(0, lo_open=True), default=1.0, help="ARGS stochastic τ")
    a.add_argument("--top-p", type=finite_float(0, 1, lo_open=True), default=0.9, help="nucleus sampling")
    a.add_argument("--sweep-k", type=int_at_least(1), nargs="*", default=[5, 10, 20])
    a.add_argument("--sweep-w", type=finite_float(), nargs="*", default=[0.5, 1.5, 3.0])
    a.add_argument("--no-eos-prefix", action="store_true", help="skip the ARGS eos_reward='prefix' row")
    a.add_argument("--head", type=head_path, default=None, help="guiding head (default: the shipped HH head)")
    a.add_argument("--judge-head", type=head_path, default=str(JUDGE_HEAD),
                   help="second head, trained on a split disjoint from the guiding head's")
    a.add_argument("--max-prompt-tokens", type=int_at_least(8), default=256)
    a.add_argument("--timing-repeats", type=int_at_least(0), default=0,
                   help="extra round-robin timing rounds over one batch (0: time the run itself)")
    a.add_argument("--timing-prompts", type=int_at_least(1), default=None,
                   help="prompts in the timing batch (default: --batch-size)")
    _common(a, "benchmarks/eval/hh")
    a.set_defaults(func=_args)

    d = sub.add_parser("detox", help="ARGS-detox, ARGRE and both on held-out RealToxicityPrompts", formatter_class=fmt)
    d.add_argument("--n-prompts", type=int_at_least(2), default=None, help="first n prompts (default: all)")
    d.add_argument("--prompts", choices=("heldout", "train"), default="heldout",
                   help="heldout: the 799 evaluation prompts; train: the 400 editor-training prompts (development)")
    d.add_argument("--max-new-tokens", type=int_at_least(1), default=20)
    d.add_argument("--batch-size", type=int_at_least(1), default=32)
    d.add_argument("--k", type=int_at_least(1), nargs="+", default=[10],
                   help="ARGS-detox candidate counts (one row per k and w)")
    d.add_argument("--w", type=finite_float(), nargs="+", default=[1.0, 2.0, 4.0], help="ARGS-detox weights")
    d.add_argument("--combo-w", type=finite_float(), nargs="+", default=[2.0], help="w of the ARGS + ARGRE rows")
    d.add_argument("--combo-k", type=int_at_least(1), default=None, help="k of the ARGS + ARGRE rows (default: first --k)")
    d.add_argument("--no-combo", action="store_true", help="skip the ARGS + ARGRE rows")
    d.add_argument("--no-argre", action="store_true",
                   help="skip the two ARGRE-only rows (a development sweep of ARGS-detox)")
    d.add_argument("--tox-head", type=head_path, default=str(TOX_HEAD),
                   help="toxicity reward head (reward = logit P(non-toxic))")
    d.add_argument("--editor", default=None, help="ARGRE editor prefix (default: the shipped editor)")
    d.add_argument("--judge", default=None, help="MiniLM-Perspective judge prefix (default: the shipped judge)")
    d.add_argument("--ppl-windows", type=int_at_least(1), default=40)
    d.add_argument("--ppl-window", type=int_at_least(2), default=256)
    d.add_argument("--timing-repeats", type=int_at_least(0), default=3,
                   help="round-robin timing rounds over one batch for the ms / token column (0: time the run itself)")
    d.add_argument("--timing-prompts", type=int_at_least(1), default=None,
                   help="prompts in the timing batch (default: --batch-size)")
    _common(d, "benchmarks/eval/detox")
    d.set_defaults(func=_detox)

    e = sub.add_parser("eos-probe", help="does the guiding head score the EOS candidate low?", formatter_class=fmt)
    e.add_argument("--n-prompts", type=int_at_least(1), default=16)
    e.add_argument("--max-new-tokens", type=int_at_least(2), default=48)
    e.add_argument("--batch-size", type=int_at_least(1), default=16)
    e.add_argument("--k", type=int_at_least(1), default=10)
    e.add_argument("--w", type=finite_float(), default=1.5)
    e.add_argument("--head", type=head_path, default=None)
    e.add_argument("--judge-head", type=head_path, default=str(JUDGE_HEAD),
                   help="its training pairs are excluded from the prompts too")
    _common(e, "benchmarks/eval/eos_probe")
    e.set_defaults(func=_eos_probe)

    r = sub.add_parser("report", help="re-render the Markdown and PNG of a saved `rgk eval args|detox` JSON",
                       formatter_class=fmt)
    r.add_argument("json", help="a report JSON written by `rgk eval args` or `rgk eval detox`")
    r.add_argument("--overwrite", action="store_true", help="replace the existing .md / .png beside it")
    r.set_defaults(func=_report)

    j = sub.add_parser("train-judge", help="fit the MiniLM-Perspective toxicity judge", formatter_class=fmt)
    j.add_argument("--out", default=None, help="judge prefix (default: the shipped rgk/data/judges/perspective-minilm)")
    j.add_argument("--l2", type=finite_float(0), default=1e-3)
    j.add_argument("--data-dir", default=None)
    j.add_argument("--seed", type=int_at_least(0), default=0)
    j.add_argument("--overwrite", action="store_true")
    j.set_defaults(func=_train_judge)


def _load_head(path, flag):
    from rgk._argtypes import load_head_arg
    return load_head_arg(path, flag)


def _files(ns):
    from rgk.eval.runner import check_outputs, output_files
    files = output_files(ns.out, (".json", ".md", ".png"))
    check_outputs(files, ns.overwrite)
    return files


def _args(ns) -> int:
    from rgk.eval.args_eval import hh_eval, write_hh_report
    from rgk.models import DEFAULT_HEAD
    files = _files(ns)                                # before minutes of decoding, not after
    head = _load_head(ns.head or DEFAULT_HEAD, "--head")
    judge = _load_head(ns.judge_head, "--judge-head")
    rep = hh_eval(n_prompts=ns.n_prompts, max_new_tokens=ns.max_new_tokens, batch_size=ns.batch_size, k=ns.k,
                  w=ns.w, temperature=ns.temperature, top_p=ns.top_p, sweep_k=ns.sweep_k, sweep_w=ns.sweep_w,
                  eos_prefix=not ns.no_eos_prefix, head=head, judge_head=judge, seed=ns.seed, n_boot=ns.n_boot,
                  max_prompt_tokens=ns.max_prompt_tokens, model_name=ns.model, data_dir=ns.data_dir,
                  progress=not ns.no_progress, command=_command(ns),
                  head_paths=(ns.head or "rgk/data/heads/smollm2-hh", ns.judge_head),
                  timing_repeats=ns.timing_repeats, timing_prompts=ns.timing_prompts)
    write_hh_report(rep, files)
    print(f"wrote {', '.join(str(f) for f in files)}")
    return 0


def _detox(ns) -> int:
    from rgk.eval.detox_eval import detox_eval, write_detox_report
    from rgk.eval.judges import PerspectiveJudge
    files = _files(ns)
    tox = _load_head(ns.tox_head, "--tox-head")
    if ns.editor is not None:
        from rgk._argtypes import editor_path
        try:
            editor_path(ns.editor)
        except argparse.ArgumentTypeError as e:
            raise FileNotFoundError(f"--editor: {e}") from None
    try:
        judge = PerspectiveJudge.load(ns.judge)
    except FileNotFoundError as e:
        raise FileNotFoundError(f"--judge: {str(e).split(': ', 1)[1]}") from None
    rep = detox_eval(tox_head=tox, n_prompts=ns.n_prompts, split=ns.prompts, max_new_tokens=ns.max_new_tokens,
                     batch_size=ns.batch_size, k=ns.k, ws=ns.w, combo_w=None if ns.no_combo else ns.combo_w,
                     combo_k=ns.combo_k, argre=not ns.no_argre,
                     editor=None if ns.editor in (None, "default") else ns.editor, judge=judge,
                     ppl_windows=ns.ppl_windows, ppl_window=ns.ppl_window, seed=ns.seed, n_boot=ns.n_boot,
                     model_name=ns.model, data_dir=ns.data_dir, progress=not ns.no_progress, command=_command(ns),
                     tox_head_path=ns.tox_head, timing_repeats=ns.timing_repeats,
                     timing_prompts=ns.timing_prompts)
    write_detox_report(rep, files)
    if ns.prompts == "train":
        from rgk.eval.detox_eval import select_setting
        sel = select_setting(rep)
        print("development choice: " + ("none inside the perplexity budget" if sel is None else
                                        f"k={sel['k']} w={sel['w']:g}"))
    print(f"wrote {', '.join(str(f) for f in files)}")
    return 0


def _eos_probe(ns) -> int:
    from rgk.eval.args_eval import eos_probe
    from rgk.eval.runner import check_outputs, output_files, write_json
    from rgk.models import DEFAULT_HEAD
    jf, mdf = output_files(ns.out, (".json", ".md"))
    check_outputs([jf, mdf], ns.overwrite)
    head = _load_head(ns.head or DEFAULT_HEAD, "--head")
    judge = _load_head(ns.judge_head, "--judge-head")
    rep = eos_probe(n_prompts=ns.n_prompts, max_new_tokens=ns.max_new_tokens, k=ns.k, w=ns.w,
                    batch_size=ns.batch_size, seed=ns.seed, head=head, judge_head=judge, model_name=ns.model,
                    data_dir=ns.data_dir, progress=not ns.no_progress, command=_command(ns))
    write_json(jf, rep)
    s = rep["summary"]
    lines = ["# Does the guiding head score the EOS candidate low?", "", f"Command: `{rep['command']}`", "",
             f"ARGS greedy (k={ns.k}, w={ns.w:g}) on {ns.n_prompts} held-out HH-RLHF prompts, {ns.max_new_tokens} "
             "new tokens; every step (after the first) where EOS was among the k candidates and the row had not "
             "finished. Rewards: standardised units of the guiding head.", ""]
    for key, v in s.items():
        if key != "gap_ci":
            name = key.replace("_", " ")
            lines.append(f"- {name}: {v:.3f}" if isinstance(v, float) else f"- {name}: {v}")
    if "gap_ci" in s:
        g = s["gap_ci"]
        lines.append(f"- EOS − prefix reward, 95% bootstrap CI: [{g['lo']:+.3f}, {g['hi']:+.3f}]")
    mdf.write_text("\n".join(lines) + "\n")
    print("\n".join(lines[6:]))
    print(f"wrote {jf}, {mdf}")
    return 0


def _train_judge(ns) -> int:
    from rgk.eval.judges import DEFAULT_JUDGE, train_perspective_judge
    out = Path(ns.out) if ns.out else DEFAULT_JUDGE
    from rgk.eval.runner import check_outputs, output_files
    files = output_files(out, (".json", ".safetensors"))
    check_outputs(files, ns.overwrite)
    judge = train_perspective_judge(data_dir=ns.data_dir, l2=ns.l2, seed=ns.seed)
    judge.info["command"] = _command(ns)
    judge.save(out)
    i = judge.info
    print(f"validation AUC {i['val_auc']} (n_val={i['n_val']}); held-out check AUC "
          f"{i['heldout_check']['auc_this_judge']}"
          f" (alt-profanity-check {i['heldout_check']['auc_alt_profanity_check']})")
    print(f"wrote {files[0]} and {files[1]}")
    return 0


def _report(ns) -> int:
    import json

    from rgk.eval.runner import check_outputs, output_files
    jf = Path(ns.json)
    if not jf.is_file():
        raise FileNotFoundError(f"json: {jf} does not exist")
    try:
        rep = json.loads(jf.read_text())
        kind = rep["kind"]
    except (ValueError, KeyError, TypeError):
        raise ValueError(f"json: {jf} is not a report written by `rgk eval args` or `rgk eval detox`") from None
    files = output_files(jf, (".json", ".md", ".png"))
    try:
        check_outputs(files[1:], ns.overwrite)
    except FileExistsError as e:
        raise FileExistsError(str(e).replace("--out: ", "json: ").replace("or choose another --out",
                                                                           "or move it away")) from None
    if kind == "rgk eval args":
        from rgk.eval.args_eval import write_hh_report as write
    elif kind == "rgk eval detox":
        from rgk.eval.detox_eval import write_detox_report as write
    else:
        raise ValueError(f"json: {jf} holds a {kind!r} report; only `rgk eval args` and `rgk eval detox` reports "
                         "are rendered")
    write(rep, files, with_json=False)
    print(f"wrote {files[1]} and {files[2]}")
    return 0
