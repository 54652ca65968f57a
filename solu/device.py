"""What training does differently on a GPU: TF32 matmuls, bf16 autocast, pinned copies.

Each function takes the device (and precision) and is a no-op or a plain copy on the
CPU, so the CPU tests run the same functions the CUDA path runs.
"""
from __future__ import annotations

import contextlib

import torch

from solu.config import PRECISIONS


def autocast_dtype(device: torch.device, precision: str) -> torch.dtype | None:
    """The autocast dtype for `precision` on `device`: auto is bf16 on CUDA and fp32
    (no autocast) elsewhere."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    if precision == "bf16" or (precision == "auto" and device.type == "cuda"):
        return torch.bfloat16
    return None


def autocast(device: torch.device, precision: str):
    """A context for the forward pass and loss: bf16 autocast or nothing."""
    dtype = autocast_dtype(device, precision)
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


def enable_tf32(device: torch.device) -> bool:
    """Let float32 matmuls and convolutions use TF32 tensor cores on CUDA; True when set."""
    if device.type != "cuda":
        return False
    torch.backends.cuda.matmul.fp32_precision = "tf32"
    torch.backends.cudnn.conv.fp32_precision = "tf32"
    return True


def to_device(batch: torch.Tensor, device: torch.device) -> torch.Tensor:
    """A host batch on `device`. To CUDA it goes through pinned memory with a
    non-blocking copy, so the copy overlaps the step still running on the GPU."""
    if device.type == "cuda":
        return batch.pin_memory().to(device, non_blocking=True)
    return batch.to(device)
