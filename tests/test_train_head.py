"""Tests of rgk.train_head: HH-RLHF parsing, Bradley–Terry training, the data split,
head save/load and standardisation, feature extraction with left padding, the CLI's
argument checks and the shipped default head.  All CPU, a few seconds in total."""
from __future__ import annotations

import argparse
import gzip
import json
import math

import pytest
import torch

from rgk import models, train_head as th
from rgk.models import RewardHead, RewardHeadConfig
from rgk.ops.reference import reward_head as reward_head_ref


# ----------------------------------------------------------------------------- parsing

SINGLE = "\n\nHuman: What is 2+2?\n\nAssistant: It is 4."
MULTI = ("\n\nHuman: what are some pranks with a pen i can do?"
         "\n\nAssistant: Are you looking for practical joke ideas?"
         "\n\nHuman: yep"
         "\n\nAssistant: Ok, here are two.\n\n1. Draw a smiley.\n\n2. Hide the cap.  ")


def test_parse_single_turn():
    assert th.parse_hh_dialogue(SINGLE) == [
        {"role": "user", "content": "What is 2+2?"},
        {"role": "assistant", "content": "It is 4."}]


def test_parse_multi_turn_keeps_inner_paragraphs():
    msgs = th.parse_hh_dialogue(MULTI)
    assert [m["role"] for m in msgs] == ["user", "assistant", "user", "assistant"]
    assert msgs[0]["content"] == "what are some pranks with a pen i can do?"
    assert msgs[2]["content"] == "yep"
    # blank lines inside a turn are content, not turn boundaries; outer whitespace is stripped
    assert msgs[3]["content"] == "Ok, here are two.\n\n1. Draw a smiley.\n\n2. Hide the cap."


@pytest.mark.parametrize("bad", [
    "\n\nAssistant: hi",                                       # starts with the assistant
    "\n\nHuman: hi",                                           # no assistant turn
    "\n\nHuman: a\n\nHuman: b\n\nAssistant: c",                # not alternating
    "\n\nHuman: a\n\nAssistant:",                              # empty final response
    "preamble\n\nHuman: a\n\nAssistant: b",                    # text before the first turn
    "no markers at all",
])
def test_parse_rejects_malformed(bad):
    with pytest.raises(ValueError):
        th.parse_hh_dialogue(bad)


class _ChatTok:
    """Stand-in for SmolLM2's chat template (same text format)."""

    def apply_chat_template(self, messages, tokenize=False, add_generation_prompt=False):
        s = "<|im_start|>system\nSYS<|im_end|>\n" if messages[0]["role"] != "system" else ""
        for m in messages:
            s += f"<|im_start|>{m['role']}\n{m['content']}<|im_end|>\n"
        return s + ("<|im_start|>assistant\n" if add_generation_prompt else "")


def test_render_is_prompt_plus_response_without_end_marker():
    msgs = th.parse_hh_dialogue(MULTI)
    text = th.render_dialogue(_ChatTok(), msgs)
    prompt = _ChatTok().apply_chat_template(msgs[:-1], add_generation_prompt=True)
    assert text == prompt + msgs[-1]["content"]
    assert text.endswith("2. Hide the cap.") and text.count("<|im_start|>user") == 2


def test_render_with_real_smollm2_template():
    path = models.cache_dir() / models.DEFAULT_MODEL
    if not (path / "tokenizer_config.json").exists():
        pytest.skip("converted default model not cached")
    from transformers import AutoTokenizer
    tok = AutoTokenizer.from_pretrained(path)
    text = th.render_dialogue(tok, th.parse_hh_dialogue(SINGLE))
    assert text.endswith("<|im_start|>user\nWhat is 2+2?<|im_end|>\n<|im_start|>assistant\nIt is 4.")


def _write_hh(path, records):
    with gzip.open(path, "wt", encoding="utf-8") as fh:
        for r in records:
            fh.write(json.dumps(r) + "\n")


def test_load_hh_pairs_filters_and_selects(tmp_path):
    hh = tmp_path / "hh_rlhf"
    hh.mkdir()
    good = [{"chosen": f"\n\nHuman: q{i}\n\nAssistant: good {i}",
             "rejected": f"\n\nHuman: q{i}\n\nAssistant: bad {i}"} for i in range(30)]
    bad = [{"chosen": SINGLE, "rejected": SINGLE},                                 # identical
           {"chosen": "\n\nAssistant: x", "rejected": "\n\nHuman: q\n\nAssistant: y"},  # unparsable
           {"chosen": "\n\nHuman: q\n\nAssistant: y", "rejected": "\n\nHuman: q\n\nAssistant:"}]
    _write_hh(hh / "harmless-base_test.jsonl.gz", good[:20] + bad)
    _write_hh(hh / "mine.jsonl.gz", good[20:])
    pairs = th.load_hh_pairs(["harmless-base", "mine.jsonl.gz"], data_dir=tmp_path)
    assert len(pairs) == 30
    assert pairs[0].chosen[-1]["content"] == "good 0" and pairs[0].rejected[-1]["content"] == "bad 0"
    assert pairs[25].source == "mine.jsonl.gz"
    a = th.load_hh_pairs(["harmless-base", "mine.jsonl.gz"], data_dir=tmp_path, n_pairs=10)
    b = th.load_hh_pairs(["harmless-base", "mine.jsonl.gz"], data_dir=tmp_path, n_pairs=10)
    assert len(a) == 10 and [p.chosen for p in a] == [p.chosen for p in b]


