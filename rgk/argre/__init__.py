"""ARGRE: autoregressive reward guided representation editing (Xiao et al., NeurIPS 2025).

Training (`rgk.argre.train`): a non-toxic direction from paired continuations, trajectories
between each pair's hidden states along that direction, and a token-level reward MLP
learned from adjacent trajectory points.  Editing (`rgk.argre.edit`): at every decoding
step the newest final hidden state is steered along the direction up to the mean
non-toxic reward and refined by a few gradient-ascent steps on the reward (fused op
`rgk.ops.argre_refine`).

    from rgk.argre import ARGREEditor, attached_editor
    editor = ARGREEditor.load()            # shipped SmolLM2-135M-Instruct editor
    with editor.attach(model):
        out = model.generate(**inputs)
    attached_editor(model)                 # None again: attach restores the model on exit
"""
from rgk.argre.edit import DEFAULT_EDITOR, ARGREEditor, attached_editor, final_norm_module
from rgk.argre.train import (
           TokenReward,
           nontoxic_direction,
           trajectories,
           trajectory_loss,
)

__all__ = ["DEFAULT_EDITOR", "ARGREEditor", "TokenReward", "attached_editor", "final_norm_module",
           "nontoxic_direction", "trajectories", "trajectory_loss"]
