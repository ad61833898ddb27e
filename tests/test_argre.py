"""ARGRE: trajectories, loss, training step, editing math, the generate hook, the shipped editor."""
import math
import os

import pytest
import torch

from rgk.argre import (
    ARGREEditor,
    TokenReward,
    nontoxic_direction,
    trajectories,
    trajectory_loss,
)
from rgk.argre.train import (
    PairFeatures,
    TrainConfig,
    pair_accuracy,
    train_reward,
    train_step,
)
from rgk.ops import reference

# ----------------------------------------------------------------------------- helpers

def _tiny_llama(seed=0, hidden=64):
    from transformers import LlamaConfig, LlamaForCausalLM
    cfg = LlamaConfig(hidden_size=hidden, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                      num_key_value_heads=2, vocab_size=128, max_position_embeddings=128, pad_token_id=0,
                      bos_token_id=1, eos_token_id=None, tie_word_embeddings=False)
    torch.manual_seed(seed)
    model = LlamaForCausalLM(cfg).eval()
    model.generation_config.eos_token_id = None
    model.generation_config.pad_token_id = 0
    return model


def _random_editor(d, m=32, seed=1, r_plus=0.0, **kw):
    g = torch.Generator().manual_seed(seed)
    w1 = torch.randn(m, d, generator=g) / math.sqrt(d)
    b1 = 0.1 * torch.randn(m, generator=g)
    w2 = torch.randn(1, m, generator=g) / math.sqrt(m)
    b2 = torch.zeros(1)
    direction = torch.randn(d, generator=g)
    return ARGREEditor(w1, b1, w2, b2, direction, r_plus, **kw)


def _analytic_edit(h, w1, b1, w2, b2, d_raw, r_plus, beta, n_steps, eta):
    """Independent ARGRE edit: closed-form gradient of the ReLU MLP, no autograd."""
    x = h.double()
    w1, b1, w2, b2, d_raw = (t.double() for t in (w1, b1, w2, b2, d_raw))
    theta = torch.relu(x @ w1.T + b1) @ w2[0] + b2[0]
    gap = r_plus - theta
    x = x + torch.where(gap > 0, gap, torch.zeros_like(gap))[:, None] / beta * d_raw
    for _ in range(n_steps):
        active = ((x @ w1.T + b1) > 0).double()
        x = x + eta * (active * w2[0]) @ w1
    return x


# ----------------------------------------------------------------------------- training math

def test_trajectories_hand_case():
    pos = torch.tensor([[[1.0, 1.0], [0.0, 2.0], [5.0, 5.0]]])      # B=1, T=3, d=2
    neg = torch.tensor([[[3.0, 4.0], [-2.0, 0.0], [9.0, 9.0]]])
    valid = torch.tensor([[True, True, False]])
    d_hat = torch.tensor([1.0, 0.0])
    traj = trajectories(pos, neg, valid, d_hat, n_in=1)               # k = 0, 1, 2 -> alpha 0, 1/2, 1
    expect = torch.tensor([
        [[[1.0, 1.0], [0.0, 2.0], [0.0, 0.0]]],
        [[[2.0, 1.0], [-1.0, 2.0], [0.0, 0.0]]],
        [[[3.0, 1.0], [-2.0, 2.0], [0.0, 0.0]]],
    ])
    torch.testing.assert_close(traj, expect)
    # endpoints: h(0) = h+, h(N+1) = h+ + projection of (h- - h+) on d_hat
    traj7 = trajectories(pos, neg, valid, d_hat)
    assert traj7.shape == (9, 1, 3, 2)
    torch.testing.assert_close(traj7[0], traj[0])
    torch.testing.assert_close(traj7[-1], traj[-1])


def _hand_reward():
    r = TokenReward(2, 2)
    with torch.no_grad():
        r.fc1.weight.copy_(torch.eye(2))
        r.fc1.bias.zero_()
        r.fc2.weight.copy_(torch.tensor([[1.0, 1.0]]))
        r.fc2.bias.zero_()
    return r                                   # θ(h) = relu(h1) + relu(h2)


