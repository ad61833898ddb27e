"""A tiny random Llama causal LM with a word-level tokenizer (and a chat template), saved
to a folder: what the CLI and training tests load as `--model` without the real SmolLM2."""
from __future__ import annotations

from pathlib import Path

import torch

WORDS = ("hello world what is the a an of to and you i it be do not how can my me good bad day night "
         "dog cat barking tips help yes no please thanks question answer one two three four").split()
SPECIAL = ["<pad>", "<unk>", "<|im_start|>", "<|im_end|>", "<eos>", "user", "assistant", "system"]
CHAT_TEMPLATE = ("{% for m in messages %}<|im_start|> {{ m['role'] }} {{ m['content'] }} <|im_end|> "
                 "{% endfor %}{% if add_generation_prompt %}<|im_start|> assistant {% endif %}")


def tiny_tokenizer():
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast
    vocab = {w: i for i, w in enumerate(SPECIAL + list(WORDS))}
    tk = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tk.pre_tokenizer = pre_tokenizers.Whitespace()
    tok = PreTrainedTokenizerFast(tokenizer_object=tk, unk_token="<unk>", pad_token="<pad>", eos_token="<eos>")
    tok.chat_template = CHAT_TEMPLATE
    return tok


def save_tiny_model(folder: str | Path, *, hidden: int = 16, seed: int = 0) -> Path:
    """Write a tiny random LlamaForCausalLM + tokenizer to `folder`; returns the folder."""
    from transformers import LlamaConfig, LlamaForCausalLM
    folder = Path(folder)
    tok = tiny_tokenizer()
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=2,
                      num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=256,
                      pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id, bos_token_id=None,
                      tie_word_embeddings=False)
    torch.manual_seed(seed)
    model = LlamaForCausalLM(cfg).eval()
    model.generation_config.eos_token_id = tok.eos_token_id
    model.generation_config.pad_token_id = tok.pad_token_id
    from transformers.utils import logging as hf_logging
    hf_logging.disable_progress_bar()
    try:
        model.save_pretrained(folder)
    finally:
        hf_logging.enable_progress_bar()
    tok.save_pretrained(folder)
    return folder


def save_tiny_head(prefix: str | Path, hidden: int = 16, seed: int = 0):
    """A random linear RewardHead for the tiny model, saved at `prefix`."""
    from rgk.models import RewardHead, RewardHeadConfig
    torch.manual_seed(seed)
    head = RewardHead(RewardHeadConfig(hidden, "linear", base_model="tiny"))
    head.save(prefix)
    return head
