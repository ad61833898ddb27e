"""ARGS's opt-in `eos_reward="prefix"`: the EOS candidate is scored with the reward of the
sequence before it; the default ("candidate") keeps the paper's semantics."""
import pytest
import torch

from conftest import left_padded
from test_args import PAD, V, DigitTokenizer, text_fn, tiny_lm

from rgk.args import RewardModel, TextReward, args_generate, naive_args_generate
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


@pytest.mark.parametrize("source", ["shared", "model", "text"])
@pytest.mark.parametrize("temperature", [0.0, 0.8])
def test_prefix_native_matches_naive_and_eos_gets_prefix_reward(parts, source, temperature):
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
        a = args_generate(lm, ids, mask, generator=torch.Generator().manual_seed(5), **kw)
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
    with pytest.raises(ValueError, match="eos_reward: 'prefix' runs on the Python loop"):
        args_generate(lm, ids, mask, reward=head, max_new_tokens=2, eos_reward="prefix", loop="eager")
