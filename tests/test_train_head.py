"""Tests of reward-head training (rgk.heads.data, rgk.heads.train,
rgk.heads.cli): HH-RLHF parsing, Bradley–Terry training, the data split, head
save/load (names, atomic writes, damaged files) and standardisation, the one reward MLP,
feature extraction with left padding and its cache, the CLI's argument checks and the
shipped default head.  All CPU, a few seconds in total."""
from __future__ import annotations

import argparse
import gzip
import json
import math

import pytest
import torch

from rgk import models
from rgk.heads import cli as cth
from rgk.heads import data as hd
from rgk.heads import train as ht
from rgk.models import RewardHead, RewardHeadConfig, RewardMLP
from rgk.ops.reference import reward_head as reward_head_ref


# ----------------------------------------------------------------------------- parsing

SINGLE = "\n\nHuman: What is 2+2?\n\nAssistant: It is 4."
MULTI = ("\n\nHuman: what are some pranks with a pen i can do?"
         "\n\nAssistant: Are you looking for practical joke ideas?"
         "\n\nHuman: yep"
         "\n\nAssistant: Ok, here are two.\n\n1. Draw a smiley.\n\n2. Hide the cap.  ")


def test_parse_single_turn():
    assert hd.parse_hh_dialogue(SINGLE) == [
        {"role": "user", "content": "What is 2+2?"},
        {"role": "assistant", "content": "It is 4."}]


def test_parse_multi_turn_keeps_inner_paragraphs():
    msgs = hd.parse_hh_dialogue(MULTI)
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
        hd.parse_hh_dialogue(bad)


class _ChatTok:
    """Stand-in for SmolLM2's chat template (same text format)."""

    def apply_chat_template(self, messages, tokenize=False, add_generation_prompt=False):
        s = "<|im_start|>system\nSYS<|im_end|>\n" if messages[0]["role"] != "system" else ""
        for m in messages:
            s += f"<|im_start|>{m['role']}\n{m['content']}<|im_end|>\n"
        return s + ("<|im_start|>assistant\n" if add_generation_prompt else "")


def test_render_is_prompt_plus_response_without_end_marker():
    msgs = hd.parse_hh_dialogue(MULTI)
    text = hd.render_dialogue(_ChatTok(), msgs)
    prompt = _ChatTok().apply_chat_template(msgs[:-1], add_generation_prompt=True)
    assert text == prompt + msgs[-1]["content"]
    assert text.endswith("2. Hide the cap.") and text.count("<|im_start|>user") == 2


def test_render_with_real_smollm2_template():
    path = models.cache_dir() / models.DEFAULT_MODEL
    if not (path / "tokenizer_config.json").exists():
        pytest.skip("converted default model not cached")
    from transformers import AutoTokenizer
    tok = AutoTokenizer.from_pretrained(path)
    text = hd.render_dialogue(tok, hd.parse_hh_dialogue(SINGLE))
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
    pairs = hd.load_hh_pairs(["harmless-base", "mine.jsonl.gz"], data_dir=tmp_path)
    assert len(pairs) == 30
    assert pairs[0].chosen[-1]["content"] == "good 0" and pairs[0].rejected[-1]["content"] == "bad 0"
    assert pairs[25].source == "mine.jsonl.gz"
    a = hd.load_hh_pairs(["harmless-base", "mine.jsonl.gz"], data_dir=tmp_path, n_pairs=10)
    b = hd.load_hh_pairs(["harmless-base", "mine.jsonl.gz"], data_dir=tmp_path, n_pairs=10)
    assert len(a) == 10 and [p.chosen for p in a] == [p.chosen for p in b]


def test_shared_data_dir_env_and_missing(tmp_path, monkeypatch):
    monkeypatch.setenv("RGK_SHARED_DATA", str(tmp_path))
    assert hd.shared_data_dir() == tmp_path
    monkeypatch.setenv("RGK_SHARED_DATA", str(tmp_path / "nope"))
    with pytest.raises(FileNotFoundError, match="RGK_SHARED_DATA"):
        hd.load_hh_pairs()


def test_real_hh_files_parse(shared_dir):
    pairs = hd.load_hh_pairs(["harmless-base"], data_dir=f"{shared_dir}/data")
    assert 2250 < len(pairs) <= 2312          # a handful are dropped (non-alternating, empty)