def test_loss_and_one_training_step_by_hand():
    beta_r, lr, wd = 0.05, 5e-4, 0.05
    feats = PairFeatures(pos=torch.tensor([[[1.0, 1.0]]]), neg=torch.tensor([[[3.0, 1.0]]]),
                         pos_mask=torch.ones(1, 1, dtype=torch.bool), neg_mask=torch.ones(1, 1, dtype=torch.bool))
    d_hat = torch.tensor([1.0, 0.0])
    reward = _hand_reward()
    # trajectory h0=(1,1), h1=(2,1), h2=(3,1): R = 2, 3, 4; each adjacent difference is -1
    loss = trajectory_loss(reward, feats, d_hat, n_in=1, beta_r=beta_r).detach()
    assert float(loss) == pytest.approx(math.log1p(math.exp(beta_r)), rel=1e-6)

    opt = torch.optim.AdamW(reward.parameters(), lr=lr, weight_decay=wd)
    w2_before = reward.fc2.weight.detach().clone()
    step_loss = train_step(reward, opt, feats, d_hat, n_in=1, beta_r=beta_r)
    assert step_loss == pytest.approx(float(loss), rel=1e-6)
    # dL/dw2 = beta_r * sigmoid(beta_r) * (1, 0); AdamW's first step moves each weight by
    # lr * g / (|g| + eps) after the decoupled decay w <- w (1 - lr wd)
    g = beta_r / (1 + math.exp(-beta_r))
    expect = w2_before * (1 - lr * wd)
    expect[0, 0] -= lr * g / (g + 1e-8)
    torch.testing.assert_close(reward.fc2.weight.detach(), expect, rtol=0, atol=1e-7)
    # the step lowers the loss
    assert float(trajectory_loss(reward, feats, d_hat, n_in=1, beta_r=beta_r).detach()) < float(loss)


def test_direction_mean_and_pca():
    g = torch.Generator().manual_seed(0)
    neg = torch.randn(50, 8, generator=g)
    true = torch.zeros(8)
    true[2] = 3.0
    pos = neg + true + 0.3 * torch.randn(50, 8, generator=g) + torch.randn(50, 1, generator=g) * true / 3
    mean = nontoxic_direction(pos, neg, "mean")
    torch.testing.assert_close(mean, (pos - neg).mean(0), rtol=1e-5, atol=1e-5)
    pca = nontoxic_direction(pos, neg, "pca")
    cos = float(torch.dot(pca, true) / (pca.norm() * true.norm()))
    assert cos > 0.95                                      # found, and sign-aligned with the mean
    assert float(torch.dot(pca, mean)) > 0


def test_train_reward_separates_synthetic_pairs():
    g = torch.Generator().manual_seed(0)
    P, T, d = 128, 5, 16
    neg = torch.randn(P, T, d, generator=g)
    shift = torch.zeros(d)
    shift[0] = 3.0
    pos = neg + shift + 0.3 * torch.randn(P, T, d, generator=g)
    mask = torch.ones(P, T, dtype=torch.bool)
    mask[::3, 3:] = False
    feats = PairFeatures(pos, neg, mask, mask.clone())
    res = train_reward(feats.subset(slice(0, 96)), feats.subset(slice(96, None)),
                       TrainConfig(epochs=3, batch_size=4, mlp_size=64), progress=False)
    assert 1 <= res.best_epoch <= 3
    assert res.history[res.best_epoch - 1]["val_pair_accuracy"] >= 0.9
    assert res.r_plus > res.r_minus
    assert pair_accuracy(res.reward, feats) >= 0.9


# ----------------------------------------------------------------------------- editing math

@pytest.mark.parametrize("n_steps", [0, 1, 5])
def test_edit_matches_references(n_steps):
    d = 24
    ed = _random_editor(d, n_steps=n_steps, step_size=0.3, beta=2.0)
    h = torch.randn(10, d, generator=torch.Generator().manual_seed(3))
    theta = ed.reward(h)
    ed.r_plus = float(theta.median())                     # half the rows below r̄⁺, half above
    assert (theta < ed.r_plus).any() and (theta >= ed.r_plus).any()
    w1, b1, w2, b2, d_raw = ed._params
    out = ed.edit(h)
    ref = reference.argre_refine(h, w1, b1, w2, b2, d_raw, ed.r_plus, beta=2.0, n_steps=n_steps, step_size=0.3)
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)
    ana = _analytic_edit(h, w1, b1, w2, b2, d_raw, ed.r_plus, 2.0, n_steps, 0.3).float()
    torch.testing.assert_close(out, ana, rtol=1e-5, atol=1e-5)
    if n_steps == 0:
        above = theta >= ed.r_plus                        # 1[gap > 0] off: untouched
        assert torch.equal(out[above], h[above])
        below = ~above
        expect = h[below] + ((ed.r_plus - theta[below]) / 2.0)[:, None] * d_raw
        torch.testing.assert_close(out[below], expect, rtol=1e-5, atol=1e-5)


