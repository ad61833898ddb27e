"""Ticket counters for the single-launch split kernels (the last program of a row merges).

The rule, for every kernel that uses them (topk_logprobs, fork_attention, reward_select):

- One zeroed int32 buffer per (kernel family, device, stream).  Launches queued on one
  stream run one after another, so they may share counters; launches on different
  streams never do, so they may run concurrently.
- The kernels reset every counter they take, so a buffer stays zeroed from one launch
  (or graph replay) to the next: it is zeroed once, when it is allocated.
- Nothing is allocated or zeroed during a CUDA-graph capture.  When the capturing stream
  has no large enough buffer yet, `tickets` returns None and the caller launches unsplit
  (one program per row or block: the same result, no counters).  To keep the split
  launches in a graph, run the op once on the capture stream before capturing.
- A buffer is never freed: one that is outgrown is retired, not released, since a graph
  captured earlier may still hold its address.  (The buffers are a few KiB.)
"""
from __future__ import annotations

import torch

_BUFFERS: dict = {}
_RETIRED: list = []


def _stream_id(device: torch.device) -> int:
    """The current stream of `device` as an integer handle (0 off CUDA)."""
    if device.type != "cuda":
        return 0
    index = device.index if device.index is not None else torch.cuda.current_device()
    raw = getattr(torch._C, "_cuda_getCurrentRawStream", None)  # what triton's launcher reads, ~10x cheaper
    return raw(index) if raw is not None else torch.cuda.current_stream(index).cuda_stream


def _key(family: str, device: torch.device) -> tuple:
    index = device.index
    if device.type == "cuda" and index is None:
        index = torch.cuda.current_device()
    return family, device.type, index, _stream_id(device)


def tickets(family: str, device: torch.device, n: int, min_size: int) -> torch.Tensor | None:
    """A zeroed int32 counter buffer with at least n entries for `family` on the current
    stream of `device`; None during a CUDA-graph capture that would need a new one.
    A new buffer has max(n, min_size, twice the outgrown one) entries."""
    key = _key(family, device)
    buf = _BUFFERS.get(key)
    if buf is not None and buf.numel() >= n:
        return buf
    if device.type == "cuda" and torch.cuda.is_current_stream_capturing():
        return None
    size = max(n, min_size, 2 * buf.numel() if buf is not None else 0)
    if buf is not None:
        _RETIRED.append(buf)
    buf = _BUFFERS[key] = torch.zeros(size, dtype=torch.int32, device=device)
    return buf
