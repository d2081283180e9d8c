"""Which torch device a command runs on: one rule for `mind train`, `mind evaluate` and serving."""
from __future__ import annotations

import torch


class DeviceError(ValueError):
    """A device name that is not a torch device, or CUDA asked for where there is none."""


def resolve_device(name: str, local_rank: int = 0) -> torch.device:
    """``auto`` -> ``cuda:local_rank`` when CUDA is available, else ``cpu``; ``cuda`` ->
    ``cuda:local_rank``; any other torch device string (``cpu``, ``cuda:1``) as given.

    Raises DeviceError naming the problem (callers prefix their flag or setting name).
    """
    if name == "auto":
        return torch.device("cuda", local_rank) if torch.cuda.is_available() else torch.device("cpu")
    try:
        device = torch.device(name)
    except RuntimeError as err:
        raise DeviceError(f"not a torch device ({err})") from err
    if device.type == "cuda" and not torch.cuda.is_available():
        raise DeviceError("CUDA is not available on this machine (is a CUDA build of torch installed?)")
    if device.type == "cuda" and device.index is None:
        return torch.device("cuda", local_rank)
    return device
