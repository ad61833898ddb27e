"""ARGRE editing of the final hidden state at decoding time.

For the newest position's final hidden state h (after the final norm, the input of
lm_head), with token reward θ, non-toxic direction d_raw and r̄⁺ from training:

    h' = h + (1/β) (r̄⁺ − θ(h)) · 1[r̄⁺ > θ(h)] · d_raw        (steering)
    h' <- h' + η ∇θ(h')   n_steps times                      (refinement)
    logits = lm_head(h')

computed by the fused op `rgk.ops.argre_refine` (CUDA / Triton / PyTorch reference).
The MLP runs in fp32; the result is cast back to the model's dtype.

Two ways in:
- `with editor.attach(model): model.generate(...)` — a forward hook on the module that
  produces `last_hidden_state` (the final norm) replaces the last position of its
  output.  The edit happens after every layer has written its KV entries, so the cache
  never sees it; batched left-padded prompts work because the newest token is always
  the last position.  `positions="all"` edits every position (teacher-forced
  perplexity with editing).
- `editor.edit(h_last)` for a native decode loop.

One editor at a time per model: `attach` refuses (ValueError naming `model`) while an
editor, this one or another, is attached to the model or to its final norm, and the
block's exit (normal or by an exception) removes exactly the hook it added.
`attached_editor(model)` says which editor is attached (None when none).
"""
from __future__ import annotations

import contextlib
import json
import math
import os
from pathlib import Path

import weakref

import torch
from torch import nn

from rgk import hf, ops
from rgk.models import reward_mlp

DEFAULT_EDITOR = Path(__file__).resolve().parents[1] / "data" / "argre" / "smollm2-rtp"
_NORM_NAMES = ("norm", "final_layernorm", "final_layer_norm", "ln_f", "final_norm")


def final_norm_module(model: nn.Module) -> nn.Module:
    """The module whose output is the LM's last_hidden_state (the input of lm_head)."""
    dec = hf.decoder(model)
    for owner in (dec, getattr(dec, "decoder", None), model):
        if owner is None:
            continue
        for name in _NORM_NAMES:
            m = getattr(owner, name, None)
            if isinstance(m, nn.Module):
                return m
    raise ValueError(f"model: cannot find the final norm of {type(model).__name__} (looked for "
                     f"{', '.join(_NORM_NAMES)}); pass module= to attach()")


# model or hooked module -> the editor attached to it (weak: a dropped model leaves no entry)
_ATTACHED: "weakref.WeakKeyDictionary[nn.Module, ARGREEditor]" = weakref.WeakKeyDictionary()


def attached_editor(model: nn.Module) -> "ARGREEditor | None":
    """The ARGREEditor attached (by `ARGREEditor.attach`) to `model` or to its final norm,
    or None."""
    ed = _ATTACHED.get(model)
    if ed is not None:
        return ed
    try:
        return _ATTACHED.get(final_norm_module(model))
    except (ValueError, AttributeError, TypeError, NotImplementedError):
        return None