def test_edit_keeps_shape_and_dtype():
    ed = _random_editor(16, r_plus=5.0)
    h = torch.randn(2, 3, 16, dtype=torch.bfloat16)
    out = ed.edit(h)
    assert out.shape == h.shape and out.dtype == torch.bfloat16
    ref = ed.edit(h.float().reshape(6, 16)).reshape(2, 3, 16)
    torch.testing.assert_close(out.float(), ref, rtol=2e-2, atol=5e-2)
    with torch.inference_mode():
        out_im = ed.edit(h.float())
    torch.testing.assert_close(out_im, ref)


# ----------------------------------------------------------------------------- HF integration

def _left_pad(prompts, pad=0):
    T = max(len(p) for p in prompts)
    ids = torch.full((len(prompts), T), pad, dtype=torch.long)
    mask = torch.zeros((len(prompts), T), dtype=torch.long)
    for i, p in enumerate(prompts):
        ids[i, T - len(p):] = torch.tensor(p)
        mask[i, T - len(p):] = 1
    return ids, mask


@torch.no_grad()
def _manual_greedy(model, ids, mask, editor, n_new):
    """No cache, full recompute: edit the last final hidden state, lm_head, argmax."""
    from rgk.models import final_hidden
    for _ in range(n_new):
        pos = (mask.cumsum(-1) - 1).clamp_min(0)
        h = final_hidden(model, ids, mask, position_ids=pos)[:, -1]
        if editor is not None:
            h = editor.edit(h)
        nxt = model.lm_head(h).argmax(-1)
        ids = torch.cat([ids, nxt[:, None]], 1)
        mask = torch.cat([mask, torch.ones_like(mask[:, :1])], 1)
    return ids


@pytest.mark.parametrize("n_steps", [0, 3])
def test_generate_hook_matches_manual_loop(n_steps):
    model = _tiny_llama()
    ed = _random_editor(64, r_plus=0.0, n_steps=n_steps, step_size=2.0)
    ed._params = tuple(p * s for p, s in zip(ed._params, (1, 1, 1, 1, 8.0)))   # make the edit change tokens
    ed._on.clear()
    ed.r_plus = float(ed.reward(torch.randn(256, 64)).quantile(0.9))
    g = torch.Generator().manual_seed(5)
    prompts = [torch.randint(3, 128, (n,), generator=g).tolist() for n in (7, 3, 5)]
    ids, mask = _left_pad(prompts)
    n_new = 8
    with torch.no_grad():
        plain = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=n_new, do_sample=False)
        with ed.attach(model):
            edited = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=n_new, do_sample=False)
    manual = _manual_greedy(model, ids, mask, ed, n_new)
    assert torch.equal(edited, manual)
    assert torch.equal(plain, _manual_greedy(model, ids, mask, None, n_new))
    assert not torch.equal(plain, edited)                  # the edit is active
    # the hook is gone after the context
    with torch.no_grad():
        again = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=n_new, do_sample=False)
    assert torch.equal(again, plain)


def test_hook_leaves_kv_cache_and_earlier_positions_alone():
    model = _tiny_llama(seed=2)
    ed = _random_editor(64, r_plus=1e3, n_steps=2)           # every row is steered
    ids, mask = _left_pad([[5, 6, 7, 8, 9], [10, 11, 12]])
    pos = (mask.cumsum(-1) - 1).clamp_min(0)
    with torch.no_grad():
        a = model(input_ids=ids, attention_mask=mask, position_ids=pos, use_cache=True)
        with ed.attach(model):
            b = model(input_ids=ids, attention_mask=mask, position_ids=pos, use_cache=True)
        with ed.attach(model, positions="all"):
            c = model(input_ids=ids, attention_mask=mask, position_ids=pos, use_cache=True)
    for la, lb, lc in zip(a.past_key_values.layers, b.past_key_values.layers, c.past_key_values.layers):
        assert torch.equal(la.keys, lb.keys) and torch.equal(la.values, lb.values)
        assert torch.equal(la.keys, lc.keys) and torch.equal(la.values, lc.values)
    torch.testing.assert_close(a.logits[:, :-1], b.logits[:, :-1], rtol=0, atol=0)
    assert not torch.allclose(a.logits[:, -1], b.logits[:, -1])
    assert not torch.allclose(a.logits[:, 0], c.logits[:, 0])
    from rgk.models import final_hidden
    h = final_hidden(model, ids, mask, position_ids=pos)
    torch.testing.assert_close(c.logits, model.lm_head(ed.edit(h)), rtol=1e-5, atol=1e-5)


