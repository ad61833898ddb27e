"""Reward heads for ARGS: training data (HH-RLHF pairs, `rgk.heads.data`), Bradley–Terry
training (`rgk.heads.train`, the `rgk train-head` command in `rgk.heads.cli`) and the
toxicity head for detoxification (`rgk.heads.tox`).  The head itself, `RewardHead`, lives
in `rgk.models`; decoding with it is `rgk.args`."""