def test_shared_data_dir_env_and_missing(tmp_path, monkeypatch):
    monkeypatch.setenv("RGK_SHARED_DATA", str(tmp_path))
    assert th.shared_data_dir() == tmp_path
    monkeypatch.setenv("RGK_SHARED_DATA", str(tmp_path / "nope"))
    with pytest.raises(FileNotFoundError, match="RGK_SHARED_DATA"):
        th.load_hh_pairs()


def test_real_hh_files_parse(shared_dir):
    pairs = th.load_hh_pairs(["harmless-base"], data_dir=f"{shared_dir}/data")
    assert 2250 < len(pairs) <= 2312          # a handful are dropped (non-alternating, empty)


def test_feature_cache_key(tmp_path, monkeypatch):
    monkeypatch.setenv("RGK_CACHE_DIR", str(tmp_path))
    f = tmp_path / "a.jsonl.gz"
    _write_hh(f, [])
    p = th.feature_cache_path(None, [f], 100, 128)
    assert p.parent == tmp_path / "features"
    assert p == th.feature_cache_path(None, [f], 100, 128)
    assert len({p, th.feature_cache_path(None, [f], 101, 128),
                th.feature_cache_path(None, [f], 100, 64),
                th.feature_cache_path(str(tmp_path), [f], 100, 128)}) == 4


# ----------------------------------------------------------------------------- training

def test_bt_loss_hand_computed():
    rc, rr = torch.tensor([2.0, 0.0, 0.5]), torch.tensor([1.0, 1.0, 0.5])
    want = (math.log1p(math.exp(-1.0)) + math.log1p(math.exp(1.0)) + math.log(2.0)) / 3
    assert th.bt_loss(rc, rr).item() == pytest.approx(want, rel=1e-6)
    assert th.pair_accuracy(rc, rr) == pytest.approx((1 + 0 + 0.5) / 3)


def test_split_is_deterministic_and_disjoint():
    tr, va = th.split_indices(1000, 0.1, seed=0)
    tr2, va2 = th.split_indices(1000, 0.1, seed=0)
    assert torch.equal(tr, tr2) and torch.equal(va, va2)
    assert len(va) == 100 and len(tr) == 900
    assert sorted(torch.cat([tr, va]).tolist()) == list(range(1000))
    _, va3 = th.split_indices(1000, 0.1, seed=1)
    assert not torch.equal(va, va3)
    with pytest.raises(ValueError, match="val_frac"):
        th.split_indices(10, 1.0)


def _synthetic(n=600, d=24, seed=0):
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(d, generator=g)
    a = torch.randn(n, d, generator=g) * 3 + 5       # offset/scale like real hidden states
    b = torch.randn(n, d, generator=g) * 3 + 5
    swap = (a @ w) < (b @ w)
    chosen = torch.where(swap[:, None], b, a)
    rejected = torch.where(swap[:, None], a, b)
    return chosen, rejected


@pytest.mark.parametrize("kind", ["linear", "mlp"])
def test_training_separable_reaches_high_accuracy_and_is_standardised(kind):
    torch.manual_seed(0)
    chosen, rejected = _synthetic()
    res = th.train_reward_head(chosen, rejected, kind=kind, mlp_size=32, epochs=15, lr=1e-2,
                               weight_decay=0.0, seed=0)
    assert res.val_pair_accuracy > 0.9 and res.n_val == 60 and res.n_train == 540
    assert 1 <= res.best_epoch <= 15
    head = res.head
    assert head.config.val_pair_accuracy == pytest.approx(res.val_pair_accuracy)
    tr, va = th.split_indices(600, 0.1, 0)
    with torch.no_grad():
        # the returned head (normalisation folded in) reproduces the validation accuracy
        assert th.pair_accuracy(head(chosen[va]), head(rejected[va])) == pytest.approx(res.val_pair_accuracy)
        # standardised: training responses have mean 0, std 1
        r = torch.cat([head(chosen[tr]), head(rejected[tr])])
        assert abs(r.mean().item()) < 1e-4 and r.std().item() == pytest.approx(1.0, abs=1e-4)
        # folded params == scale * raw + shift
        raw = th._raw_reward(head, chosen)
        assert torch.allclose(head(chosen), head.config.scale * raw + head.config.shift, atol=1e-4)