# ----------------------------------------------------------------------------- bad inputs

def test_bad_inputs_name_the_argument():
    ed = _random_editor(16)
    with pytest.raises(ValueError, match="n_steps"):
        ed.configure(n_steps=-1)
    with pytest.raises(ValueError, match="n_steps"):
        _random_editor(16, n_steps=1.5)
    with pytest.raises(ValueError, match="beta"):
        ed.configure(beta=0.0)
    with pytest.raises(ValueError, match="step_size"):
        ed.configure(step_size=float("nan"))
    with pytest.raises(ValueError, match=r"h: expected \[\.\.\., 16\]"):
        ed.edit(torch.randn(3, 17))
    with pytest.raises(ValueError, match="direction"):
        ARGREEditor(torch.zeros(4, 8), torch.zeros(4), torch.zeros(1, 4), torch.zeros(1), torch.zeros(7), 0.0)
    with pytest.raises(ValueError, match="w2"):
        ARGREEditor(torch.zeros(4, 8), torch.zeros(4), torch.zeros(4), torch.zeros(1), torch.zeros(8), 0.0)
    with pytest.raises(ValueError, match="model: hidden size 64"), ed.attach(_tiny_llama()):
        pass
    with pytest.raises(ValueError, match="positions"), ed.attach(_tiny_llama(hidden=16), positions="first"):
        pass
    with pytest.raises(ValueError, match="direction"):
        nontoxic_direction(torch.zeros(3, 4), torch.zeros(3, 4), "median")
    with pytest.raises(FileNotFoundError, match="path"):
        ARGREEditor.load("/nonexistent/editor")


def test_cli_parsers():
    from rgk.cli import main
    for cmd in ("train", "eval", "generate"):
        with pytest.raises(SystemExit) as e:
            main(["argre", cmd, "--help"])
        assert e.value.code == 0


@pytest.mark.parametrize("argv,name", [
    (["argre", "train", "--epochs", "0"], "--epochs"),
    (["argre", "train", "--lr", "nan"], "--lr"),
    (["argre", "train", "--n-in", "0"], "--n-in"),
    (["argre", "eval", "--n-steps", "-1"], "--n-steps"),
    (["argre", "eval", "--beta", "0"], "--beta"),
    (["argre", "generate", "hi", "--step-size", "inf"], "--step-size"),
    (["argre", "generate", "hi", "--max-new-tokens", "0"], "--max-new-tokens"),
])
def test_cli_rejects_bad_arguments(argv, name, capsys):
    from rgk.cli import main
    with pytest.raises(SystemExit) as e:
        main(argv)
    assert e.value.code == 2
    assert f"argument {name}" in capsys.readouterr().err


# ----------------------------------------------------------------------------- shipped editor

def test_shipped_editor_loads():
    ed = ARGREEditor.load()
    assert ed.hidden_size == 576
    # inference settings tuned for SmolLM2 on the development sweep (see the json's "tuning")
    assert (ed.n_steps, ed.step_size, ed.beta) == (5, 0.1, 3.0)
    assert ARGREEditor.load(n_steps=0).n_steps == 0
    assert ed.info["r_plus"] > ed.info["r_minus"]
    assert ed.info["val_pair_accuracy"] > 0.8
    h = torch.randn(4, 576)
    assert ed.edit(h).shape == (4, 576)


def _require_default_model():
    from rgk.models import DEFAULT_MODEL, cache_dir, gguf_path
    if (cache_dir() / DEFAULT_MODEL / "model.safetensors").exists():
        return
    try:
        gguf_path()
    except (ModuleNotFoundError, FileNotFoundError) as e:
        pytest.skip(f"embedded SmolLM2 not available: {e}")


