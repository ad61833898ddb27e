"""Host-side launch helpers shared by the Triton kernels."""
from __future__ import annotations

import torch

_SMS: dict = {}


def sm_count(device: torch.device) -> int:
    """Streaming multiprocessors of a CUDA `device` (queried once per device)."""
    n = _SMS.get(device)
    if n is None:
        n = _SMS[device] = torch.cuda.get_device_properties(device).multi_processor_count
    return n


def last_dim_contiguous(t: torch.Tensor) -> torch.Tensor:
    """`t` itself when its last dimension has stride 1 (what the kernels index), else a contiguous copy."""
    return t if t.stride(-1) == 1 else t.contiguous()