def test_feature_cache_key(tmp_path, monkeypatch):
    monkeypatch.setenv("RGK_CACHE_DIR", str(tmp_path))
    f = tmp_path / "a.jsonl.gz"
    _write_hh(f, [])
    p = hd.feature_cache_path(None, [f], 100, 128)
    assert p.parent == tmp_path / "features"
    assert p == hd.feature_cache_path(None, [f], 100, 128)
    assert len({p, hd.feature_cache_path(None, [f], 101, 128),
                hd.feature_cache_path(None, [f], 100, 64),
                hd.feature_cache_path(str(tmp_path), [f], 100, 128)}) == 4


# ----------------------------------------------------------------------------- training

def test_bt_loss_hand_computed():
    rc, rr = torch.tensor([2.0, 0.0, 0.5]), torch.tensor([1.0, 1.0, 0.5])
    want = (math.log1p(math.exp(-1.0)) + math.log1p(math.exp(1.0)) + math.log(2.0)) / 3
    assert ht.bt_loss(rc, rr).item() == pytest.approx(want, rel=1e-6)
    assert ht.pair_accuracy(rc, rr) == pytest.approx((1 + 0 + 0.5) / 3)


def test_split_is_deterministic_and_disjoint():
    tr, va = hd.split_indices(1000, 0.1, seed=0)
    tr2, va2 = hd.split_indices(1000, 0.1, seed=0)
    assert torch.equal(tr, tr2) and torch.equal(va, va2)
    assert len(va) == 100 and len(tr) == 900
    assert sorted(torch.cat([tr, va]).tolist()) == list(range(1000))
    _, va3 = hd.split_indices(1000, 0.1, seed=1)
    assert not torch.equal(va, va3)
    with pytest.raises(ValueError, match="val_frac"):
        hd.split_indices(10, 1.0)


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
    res = ht.train_reward_head(chosen, rejected, kind=kind, mlp_size=32, epochs=15, lr=1e-2,
                               weight_decay=0.0, seed=0)
    assert res.val_pair_accuracy > 0.9 and res.n_val == 60 and res.n_train == 540
    assert 1 <= res.best_epoch <= 15
    head = res.head
    assert head.config.val_pair_accuracy == pytest.approx(res.val_pair_accuracy)
    tr, va = hd.split_indices(600, 0.1, 0)
    with torch.no_grad():
        # the returned head (normalisation folded in) reproduces the validation accuracy
        assert ht.pair_accuracy(head(chosen[va]), head(rejected[va])) == pytest.approx(res.val_pair_accuracy)
        # standardised: training responses have mean 0, std 1
        r = torch.cat([head(chosen[tr]), head(rejected[tr])])
        assert abs(r.mean().item()) < 1e-4 and r.std().item() == pytest.approx(1.0, abs=1e-4)
        # folded params == scale * raw + shift
        raw = head.raw(chosen)
        assert torch.allclose(head(chosen), head.config.scale * raw + head.config.shift, atol=1e-4)


@pytest.mark.parametrize("kind,m", [("linear", 0), ("mlp", 8)])
def test_head_save_load_round_trip_and_folding(tmp_path, kind, m):
    torch.manual_seed(1)
    head = RewardHead(RewardHeadConfig(hidden_size=16, kind=kind, mlp_size=m, scale=2.5,
                                       shift=-0.75, val_pair_accuracy=0.6, notes="x"))
    h = torch.randn(5, 16)
    with torch.no_grad():
        raw = head.raw(h)
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
    got = hd.extract_features(model, seqs, max_tokens=max_tokens, batch_size=3, pad_id=0,
                              progress=False)
    with torch.no_grad():
        want = torch.stack([models.final_hidden(model, torch.tensor([s[-max_tokens:]]))[0, -1]
                            for s in seqs])
    assert got.dtype == torch.float32 and got.shape == (len(seqs), 64)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=0)


# ----------------------------------------------------------------------------- CLI

def _parser():
    p = argparse.ArgumentParser(prog="rgk")
    cth.add_train_head_parser(p.add_subparsers(dest="command", required=True))
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
    with pytest.raises((ValueError, FileNotFoundError), match=f"^{name}: "):
        ns.func(ns)