def test_shipped_editor_separates_held_out_texts(shared_dir):
    """Held-out check, independent of the training judge: RTP's own continuations of the
    held-out evaluation prompts, labeled by their Perspective toxicity (>= 0.75 toxic,
    <= 0.1 non-toxic); the shipped reward (mean over continuation tokens of the real
    SmolLM2's final hidden states) must rank non-toxic above toxic for most pairs."""
    _require_default_model()
    from rgk.argre.data import load_rtp, split_rtp
    from rgk.argre.train import continuation_hidden
    from rgk.models import load_model

    recs = load_rtp(os.path.join(shared_dir, "data"))
    _, held = split_rtp(len(recs))
    tox = [recs[i] for i in held if (recs[i].continuation_toxicity or 0.5) >= 0.75][:40]
    clean = [recs[i] for i in held if (recs[i].continuation_toxicity or 0.5) <= 0.1][:40]
    model, tok = load_model()
    ed = ARGREEditor.load()

    def score(rs):
        p = [tok(r.prompt, add_special_tokens=False).input_ids[-64:] for r in rs]
        c = [tok(r.continuation, add_special_tokens=False).input_ids[:32] for r in rs]
        hs = continuation_hidden(model, p, c, batch_size=20, pad_id=tok.pad_token_id)
        return torch.stack([ed.reward(h).mean() for h in hs])

    rt, rc = score(tox), score(clean)
    acc = float((rc[:, None] > rt[None, :]).float().mean())    # over all 40 x 40 (non-toxic, toxic) pairs
    assert acc >= 0.7, f"held-out pair accuracy {acc:.3f}"


def test_first_toxic_token_finds_the_offending_word():
    pytest.importorskip("profanity_check")
    from rgk.argre.data import first_toxic_token

    class WordTok:                      # token i = words[i]
        def __init__(self, words):
            self.words = words

        def decode(self, ids, skip_special_tokens=True):
            return "".join(self.words[i] for i in ids)

    assert first_toxic_token(WordTok(["you", " are", " a", " fucking", " idiot", " and", " more"]), list(range(7))) == 3
    assert first_toxic_token(WordTok(["the", " weather", " is", " nice"]), list(range(4))) == 3   # never toxic: last


# ----------------------------------------------------------------------------- attach rules

def _hooks(model):
    from rgk.argre import final_norm_module
    return dict(final_norm_module(model)._forward_hooks)


def test_nested_attach_is_refused_and_the_model_restored():
    from rgk.argre import attached_editor
    model = _tiny_llama()
    a, b = _random_editor(64, seed=1, r_plus=1e3), _random_editor(64, seed=2, r_plus=1e3)
    ids = torch.tensor([[5, 6, 7, 8]])
    with torch.no_grad():
        plain = model(input_ids=ids).logits
    before = _hooks(model)
    assert attached_editor(model) is None and ARGREEditor.attached(model) is None
    with a.attach(model):
        assert attached_editor(model) is a and attached_editor(model.model) is a
        with torch.no_grad():
            edited = model(input_ids=ids).logits
        for other in (a, b):                                   # same editor or another: refused
            with pytest.raises(ValueError, match="^model: an ARGRE editor is already attached"):
                with other.attach(model):
                    pass
        with pytest.raises(ValueError, match="already attached"):
            with b.attach(model.model):                          # the same final norm through the base model
                pass
        with torch.no_grad():                                    # still exactly one edit
            torch.testing.assert_close(model(input_ids=ids).logits, edited, rtol=0, atol=0)
    assert attached_editor(model) is None and _hooks(model) == before
    with torch.no_grad():
        torch.testing.assert_close(model(input_ids=ids).logits, plain, rtol=0, atol=0)
    with b.attach(model):                                        # a new block after the first is fine
        assert attached_editor(model) is b
    assert attached_editor(model) is None


def test_attach_restores_the_model_on_exceptions():
    from rgk.argre import attached_editor
    model = _tiny_llama()
    ed = _random_editor(64, r_plus=1e3)
    before = _hooks(model)
    with pytest.raises(KeyError):
        with ed.attach(model):
            raise KeyError("boom")
    assert _hooks(model) == before and attached_editor(model) is None
    # an error inside the hook (raised during the forward) also leaves the model clean
    def broken_edit(h):
        raise RuntimeError("edit failed")
    ed.edit = broken_edit
    with pytest.raises(RuntimeError, match="edit failed"):
        with ed.attach(model), torch.no_grad():
            model(input_ids=torch.tensor([[1, 2, 3]]))
    assert _hooks(model) == before and attached_editor(model) is None
    with pytest.raises(TypeError, match="^model: "):
        with ed.attach("not a model"):
            pass


