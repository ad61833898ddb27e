"""`rgk eval`: quality and cost of the decoding methods, measured on held-out prompts.

- `metrics`: distinct-n, repetition, coherence (all-MiniLM-L6-v2), EOS share / length,
  continuation perplexity, paired bootstrap intervals;
- `args_eval`: `rgk eval args` (HH-RLHF) and `rgk eval eos-probe`;
- `detox_eval`: `rgk eval detox` (RealToxicityPrompts);
- `judges`: the two toxicity judges;  `cli`: the commands.
"""
