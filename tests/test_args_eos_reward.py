"""ARGS's opt-in `eos_reward="prefix"`: the EOS candidate is scored with the reward of the
sequence before it; the default ("candidate") keeps the paper's semantics."""
import pytest
import torch

from conftest import left_padded
from test_args import PAD, V, DigitTokenizer, text_fn, tiny_lm

from transformers import LogitsProcessorList

from rgk.args import ARGSLogitsProcessor, RewardModel, TextReward, args_generate, naive_args_generate
from rgk.models import RewardHead, RewardHeadConfig


@pytest.fixture(scope="module")
def parts():
    lm, rm = tiny_lm(0), tiny_lm(1)
    torch.manual_seed(2)
    head = RewardHead(RewardHeadConfig(64, "mlp", 32))
    return lm, rm, head


def _prompts():
    return left_padded((5, 8, 3), 3, V, PAD)


def _eos_at(lm, ids, mask, step=3):
    """A token greedy decoding (w = 0) emits in row 0 at `step`: used as the EOS id."""
    free = args_generate(lm, ids, mask, reward=RewardHead(RewardHeadConfig(64, "linear")), k=4, w=0.0,
                         max_new_tokens=step + 1, eos_token_id=-1)
    return int(free.sequences[0, ids.shape[1] + step])


def _sources(parts):
    lm, rm, head = parts
    return {"shared": head, "model": RewardModel(rm, head), "text": TextReward(text_fn, DigitTokenizer())}


@pytest.mark.parametrize("source", ["shared", "model", "text"])
def test_default_is_candidate(parts, source):
    lm = parts[0]
    ids, mask = _prompts()
    eos = _eos_at(lm, ids, mask)
    kw = dict(reward=_sources(parts)[source], k=6, w=2.0, max_new_tokens=8, eos_token_id=eos, pad_token_id=PAD)
    a = args_generate(lm, ids, mask, **kw)
    b = args_generate(lm, ids, mask, eos_reward="candidate", **kw)
    assert torch.equal(a.sequences, b.sequences)
    torch.testing.assert_close(a.rewards, b.rewards)


@pytest.mark.parametrize("source,loop", [("shared", "auto"), ("shared", "dynamic"), ("model", "auto"),
                                         ("model", "dynamic"), ("text", "auto")])
@pytest.mark.parametrize("temperature", [0.0, 0.8])
def test_prefix_native_matches_naive_and_eos_gets_prefix_reward(parts, source, loop, temperature):
    """Every loop (the static step for the head and the reward model, the Python loop)
    against the naive reference, and the EOS candidate's reward is the prefix's."""
    lm = parts[0]
    reward = _sources(parts)[source]
    ids, mask = _prompts()
    T = ids.shape[1]
    if isinstance(reward, RewardHead):
        prompt_r = reward(lm.model(input_ids=ids, attention_mask=mask,
                                   position_ids=(mask.cumsum(-1) - 1).clamp_min(0)).last_hidden_state[:, -1])
    else:
        prompt_r = reward.reference_rewards(lm, ids, mask, T)
    hits = 0
    for step in range(6):               # EOS ids that row 0 meets early: some get chosen
        eos = _eos_at(lm, ids, mask, step)
        kw = dict(reward=reward, k=8, w=0.1, temperature=temperature, max_new_tokens=10, eos_token_id=eos,
                  pad_token_id=PAD, eos_reward="prefix")
        a = args_generate(lm, ids, mask, generator=torch.Generator().manual_seed(5), loop=loop, **kw)
        b = naive_args_generate(lm, ids, mask, generator=torch.Generator().manual_seed(5), **kw)
        assert torch.equal(a.sequences, b.sequences)
        torch.testing.assert_close(a.rewards, b.rewards, atol=1e-5, rtol=1e-5)
        for row in range(ids.shape[0]):
            where = (a.sequences[row, T:] == eos).nonzero()
            if not len(where):
                continue
            t = int(where[0])
            before = a.rewards[row, t - 1] if t else prompt_r[row]
            torch.testing.assert_close(a.rewards[row, t], before.float(), atol=1e-5, rtol=1e-5)
            hits += 1
    assert hits >= 1


def test_prefix_lets_a_penalised_eos_through(parts):
    """A reward that punishes any text ending in EOS: by default ARGS never stops; with
    "prefix" the EOS candidate keeps the prefix's reward (0 here), so ARGS decodes like greedy
    and stops where greedy does."""
    lm = parts[0]
    ids, mask = _prompts()
    T = ids.shape[1]
    eos = _eos_at(lm, ids, mask)
    penal = TextReward(lambda texts: [-100.0 if t.split() and t.split()[-1] == str(eos) else 0.0 for t in texts],
                       DigitTokenizer())
    kw = dict(reward=penal, k=6, w=1.0, max_new_tokens=8, eos_token_id=eos, pad_token_id=PAD)
    plain = args_generate(lm, ids, mask, **kw)
    fair = args_generate(lm, ids, mask, eos_reward="prefix", **kw)
    greedy = args_generate(lm, ids, mask, reward=penal, k=6, w=0.0, max_new_tokens=8, eos_token_id=eos,
                           pad_token_id=PAD)
    assert not (plain.sequences[:, T:] == eos).any()
    assert (fair.sequences[0, T:] == eos).any()
    assert torch.equal(fair.sequences, greedy.sequences)


