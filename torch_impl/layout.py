"""Conversions between the canonical layout and PyTorch's: the canonical layout IS PyTorch's.

The canonical weight format (``shared/core/canonical.py``) was defined by PyTorch's ``state_dict``:
conv weights ``[O, I/groups, kH, kW]``, linear weights ``[out, in]`` with a flattened
``(C, H, W)`` input numbered channel-first, exactly what ``nn.Conv2d``, ``nn.Linear`` and
``nn.Flatten`` on NCHW use. So no tensor is transposed or permuted here: the functions only
move data between numpy float32 arrays and torch tensors (the NHWC packages' ``layout.py``
has the transposes). A model built with ``channels_last=True`` keeps its conv weights and
feature maps in NHWC *memory order*, but their logical shape and indexing stay NCHW, which is
what these conversions see.
"""
from __future__ import annotations

from typing import Any

import numpy as np
import torch


def to_framework(w: Any) -> torch.Tensor:
    """A canonical array (numpy or torch) -> a float32 CPU tensor of the same layout. A writable, contiguous
    float32 numpy array is shared, not copied (``import_weights`` copies it into the model)."""
    # canonical [O, I/groups, kH, kW] / [out, in] / [C] == PyTorch layout: no transpose
    a = np.asarray(w)
    if a.dtype == np.float32 and a.flags.writeable and a.flags.c_contiguous:
        return torch.from_numpy(a)
    return torch.tensor(a, dtype=torch.float32)


def from_framework(t: torch.Tensor) -> np.ndarray:
    """A parameter, buffer or activation -> a float32 numpy copy in the canonical layout."""
    # PyTorch layout == canonical layout: no transpose; .contiguous() undoes channels_last
    # memory order (the logical NCHW indexing is unchanged) and the copy detaches from the model
    return t.detach().to("cpu", torch.float32).contiguous().numpy().copy()


def nchw_to_framework(x: np.ndarray) -> torch.Tensor:
    """A NCHW (or flat (N, F)) numpy batch -> a float32 torch tensor, same layout."""
    # NCHW == PyTorch's activation layout: no transpose
    return torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))


def framework_to_nchw(t: torch.Tensor) -> np.ndarray:
    """A torch activation (NCHW, possibly channels_last in memory, or (N, F)) -> NCHW numpy."""
    return from_framework(t)
