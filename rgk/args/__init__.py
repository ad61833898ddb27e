"""ARGS: reward-guided search at decoding time (Khanov et al., ICLR 2024)."""
from rgk.args.cache import ForkCache
from rgk.args.processor import ARGSLogitsProcessor
from rgk.args.rewards import (RewardModel, RewardSource, Scores, Session, SharedHead, TextReward,
                              load_reward_model, tokenizers_agree)
from rgk.args.search import ARGSOutput, args_generate, naive_args_generate

__all__ = ["ForkCache", "ARGSLogitsProcessor", "RewardModel", "RewardSource", "Scores", "Session", "SharedHead",
           "TextReward", "load_reward_model", "tokenizers_agree", "ARGSOutput", "args_generate",
           "naive_args_generate"]