@pytest.mark.parametrize("kind,m", [("linear", 0), ("mlp", 8)])
def test_head_save_load_round_trip_and_folding(tmp_path, kind, m):
    torch.manual_seed(1)
    head = RewardHead(RewardHeadConfig(hidden_size=16, kind=kind, mlp_size=m, scale=2.5,
                                       shift=-0.75, val_pair_accuracy=0.6, notes="x"))
    h = torch.randn(5, 16)
    with torch.no_grad():
        raw = th._raw_reward(head, h)
        want = 2.5 * raw - 0.75
        assert torch.allclose(head(h), want, atol=1e-5)
        assert torch.allclose(reward_head_ref(h, *head.params()), want, atol=1e-5)
    head.save(tmp_path / "h")
    back = RewardHead.load(tmp_path / "h.json")
    assert back.config == head.config
    with torch.no_grad():
        assert torch.allclose(back(h), head(h), atol=1e-6)


def test_shipped_default_head():
    head = RewardHead.load(None)
    cfg = head.config
    assert cfg.hidden_size == 576 and cfg.base_model == models.DEFAULT_MODEL
    assert cfg.val_pair_accuracy is not None and cfg.val_pair_accuracy > 0.5
    notes = json.loads(cfg.notes)
    assert notes["n_train"] > notes["n_val"] > 0 and notes["files"] and "seed" in notes
    assert notes["val_pair_accuracy"] == pytest.approx(cfg.val_pair_accuracy)
    with torch.no_grad():
        assert torch.isfinite(head(torch.randn(3, 576))).all()


# ----------------------------------------------------------------------------- features

def test_left_padded_extraction_equals_unpadded_tiny_llama():
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=128, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256)
    model = LlamaForCausalLM(cfg).eval()
    g = torch.Generator().manual_seed(0)
    seqs = [torch.randint(1, 128, (n,), generator=g).tolist() for n in (5, 40, 17, 1, 33, 60, 9, 24)]
    max_tokens = 32
    got = th.extract_features(model, seqs, max_tokens=max_tokens, batch_size=3, pad_id=0,
                              progress=False)
    with torch.no_grad():
        want = torch.stack([models.final_hidden(model, torch.tensor([s[-max_tokens:]]))[0, -1]
                            for s in seqs])
    assert got.dtype == torch.float32 and got.shape == (len(seqs), 64)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=0)


# ----------------------------------------------------------------------------- CLI

def _parser():
    p = argparse.ArgumentParser(prog="rgk")
    th.add_parser(p.add_subparsers(dest="command", required=True))
    return p


@pytest.mark.parametrize("args,name", [
    (["--n-pairs", "0"], "--n-pairs"),
    (["--n-pairs", "many"], "--n-pairs"),
    (["--max-tokens", "1"], "--max-tokens"),
    (["--epochs", "0"], "--epochs"),
    (["--lr", "-1"], "--lr"),
    (["--lr", "nan"], "--lr"),
    (["--val-frac", "1.5"], "--val-frac"),
    (["--mlp-size", "0"], "--mlp-size"),
    (["--seed", "-3"], "--seed"),
    (["--kind", "tree"], "--kind"),
    (["--out", "x", "--install-default"], "--install-default"),
])
def test_cli_parse_errors_name_the_argument(capsys, args, name):
    with pytest.raises(SystemExit) as e:
        _parser().parse_args(["train-reward-head", *args])
    assert e.value.code == 2
    assert name in capsys.readouterr().err


@pytest.mark.parametrize("args,name", [
    (["--kind", "linear", "--mlp-size", "8"], "--mlp-size"),
    (["--files", "no-such-file"], "--files"),
    (["--n-pairs", "10", "--val-frac", "0.99"], "--val-frac"),
    (["--model", "/no/such/model"], "--model"),
])
def test_cli_semantic_errors_name_the_argument(tmp_path, args, name):
    (tmp_path / "hh_rlhf").mkdir()
    ns = _parser().parse_args(["train-reward-head", "--data-dir", str(tmp_path), *args])
    with pytest.raises(SystemExit) as e:
        ns.func(ns)
    assert name in str(e.value.code)


def test_cli_missing_data_dir_names_the_argument(tmp_path):
    ns = _parser().parse_args(["train-reward-head", "--data-dir", str(tmp_path / "absent")])
    with pytest.raises(SystemExit) as e:
        ns.func(ns)
    assert "--data-dir" in str(e.value.code)


def test_cli_defaults():
    ns = _parser().parse_args(["train-reward-head"])
    assert ns.func is th.run_train_command
    assert (ns.n_pairs, ns.max_tokens, ns.kind, ns.seed, ns.val_frac) == (2000, 128, "linear", 0, 0.1)
    assert ns.out is None and not ns.install_default
    assert models.DATA_DIR not in th.default_out_path(None).parents