def test_prefix_option_errors(parts):
    lm, _, head = parts
    ids, mask = _prompts()
    with pytest.raises(ValueError, match="eos_reward"):
        args_generate(lm, ids, mask, reward=head, max_new_tokens=2, eos_reward="fair")
    with pytest.raises(ValueError, match="eos_reward"):
        naive_args_generate(lm, ids, mask, reward=head, max_new_tokens=2, eos_reward=None)
    with pytest.raises(ValueError, match="eos_reward"):
        ARGSLogitsProcessor(RewardModel(parts[1], head), eos_reward="fair")
    with pytest.raises(ValueError, match="eos_token_id"):
        ARGSLogitsProcessor(RewardModel(parts[1], head), eos_reward="prefix", eos_token_id=[3, -1])


@pytest.mark.parametrize("source", ["shared", "model"])
def test_prefix_compiled_step_matches_eager(parts, source, trace_only_compile):
    """The prefix reward lives on device in the static step: torch.compile(fullgraph=True)
    of that step gives the eager step's tokens and rewards."""
    lm = parts[0]
    reward = _sources(parts)[source]
    ids, mask = _prompts()
    eos = _eos_at(lm, ids, mask, 2)
    kw = dict(reward=reward, k=8, w=0.1, max_new_tokens=6, eos_token_id=eos, pad_token_id=PAD, eos_reward="prefix")
    a = args_generate(lm, ids, mask, loop="eager", **kw)
    b = args_generate(lm, ids, mask, loop="compiled", **kw)
    assert torch.equal(a.sequences, b.sequences)
    torch.testing.assert_close(a.rewards, b.rewards, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("source", ["model", "text"])
def test_processor_prefix_matches_native(parts, source):
    """ARGSLogitsProcessor(eos_reward="prefix") inside greedy `generate` picks the native
    loop's tokens, its EOS id read from generate's config; a forced non-candidate token is
    re-scored in full, as a fresh processor would."""
    lm, rm, head = parts
    reward = _sources(parts)[source]
    ids, mask = _prompts()
    T = ids.shape[1]
    hits = 0
    for step in range(4):
        eos = _eos_at(lm, ids, mask, step)
        ref = args_generate(lm, ids, mask, reward=reward, k=8, w=0.1, max_new_tokens=8, eos_token_id=eos,
                            pad_token_id=PAD, eos_reward="prefix")
        proc = ARGSLogitsProcessor(reward, k=8, w=0.1, attention_mask=mask, eos_reward="prefix")
        out = lm.generate(ids, attention_mask=mask, logits_processor=LogitsProcessorList([proc]), pad_token_id=PAD,
                          eos_token_id=eos, max_new_tokens=8, do_sample=False)
        n = min(out.shape[1], ref.sequences.shape[1])
        assert torch.equal(out[:, :n], ref.sequences[:, :n])
        hits += int((ref.sequences[:, T:] == eos).any())
    assert hits >= 1


def test_processor_prefix_reward_tracks_the_sequence(parts):
    """The processor's prefix reward is the reward of the sequence it has seen, whether the
    appended token was a candidate (its slot's reward) or not (re-scored in full)."""
    lm, rm, head = parts
    reward = RewardModel(rm, head)
    ids, mask = _prompts()
    T = ids.shape[1]
    proc = ARGSLogitsProcessor(reward, k=4, w=0.1, attention_mask=mask, eos_reward="prefix", eos_token_id=3)
    seq = ids
    g = torch.Generator().manual_seed(0)
    for step in range(5):
        full = torch.cat([mask, torch.ones_like(seq[:, T:])], 1)
        with torch.no_grad():
            logits = lm(seq, attention_mask=full, position_ids=(full.cumsum(-1) - 1).clamp_min(0)).logits[:, -1]
        out = proc(seq, logits)
        torch.testing.assert_close(proc._prefix_r, reward.reference_rewards(lm, seq, full, T).float(),
                                   atol=1e-5, rtol=1e-5)
        if step % 2:      # a token that was no candidate: a one-token forward, then a full re-score
            tok = torch.where(torch.isfinite(out), -1, torch.arange(out.shape[1])).argmax(-1)
        else:             # a candidate
            tok = torch.multinomial(torch.isfinite(out).float(), 1, generator=g)[:, 0]
        seq = torch.cat([seq, tok[:, None]], 1)
    assert proc.extra_forwards == 2 and proc.rebuilds == 1


def test_graph_snapshot_restores_the_prefix_reward(parts):
    """The CUDA-graph wrapper's warm-up runs the step once; its snapshot must put the
    device prefix reward back with the cache positions (checked without CUDA)."""
    from rgk.args import decode
    from rgk.args.rewards import SharedHead
    lm, _, head = parts
    ids, mask = _prompts()
    dec = decode.StaticDecoder(lm, SharedHead(head), ids, mask, k=4, w=1.0, temperature=0.0,
                               cap=ids.shape[1] + 4, eos=torch.tensor([3]), pad=PAD, eos_prefix=True)
    g = object.__new__(decode._Graph)
    g.dec = dec
    g._snapshot = g._save()
    before = (dec.prefix_reward.clone(), dec.lm.cache.end.clone(), dec.lm.cache.pos.clone())
    with dec.static():
        dec.step(dec.logits, None, dec.done)
    assert not torch.equal(dec.prefix_reward, before[0]) and not torch.equal(dec.lm.cache.end, before[1])
    g._restore()
    for a, b in zip((dec.prefix_reward, dec.lm.cache.end, dec.lm.cache.pos), before):
        assert torch.equal(a, b)