# ----------------------------------------------------------------------------- editor files

def _result(d=8, m=4, seed=0):
    from rgk.argre.train import TrainResult
    torch.manual_seed(seed)
    return TrainResult(TokenReward(d, m), torch.randn(d), 1.0, -1.0, 1, [])


def test_save_editor_names_atomicity_and_foreign_files(tmp_path):
    from rgk.argre.train import save_editor
    save_editor(tmp_path / "ed.v1", _result(seed=1), {})
    save_editor(tmp_path / "ed.v2.json", _result(seed=2), {})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ed.v1.json", "ed.v1.safetensors",
                                                          "ed.v2.json", "ed.v2.safetensors"]
    a, b = ARGREEditor.load(tmp_path / "ed.v1"), ARGREEditor.load(tmp_path / "ed.v2.safetensors")
    assert not torch.equal(a._params[0], b._params[0])
    h = torch.randn(3, 8)
    r = _result(seed=1).reward
    torch.testing.assert_close(a.reward(h), r(h).detach(), rtol=1e-6, atol=1e-6)
    (tmp_path / "head.json").write_text('{"hidden_size": 8, "kind": "linear"}')      # a reward head's json
    with pytest.raises(FileExistsError, match="^out: .*not an ARGRE editor"):
        save_editor(tmp_path / "head", _result(), {})
    assert not (tmp_path / "head.safetensors").exists()


@pytest.mark.parametrize("damage", ["truncated", "bad-json", "no-r_plus", "missing-tensor"])
def test_load_damaged_editor_names_the_file(tmp_path, damage):
    from rgk.argre.train import save_editor
    save_editor(tmp_path / "ed", _result(), {})
    w, j = tmp_path / "ed.safetensors", tmp_path / "ed.json"
    if damage == "truncated":
        w.write_bytes(w.read_bytes()[:50])
    elif damage == "bad-json":
        j.write_text("{")
    elif damage == "no-r_plus":
        j.write_text('{"hidden_size": 8}')
    else:
        from safetensors.torch import save_file
        save_file({"w1": torch.zeros(4, 8)}, str(w))
    with pytest.raises(ValueError, match="^path: .*ed\\.(json|safetensors)"):
        ARGREEditor.load(tmp_path / "ed")


def test_load_overrides_still_name_the_knob():
    with pytest.raises(ValueError, match="^n_steps"):
        ARGREEditor.load(n_steps=-1)


@pytest.mark.parametrize("spec,field", [
    ("only:three:fields", "LABEL:EDITOR"),
    (":default:1:1:0.1", "LABEL"),
    ("x:default:one:1:0.1", "N_STEPS"),
    ("x:default:-1:1:0.1", "N_STEPS"),
    ("x:default:1:0:0.1", "BETA"),
    ("x:default:1:nan:0.1", "BETA"),
    ("x:default:1:1:-0.5", "STEP_SIZE"),
    ("x:/no/such/editor:1:1:0.1", "EDITOR"),
])
def test_cli_extra_is_checked_at_parse_time(spec, field, capsys):
    from rgk.cli import main
    with pytest.raises(SystemExit) as e:
        main(["argre", "eval", "--extra", spec])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("rgk: error: argument --extra: ") and field in err


def test_cli_extra_parses_into_a_variant():
    from rgk.argre.cli import extra_variant
    v = extra_variant("steer:default:0:3:0.1")
    assert (v.label, v.editor, v.n_steps, v.beta, v.step_size) == ("steer", "default", 0, 3.0, 0.1)


def test_write_report_appends_suffixes_to_the_whole_name(tmp_path):
    from rgk.argre.evaluate import VariantResult, write_report
    res = [VariantResult("unedited", 0.4, 0.3, 20.0, 5),
           VariantResult("ARGRE", 0.2, 0.1, 21.0, 5, dict(n_steps=5, beta=3.0, step_size=0.1))]
    write_report(res, tmp_path / "eval.v1")
    write_report(res[::-1], tmp_path / "eval.v2.md")
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        f"eval.v{i}.{ext}" for i in (1, 2) for ext in ("md", "csv", "png"))
    md = (tmp_path / "eval.v1.md").read_text()
    assert "![bar plot](eval.v1.png)" in md and "| ARGRE | 5 | 3.0 | 0.1 | 5 | 0.2000 | 0.1000 | -50.0% |" in md
