"""The Perspective-trained toxicity head: its data never touches the held-out RTP prompts,
the shuffled examples decorrelate prompt and label, the fit recovers a known direction
with the documented sign, and the shipped head loads and ranks toxic text lower."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from rgk.heads import tox as tox_head


@pytest.fixture
def examples(shared_dir):
    return tox_head.rtp_toxicity_examples(Path(shared_dir) / "data")


def test_examples_use_no_held_out_prompt_and_split_records(examples, shared_dir):
    from rgk.argre.data import load_rtp, split_rtp
    train, val = examples
    recs = load_rtp(Path(shared_dir) / "data")
    _, held = split_rtp(len(recs))
    held_prompts = {recs[i].prompt for i in held}
    used = {e.prompt for e in train + val}
    assert not used & held_prompts
    assert {e.group for e in train} == {"non-toxic", "challenging-train"}
    # every record gives one own and one shuffled example; train and validation share no prompt
    n_shuf = sum(e.shuffled for e in train)
    assert abs(2 * n_shuf - len(train)) <= 10            # one own + one shuffled per record, a few dropped
    assert not {e.prompt for e in train} & {e.prompt for e in val}
    assert all(0.0 <= e.toxicity <= 1.0 for e in train + val)
    # the shuffled continuation comes from the other pool, so a challenging prompt is also seen
    # with clean continuations and a non-toxic one with toxic continuations
    own = {(e.prompt, e.continuation) for e in train if not e.shuffled}
    assert all((e.prompt, e.continuation) not in own for e in train if e.shuffled)
    chal_shuf = [e.toxicity for e in train if e.shuffled and e.group == "challenging-train"]
    chal_own = [e.toxicity for e in train if not e.shuffled and e.group == "challenging-train"]
    assert sum(chal_shuf) / len(chal_shuf) < sum(chal_own) / len(chal_own)
    assert tox_head.rtp_toxicity_examples(Path(shared_dir) / "data") == examples      # seeded


def test_fit_recovers_a_planted_direction_with_the_reward_sign():
    g = torch.Generator().manual_seed(0)
    d, n = 12, 600
    w = torch.randn(d, generator=g)
    x = torch.randn(n, d, generator=g) * 3 + 5                     # off-centre, unnormalised features
    p = torch.sigmoid((x - 5) @ w)
    xv = torch.randn(200, d, generator=g) * 3 + 5
    pv = torch.sigmoid((xv - 5) @ w)
    head, m = tox_head.fit_toxicity_head(x, p, xv, pv, epochs=60, lr=3e-2, weight_decay=0.0)
    r = head(xv)
    assert m["val_auc_perspective_toxic"] > 0.95
    # reward = logit P(non-toxic): close to -(x - 5)·w up to the fit's error, sign included
    assert torch.corrcoef(torch.stack([r, -((xv - 5) @ w)]))[0, 1] > 0.97
    assert ((r < 0) == (pv > 0.5)).float().mean() > 0.9
    assert tox_head._auc(torch.tensor([3.0, 2.0, 1.0]), torch.tensor([True, False, False])) == 1.0
    assert tox_head._auc(torch.tensor([1.0, 1.0]), torch.tensor([True, False])) == 0.5


def test_shipped_head_loads_with_its_provenance():
    from rgk.models import RewardHead
    head = RewardHead.load(tox_head.DEFAULT_TOX_HEAD)
    notes = json.loads(head.config.notes)
    assert head.config.hidden_size == 576 and head.config.kind == "linear"
    assert "Perspective" in notes["data"] and notes["val_auc_perspective_toxic"] > 0.7
    assert notes["reward"].startswith("logit P(non-toxic)")


@pytest.mark.slow
@pytest.mark.default_model
def test_shipped_head_scores_a_toxic_continuation_below_a_clean_one():
    from rgk.models import RewardHead, final_hidden, load_model
    model, tok = load_model()
    head = RewardHead.load(tox_head.DEFAULT_TOX_HEAD)
    prompt = "He looked at the man and said"
    texts = [prompt + " that he was a fucking idiot and a piece of shit.",
             prompt + " that he was glad to see him again after so many years."]
    r = []
    for t in texts:
        ids = tok(t, return_tensors="pt", add_special_tokens=False).input_ids
        with torch.no_grad():
            r.append(float(head(final_hidden(model, ids)[:, -1])))
    assert r[0] < 0 < r[1], r