def test_cli_missing_data_dir_names_the_argument(tmp_path):
    ns = _parser().parse_args(["train-reward-head", "--data-dir", str(tmp_path / "absent")])
    with pytest.raises(FileNotFoundError, match="^--data-dir: "):
        ns.func(ns)


def test_cli_defaults():
    ns = _parser().parse_args(["train-reward-head"])
    assert ns.func is cth.run_train_command
    assert (ns.n_pairs, ns.max_tokens, ns.kind, ns.seed, ns.val_frac) == (2000, 128, "linear", 0, 0.1)
    assert ns.out is None and not ns.install_default
    assert models.DATA_DIR not in ht.default_out_path(None).parents


# ----------------------------------------------------------------------------- one reward MLP

@pytest.mark.parametrize("m", [0, 6])
def test_reward_mlp_is_the_one_definition(m):
    """RewardHead and ARGRE's TokenReward are RewardMLP; forward == the reference formula
    written out here, with and without autograd, and gradients flow in training mode."""
    from rgk.argre import TokenReward
    torch.manual_seed(3)
    mlp = RewardMLP(8, m)
    h = torch.randn(2, 3, 8)
    w1, b1, w2, b2 = mlp.params()
    assert (w2 is None) == (m == 0) and w1.shape == (m or 1, 8)
    z = h @ w1.T + b1
    want = (z if m == 0 else torch.relu(z) @ w2.T + b2)[..., 0]
    torch.testing.assert_close(mlp(h), want, rtol=1e-6, atol=1e-6)
    with torch.no_grad():
        torch.testing.assert_close(mlp(h), want, rtol=1e-6, atol=1e-6)
    mlp(h).sum().backward()
    assert mlp.fc1.weight.grad is not None and mlp.fc1.weight.grad.abs().sum() > 0
    assert isinstance(RewardHead(RewardHeadConfig(8)), RewardMLP)
    tr = TokenReward(8, 4)
    assert isinstance(tr, RewardMLP) and tr.fc2 is not None
    with pytest.raises(ValueError, match="^mlp_size"):
        TokenReward(8, 0)
    with pytest.raises(ValueError, match="^hidden_size"):
        RewardMLP(0)


def test_shipped_files_keep_their_state_dict_keys():
    """The shipped head and editor load into the unified module (same keys as before)."""
    from safetensors.torch import load_file
    keys = set(load_file(str(models.DEFAULT_HEAD.with_name(models.DEFAULT_HEAD.name + ".safetensors"))))
    assert keys == {"fc1.weight", "fc1.bias"} == set(RewardHead.load().state_dict())
    from rgk.argre import ARGREEditor, TokenReward
    ed = ARGREEditor.load()
    tr = TokenReward(ed.hidden_size, ed._params[0].shape[0])
    with torch.no_grad():
        for p, v in zip(tr.params(), ed._params[:4]):
            p.copy_(v)
        h = torch.randn(4, ed.hidden_size)
        torch.testing.assert_close(tr(h), ed.reward(h), rtol=1e-5, atol=1e-5)


# ----------------------------------------------------------------------------- saving and loading

def _head(seed=0, d=6, kind="linear"):
    torch.manual_seed(seed)
    return RewardHead(RewardHeadConfig(hidden_size=d, kind=kind, mlp_size=4 if kind == "mlp" else 0))


def test_save_appends_suffix_to_the_whole_name(tmp_path):
    a, b = _head(1), _head(2)
    ja, wa = a.save(tmp_path / "head.v1")
    jb, wb = b.save(tmp_path / "head.v2")
    assert (ja.name, wa.name, jb.name, wb.name) == ("head.v1.json", "head.v1.safetensors",
                                                    "head.v2.json", "head.v2.safetensors")
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([ja.name, wa.name, jb.name, wb.name])
    h = torch.randn(3, 6)
    with torch.no_grad():
        for path in ("head.v1", "head.v1.json", "head.v1.safetensors"):
            torch.testing.assert_close(RewardHead.load(tmp_path / path)(h), a(h))
        torch.testing.assert_close(RewardHead.load(tmp_path / "head.v2")(h), b(h))
        assert not torch.allclose(a(h), b(h))
    # saving again to the same path replaces it (no temporary files left behind)
    b.save(tmp_path / "head.v1.json")
    with torch.no_grad():
        torch.testing.assert_close(RewardHead.load(tmp_path / "head.v1")(h), b(h))
    assert len(list(tmp_path.iterdir())) == 4
    with pytest.raises(FileExistsError, match="overwrite=False"):
        a.save(tmp_path / "head.v1", overwrite=False)


