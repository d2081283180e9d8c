"""The two on-disk formats of the user tower: TorchScript (``user_tower.pt``, the bundle's
contract) and torch.export (``user_tower.pt2``, dynamic batch; torch deprecated ``torch.jit``
in 2.11; served with ``MIND_TOWER_FORMAT=export``). Both map history (B, L), profile (B, P)
int64 -> capsules (B, K, d) float32, active (B, K) bool, weights (B, K, L).

Every ``torch.jit`` call here silences torch's deprecation warning for that call only (never
process-wide).
"""
from __future__ import annotations

import contextlib
import warnings
from pathlib import Path

import torch

TORCHSCRIPT = "torchscript"
EXPORT = "export"
TOWER_FORMATS = (TORCHSCRIPT, EXPORT)
MIN_EXPORT_BATCH = 1
# torch 2.13: "`torch.jit.script` is deprecated. Please switch to `torch.compile` or `torch.export`."
JIT_DEPRECATION = r"`torch\.jit\.(script|save|load)` is deprecated"


@contextlib.contextmanager
def _jit_deprecation_silenced():
    """TorchScript stays the contract (users asked for it): its deprecation notice is expected
    here and nowhere else; catch_warnings restores the filters on exit."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=JIT_DEPRECATION, category=DeprecationWarning)
        yield


def script_tower(tower: torch.nn.Module) -> torch.jit.ScriptModule:
    """``torch.jit.script`` of an eager tower (a ScriptModule is returned as is)."""
    if isinstance(tower, torch.jit.ScriptModule):
        return tower
    with _jit_deprecation_silenced():
        return torch.jit.script(tower)


def save_torchscript(tower: torch.jit.ScriptModule, file: Path) -> None:
    with _jit_deprecation_silenced():
        torch.jit.save(tower, str(file))


def export_tower(tower: torch.nn.Module, max_len: int, n_profile: int) -> torch.export.ExportedProgram:
    """``torch.export`` of an eager tower on CPU, batch dimension dynamic, L = max_len fixed."""
    history = torch.zeros(2, max_len, dtype=torch.int64)              # (B, L) example input
    history[:, -1] = 1
    profile = torch.zeros(2, n_profile, dtype=torch.int64)            # (B, P)
    batch = torch.export.Dim("batch", min=MIN_EXPORT_BATCH)
    with torch.no_grad():
        return torch.export.export(tower.cpu().eval(), (history, profile),
                                   dynamic_shapes=({0: batch}, {0: batch}))


def load_tower(file: Path, tower_format: str, device: torch.device) -> torch.nn.Module:
    """A tower file of either format on ``device``, for serving: eval mode, no autograd."""
    if tower_format == EXPORT:
        tower = torch.export.load(str(file)).module().to(device)   # the exported program's callable module
    else:
        with _jit_deprecation_silenced():
            tower = torch.jit.load(str(file), map_location=device).eval()
    for parameter in tower.parameters():   # serving only: outputs carry no autograd graph
        parameter.requires_grad_(False)
    return tower


def probe_tower(tower: torch.jit.ScriptModule, max_len: int, n_profile: int,
                device: torch.device) -> tuple[int, int]:
    """Run the tower on one one-item history; return its (n_interests K, dim d)."""
    history = torch.zeros(1, max_len, dtype=torch.int64, device=device)  # (1, L)
    history[0, -1] = 1
    profile = torch.zeros(1, n_profile, dtype=torch.int64, device=device)  # (1, P)
    with torch.no_grad():
        capsules, active = tower(history, profile)[:2]  # (1, K, d), (1, K)
    if capsules.dim() != 3 or tuple(active.shape) != tuple(capsules.shape[:2]):
        raise ValueError(f"tower returned capsules {tuple(capsules.shape)} and active "
                         f"{tuple(active.shape)}; expected (B, K, d) and (B, K)")
    if capsules.dtype != torch.float32 or active.dtype != torch.bool:
        raise ValueError(f"tower returned {capsules.dtype} capsules and {active.dtype} active; "
                         f"expected float32 and bool (the index holds float32)")
    return int(capsules.shape[1]), int(capsules.shape[2])


def tower_device(tower: torch.nn.Module) -> torch.device:
    for tensor in list(tower.parameters()) + list(tower.buffers()):
        return tensor.device
    return torch.device("cpu")
