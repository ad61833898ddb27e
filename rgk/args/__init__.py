"""ARGS: reward-guided search at decoding time (Khanov et al., ICLR 2024) — decoding only.

Entry points, all over one decoding entry (`rgk.args.engine.run`): `args_generate` (rgk's
signature), `custom_generate` (`model.generate(..., custom_generate=custom_generate,
reward=...)`, so also pipelines), the CLI (`rgk generate`); `ARGSLogitsProcessor` runs
inside transformers' own loop.  Reward-head training lives in `rgk.heads`."""
from rgk.args.cache import ForkCache
from rgk.args.hf_generate import ARGSGenerateOutput, custom_generate
from rgk.args.processor import ARGSLogitsProcessor
from rgk.args.rewards import (RewardModel, RewardSource, Scores, Session, SharedHead, TextReward,
                              load_reward_model, tokenizers_agree)
from rgk.args.search import ARGSOutput, args_generate, naive_args_generate

__all__ = ["ForkCache", "ARGSLogitsProcessor", "RewardModel", "RewardSource", "Scores", "Session", "SharedHead",
           "TextReward", "load_reward_model", "tokenizers_agree", "ARGSOutput", "args_generate",
           "naive_args_generate", "custom_generate", "ARGSGenerateOutput"]