def test_save_refuses_foreign_files_and_folders(tmp_path):
    (tmp_path / "ed.json").write_text('{"r_plus": 1.0, "hidden_size": 6}')   # an ARGRE editor's json
    with pytest.raises(FileExistsError, match="not a reward head"):
        _head().save(tmp_path / "ed")
    assert (tmp_path / "ed.json").read_text() == '{"r_plus": 1.0, "hidden_size": 6}'
    assert not (tmp_path / "ed.safetensors").exists()
    (tmp_path / "sub").mkdir()
    with pytest.raises(IsADirectoryError, match="^path: .*folder"):
        _head().save(tmp_path / "sub")


def test_save_is_atomic_when_writing_fails(tmp_path, monkeypatch):
    a = _head(1)
    a.save(tmp_path / "h")
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    import safetensors.torch as st

    def boom(*args, **kw):
        raise OSError("disk full")
    monkeypatch.setattr(st, "save_file", boom)
    with pytest.raises(OSError, match="disk full"):
        _head(2).save(tmp_path / "h")
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before   # old head intact, no tmp


@pytest.mark.parametrize("damage,match", [
    ("missing-json", "does not exist"),
    ("bad-json", "not a valid reward head config"),
    ("wrong-keys", "not a valid reward head config"),
    ("truncated-weights", "not a readable safetensors file"),
    ("wrong-shape", "do not fit"),
])
def test_load_damaged_head_names_the_file(tmp_path, damage, match):
    _head(kind="mlp").save(tmp_path / "h")
    j, w = tmp_path / "h.json", tmp_path / "h.safetensors"
    if damage == "missing-json":
        j.unlink()
    elif damage == "bad-json":
        j.write_text("{not json")
    elif damage == "wrong-keys":
        j.write_text(json.dumps({"hidden_size": 6, "colour": "red"}))
    elif damage == "truncated-weights":
        w.write_bytes(w.read_bytes()[:40])
    else:
        cfg = json.loads(j.read_text())
        cfg["mlp_size"] = 5
        j.write_text(json.dumps(cfg))
    with pytest.raises((ValueError, FileNotFoundError), match=f"^path: .*{match}") as e:
        RewardHead.load(tmp_path / "h")
    assert "h.json" in str(e.value) or "h.safetensors" in str(e.value)


# ----------------------------------------------------------------------------- feature cache

def test_feature_cache_unreadable_or_wrong_size_is_recomputed(tmp_path, capsys):
    from safetensors.torch import save_file
    f = tmp_path / "feat.safetensors"
    assert hd.read_feature_cache(f, 3) is None
    f.write_bytes(b"garbage")
    assert hd.read_feature_cache(f, 3) is None
    assert "unreadable" in capsys.readouterr().err
    save_file({"chosen": torch.zeros(2, 4), "rejected": torch.ones(2, 4)}, str(f))
    assert hd.read_feature_cache(f, 3) is None
    c, r = hd.read_feature_cache(f, 2)
    assert torch.equal(c, torch.zeros(2, 4)) and torch.equal(r, torch.ones(2, 4))
    with pytest.raises(ValueError, match="^model: needed"):
        hd.hh_features(None, None, [None] * 3, cache_path=f)


def test_evaluate_head():
    head = RewardHead(RewardHeadConfig(2))
    with torch.no_grad():
        head.fc1.weight.copy_(torch.tensor([[1.0, 0.0]]))
        head.fc1.bias.zero_()
    chosen = torch.tensor([[2.0, 0.0], [0.0, 0.0], [1.0, 5.0]])
    rejected = torch.tensor([[1.0, 0.0], [1.0, 0.0], [1.0, -5.0]])
    ev = ht.evaluate_head(head, chosen, rejected)
    assert ev["pair_accuracy"] == pytest.approx((1 + 0 + 0.5) / 3) and ev["n"] == 3
    with torch.no_grad():
        assert ev["loss"] == pytest.approx(float(ht.bt_loss(head(chosen), head(rejected))))


