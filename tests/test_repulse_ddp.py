"""RePULSe under DDP (accelerate, two CPU processes on gloo, started with
torch.multiprocessing): on the same samples, a two-process step gives the same losses,
gradients and parameter updates (proposal and policy) as one process on the whole batch;
a short two-process `train()` writes one log and one checkpoint and keeps the processes'
parameters identical."""
from __future__ import annotations

import json
import os
import socket
import sys
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp

sys.path.insert(0, str(Path(__file__).parent))

V = 6
PROMPTS = [[1, 2, 3], [4, 5], [2, 1, 1], [3, 3], [5, 4, 1], [1, 1], [2, 5], [4, 4, 2]]


def _tiny_lm():
    from transformers import LlamaConfig, LlamaForCausalLM
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=V, hidden_size=16, intermediate_size=32, num_hidden_layers=2, num_attention_heads=2,
                      num_key_value_heads=1, max_position_embeddings=64, pad_token_id=0, eos_token_id=None,
                      bos_token_id=None, tie_word_embeddings=False)
    m = LlamaForCausalLM(cfg).eval()
    m.generation_config.eos_token_id = None
    m.generation_config.pad_token_id = 0
    return m


def _reward():
    from rgk.args.rewards import RewardSource

    class TableReward(RewardSource):
        table = torch.rand(V, V, generator=torch.Generator().manual_seed(3)) * 2 - 1

        def reference_rewards(self, lm, seqs, mask, prompt_len):
            return self.table[seqs[:, prompt_len], seqs[:, prompt_len + 1]]

    return TableReward()


def _config(**kw):
    from rgk.repulse import RePULSeConfig
    base = dict(method="repulse", steps=2, prompts_per_step=4, samples_per_prompt=3, max_new_tokens=2, lr=1e-2,
                threshold=0.0, kl_coef=0.1, checkpoint_every=2)
    base.update(kw)
    return RePULSeConfig(**base)


def _trainer(accelerator=None, **kw):
    from rgk.repulse import RePULSeTrainer
    out = kw.pop("out_dir", None)
    return RePULSeTrainer(_tiny_lm(), _reward(), PROMPTS, _config(**kw), progress=False, accelerator=accelerator,
                          out_dir=out)


def _snapshot(t):
    return {"p": {k: v.detach().clone() for k, v in t.p_base.state_dict().items()},
            "q": {k: v.detach().clone() for k, v in t.q_base.state_dict().items()},
            "gp": [p.grad.detach().clone() for p in t.p_base.parameters()],
            "gq": [p.grad.detach().clone() for p in t.q_base.parameters()]}


def _worker(rank, world, port, folder):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world),
                      LOCAL_RANK=str(rank), LOCAL_WORLD_SIZE=str(world), OMP_NUM_THREADS="1")
    torch.set_num_threads(1)
    from accelerate import Accelerator
    folder = Path(folder)
    acc = Accelerator(cpu=True)
    assert acc.num_processes == world and acc.process_index == rank
    # 1. one update on the samples the single process drew, this process's half of the prompts
    exp = torch.load(folder / "exp.pt", weights_only=False)
    t = _trainer(acc)
    n = exp.n_prompts // world
    stats = t.update(exp.prompts(rank * n, (rank + 1) * n))
    torch.save({"stats": stats, **_snapshot(t)}, folder / f"update-{rank}.pt")
    # 2. a short training run with its own sampling, logs and checkpoints
    t = _trainer(acc, out_dir=folder / "run", steps=2)
    t.train()
    torch.save({k: v.clone() for k, v in t.p_base.state_dict().items()}, folder / f"train-{rank}.pt")
    acc.wait_for_everyone()
    torch.distributed.destroy_process_group()


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_processes_match_one_process_on_the_same_samples(tmp_path):
    single = _trainer()
    exp = single.make_experience(single.prompt_indices(0), 0)
    torch.save(exp, tmp_path / "exp.pt")
    stats = single.update(exp)
    one = _snapshot(single)

    mp.spawn(_worker, args=(2, _free_port(), str(tmp_path)), nprocs=2, join=True)

    ranks = [torch.load(tmp_path / f"update-{r}.pt", weights_only=False) for r in range(2)]
    for k in ("loss_p", "loss_q", "loss_rl", "loss_neg"):
        for r in ranks:                                   # all-reduced: the whole batch's loss
            assert r["stats"][k] == pytest.approx(stats[k], rel=1e-5, abs=1e-7), k
    for r in ranks:
        for key in ("gp", "gq"):                          # averaged gradients = full-batch gradients
            for a, b in zip(r[key], one[key]):
                torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-7)
        for key in ("p", "q"):                            # and the same Adam update
            for name, v in one[key].items():
                torch.testing.assert_close(r[key][name], v, rtol=1e-5, atol=1e-6)
    moved = max(float((ranks[0]["p"][k] - v).abs().max()) for k, v in single.ref.state_dict().items())
    assert moved > 1e-3                                   # the update did something

    a, b = (torch.load(tmp_path / f"train-{r}.pt") for r in range(2))
    assert all(torch.equal(a[k], b[k]) for k in a)        # the processes stay in sync
    rows = [json.loads(x) for x in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2]            # one log, written once
    assert (tmp_path / "run" / "checkpoints" / "latest").read_text().strip() == "step-000002"
    assert json.loads((tmp_path / "run" / "repulse-run.json").read_text())["world_size"] == 2