class ARGREEditor:
    """Trained ARGRE editor: token reward (w1, b1, w2, b2), direction d_raw and r̄⁺.

    w1 [m, d], b1 [m], w2 [1, m], b2 [1], direction [d]; n_steps >= 0 refinement steps of
    size step_size; beta > 0 scales the steering (1/beta).  n_steps = 0 is steering only.
    The constructor's defaults are the paper's (5, 0.5, 1.0); `load` applies the settings
    saved with an editor (the shipped SmolLM2 editor: n_steps 5, step_size 0.1, beta 3,
    chosen on a development sweep because the paper's over-steer this small model).
    """

    def __init__(self, w1, b1, w2, b2, direction, r_plus: float, *, n_steps: int = 5, step_size: float = 0.5,
                 beta: float = 1.0, info: dict | None = None):
        w1, b1, w2, b2, direction = (torch.as_tensor(t).detach().float() for t in (w1, b1, w2, b2, direction))
        if w1.dim() != 2:
            raise ValueError(f"w1: expected [m, d], got shape {tuple(w1.shape)}")
        m, d = w1.shape
        for name, t, shape in (("b1", b1, (m,)), ("w2", w2, (1, m)), ("b2", b2, (1,)), ("direction", direction, (d,))):
            if tuple(t.shape) != shape:
                raise ValueError(f"{name}: expected shape {shape}, got {tuple(t.shape)}")
        if not math.isfinite(float(r_plus)):
            raise ValueError(f"r_plus: expected a finite number, got {r_plus!r}")
        self._params = (w1, b1, w2, b2, direction)
        self._on: dict[tuple, tuple] = {}
        self.r_plus = float(r_plus)
        self.info = dict(info or {})
        self.configure(n_steps=n_steps, step_size=step_size, beta=beta)

    @property
    def hidden_size(self) -> int:
        return self._params[0].shape[1]

    def configure(self, *, n_steps: int | None = None, step_size: float | None = None,
                  beta: float | None = None) -> ARGREEditor:
        """Change the inference parameters in place (returns self)."""
        if n_steps is not None:
            if isinstance(n_steps, bool) or not isinstance(n_steps, int) or n_steps < 0:
                raise ValueError(f"n_steps: expected an int >= 0, got {n_steps!r}")
            self.n_steps = n_steps
        if step_size is not None:
            if not math.isfinite(float(step_size)) or step_size < 0:
                raise ValueError(f"step_size: expected a finite number >= 0, got {step_size!r}")
            self.step_size = float(step_size)
        if beta is not None:
            if not math.isfinite(float(beta)) or beta <= 0:
                raise ValueError(f"beta: expected a finite number > 0, got {beta!r}")
            self.beta = float(beta)
        return self

    # ------------------------------------------------------------------ io

    @classmethod
    def load(cls, path: str | os.PathLike | None = None, **kw) -> ARGREEditor:
        """Load `<path>.safetensors` + `<path>.json` (from `rgk argre train`); None loads the
        shipped SmolLM2-135M-Instruct editor.  Keyword arguments override the saved
        inference defaults (n_steps, step_size, beta)."""
        from safetensors.torch import load_file
        path = Path(path) if path is not None else DEFAULT_EDITOR
        if path.suffix in (".json", ".safetensors"):
            path = path.with_suffix("")
        wf, jf = path.with_name(path.name + ".safetensors"), path.with_name(path.name + ".json")
        if not wf.exists() or not jf.exists():
            raise FileNotFoundError(f"path: expected {wf} and {jf} (write them with `rgk argre train`)")
        from safetensors import SafetensorError
        try:
            t = load_file(str(wf))
        except (SafetensorError, OSError, ValueError) as e:
            raise ValueError(f"path: {wf} is not a readable safetensors file ({e})") from None
        try:
            info = json.loads(jf.read_text(encoding="utf-8"))
            if not isinstance(info, dict):
                raise ValueError("not a JSON object")
        except (OSError, ValueError, UnicodeDecodeError) as e:
            raise ValueError(f"path: {jf} is not a readable ARGRE editor json ({e})") from None
        missing = [k for k in ("w1", "b1", "w2", "b2", "direction") if k not in t]
        if missing or "r_plus" not in info:
            what = f"{wf} lacks {', '.join(missing)}" if missing else f"{jf} lacks r_plus"
            raise ValueError(f"path: not an ARGRE editor: {what}")
        defaults = info.get("edit_defaults", {})
        try:
            ed = cls(t["w1"], t["b1"], t["w2"], t["b2"], t["direction"], info["r_plus"], info=info,
                     **(defaults if isinstance(defaults, dict) else {}))
        except (ValueError, TypeError) as e:
            raise ValueError(f"path: {wf} and {jf} do not form a valid ARGRE editor ({e})") from None
        return ed.configure(**kw) if kw else ed

    def _weights(self, device: torch.device):
        key = (device.type, device.index)
        if key not in self._on:
            self._on[key] = tuple(p.to(device) for p in self._params)
        return self._on[key]

    # ------------------------------------------------------------------ math

    def reward(self, h: torch.Tensor) -> torch.Tensor:
        """Token reward θ(h) for h [..., d], fp32."""
        w1, b1, w2, b2, _ = self._weights(h.device)
        return reward_mlp(h, w1, b1, w2, b2)

    def edit(self, h: torch.Tensor) -> torch.Tensor:
        """Edited final hidden states for h [..., d] (any leading shape), same dtype as h."""
        if not isinstance(h, torch.Tensor):
            raise TypeError(f"h: expected a torch.Tensor, got {type(h).__name__}")
        if h.dim() < 1 or h.shape[-1] != self.hidden_size:
            raise ValueError(f"h: expected [..., {self.hidden_size}] (the editor's hidden size), "
                             f"got shape {tuple(h.shape)}")
        w1, b1, w2, b2, direction = self._weights(h.device)
        flat = h.reshape(-1, self.hidden_size)
        if flat.shape[0] == 0:
            return h
        if torch.is_inference_mode_enabled():
            # the reference takes autograd gradients, which inference tensors refuse
            with torch.inference_mode(False):
                out = ops.argre_refine(flat.clone(), w1, b1, w2, b2, direction, self.r_plus, beta=self.beta,
                                       n_steps=self.n_steps, step_size=self.step_size)
        else:
            out = ops.argre_refine(flat, w1, b1, w2, b2, direction, self.r_plus, beta=self.beta,
                                   n_steps=self.n_steps, step_size=self.step_size)
        return out.reshape(h.shape)

    # ------------------------------------------------------------------ HF integration

    def _hook(self, positions: str):
        def hook(module, args, output):
            if not isinstance(output, torch.Tensor) or output.dim() != 3:
                raise TypeError(f"ARGREEditor hook: expected the final norm to return a [B, T, d] tensor, "
                                f"got {type(output).__name__}")
            # in an ARGS fork pass every position is a newest one (the k candidates of each row,
            # each the last token of its own sequence): edit them all, as a full recompute would
            from rgk.args.cache import in_fork_pass
            if positions == "all" or in_fork_pass():
                return self.edit(output)
            last = self.edit(output[:, -1])
            if output.shape[1] == 1:
                return last[:, None]
            return torch.cat([output[:, :-1], last[:, None]], dim=1)
        return hook

    @staticmethod
    def attached(model: nn.Module) -> "ARGREEditor | None":
        """The editor attached to `model` (see `attached_editor`), or None."""
        return attached_editor(model)

    @contextlib.contextmanager
    def attach(self, model: nn.Module, *, positions: str = "last", module: nn.Module | None = None):
        """Edit the model's final hidden states while the context is open.

        positions="last": only the newest position of every forward (decoding);
        positions="all": every position (teacher-forced scoring, e.g. perplexity).
        Nesting is refused: attaching while an editor (this one or another) is attached
        to `model` or to the hooked module raises ValueError.  On exit, normal or by an
        exception, the hook is removed and the model is as before."""
        if positions not in ("last", "all"):
            raise ValueError(f"positions: expected 'last' or 'all', got {positions!r}")
        if not isinstance(model, nn.Module):
            raise TypeError(f"model: expected a torch.nn.Module, got {type(model).__name__}")
        module = module if module is not None else final_norm_module(model)
        hidden = getattr(getattr(model, "config", None), "hidden_size", None)
        if hidden is not None and hidden != self.hidden_size:
            raise ValueError(f"model: hidden size {hidden} does not match the editor's {self.hidden_size}")
        other = _ATTACHED.get(model) or _ATTACHED.get(module) or attached_editor(model)
        if other is not None:
            who = "this editor" if other is self else f"another editor ({other!r})"
            raise ValueError(f"model: an ARGRE editor is already attached ({who}); nested attach would stack "
                             "two edits silently. Leave the first `with editor.attach(model):` block first")
        handle = module.register_forward_hook(self._hook(positions))
        _ATTACHED[model] = self
        _ATTACHED[module] = self
        try:
            yield self
        finally:
            handle.remove()
            for key in (model, module):
                if _ATTACHED.get(key) is self:
                    del _ATTACHED[key]

    def __repr__(self) -> str:
        return (f"ARGREEditor(hidden_size={self.hidden_size}, r_plus={self.r_plus:.4g}, n_steps={self.n_steps}, "
                f"step_size={self.step_size}, beta={self.beta})")