# ----------------------------------------------------------------------------- pipeline and CLI on a tiny model

def test_train_head_from_data_and_cli_on_a_tiny_model(tmp_path, monkeypatch, capsys):
    import sys
    from pathlib import Path
    sys.path.insert(0, str(Path(__file__).parent))
    from _tiny_model import save_tiny_model

    from rgk.cli import main
    monkeypatch.setenv("RGK_CACHE_DIR", str(tmp_path / "cache"))
    model_dir = save_tiny_model(tmp_path / "model", hidden=16)
    hh = tmp_path / "data" / "hh_rlhf"
    hh.mkdir(parents=True)
    _write_hh(hh / "harmless-base_test.jsonl.gz",
              [{"chosen": f"\n\nHuman: hello {i}\n\nAssistant: good day thanks",
                "rejected": f"\n\nHuman: hello {i}\n\nAssistant: bad night no"} for i in range(24)])
    kw = dict(model_name=str(model_dir), files=["harmless-base"], data_dir=tmp_path / "data", n_pairs=20,
              max_tokens=16, epochs=3, lr=1e-2, weight_decay=0.0, batch_size=8, progress=False, verbose=False,
              log=lambda m: None)
    first = ht.train_head_from_data(out=tmp_path / "heads" / "h.v1", **kw)
    assert not first.features_cached and first.feature_cache.exists() and first.n_pairs == 20
    assert [p.name for p in first.files] == ["h.v1.json", "h.v1.safetensors"]
    second = ht.train_head_from_data(out=tmp_path / "heads" / "h.v2", **kw)
    assert second.features_cached
    a, b = RewardHead.load(tmp_path / "heads" / "h.v1"), RewardHead.load(tmp_path / "heads" / "h.v2")
    assert a.config == b.config and a.config.hidden_size == 16
    notes = json.loads(a.config.notes)
    assert (notes["n_train"], notes["n_val"]) == (18, 2)
    for p, q in zip(a.parameters(), b.parameters()):          # same cached features, same seed: same head
        assert torch.equal(p, q)
    # the separable toy data: chosen and rejected responses end in different words
    c, r = hd.read_feature_cache(first.feature_cache, 20)
    with torch.no_grad():
        assert ht.evaluate_head(a, c, r)["pair_accuracy"] == 1.0
    code = main(["train-reward-head", "--model", str(model_dir), "--data-dir", str(tmp_path / "data"),
                 "--files", "harmless-base", "--n-pairs", "20", "--max-tokens", "16", "--epochs", "2",
                 "--out", str(tmp_path / "heads" / "cli.v3"), "--no-progress"])
    out = capsys.readouterr().out
    assert code == 0 and "features cached at" in out and "cli.v3.safetensors" in out
    assert RewardHead.load(tmp_path / "heads" / "cli.v3.json").config.hidden_size == 16


def test_reward_mlp_dispatch_and_argument_errors(monkeypatch):
    """Without autograd the forward runs the public op rgk.ops.reward_head (when this rgk
    has it), with autograd the differentiable reference; bad inputs name `hidden`."""
    from rgk import ops
    if not hasattr(ops, "reward_head"):
        pytest.skip("rgk.ops.reward_head not in this tree yet")
    calls = []
    real = ops.reward_head

    def spy(*a):
        calls.append(a[0].shape)
        return real(*a)
    monkeypatch.setattr(ops, "reward_head", spy)
    head = _head(kind="mlp")
    h = torch.randn(2, 5, 6)
    with torch.no_grad():
        out = head(h)
    assert calls == [(10, 6)] and out.shape == (2, 5)
    grad_out = head(h)
    assert len(calls) == 2 and calls[1] == (2, 5, 6) and grad_out.requires_grad   # the op is differentiable
    torch.testing.assert_close(out, grad_out.detach(), rtol=1e-6, atol=1e-6)
    with pytest.raises(ValueError, match=r"^hidden: expected \[\.\.\., 6\]"):
        head(torch.randn(3, 7))
    with pytest.raises(TypeError, match="^hidden"):
        head([1.0] * 6)
