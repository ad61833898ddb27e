"""Ticket counters for the single-launch split kernels (the last program of a row merges).

Each kernel family keeps its own zeroed int32 buffer per device; the kernels reset every
counter they use, so a buffer stays zeroed between launches and inside CUDA graphs.  Calls
of one family on different streams of a device must not run concurrently.
"""
from __future__ import annotations

import torch

_BUFFERS: dict = {}


def tickets(family: str, device: torch.device, n: int, min_size: int) -> torch.Tensor | None:
    """A zeroed counter buffer with at least n entries; None when it would have to be
    allocated during a CUDA-graph capture (the caller then launches unsplit)."""
    key = (family, device.type, device.index)
    buf = _BUFFERS.get(key)
    if buf is None or buf.numel() < n:
        if device.type == "cuda" and torch.cuda.is_current_stream_capturing():
            return None
        buf = torch.zeros(max(n, min_size), dtype=torch.int32, device=device)
        _BUFFERS[key] = buf
    return buf
