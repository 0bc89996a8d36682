"""Loading checkpoints without running code from them.

``torch.load`` unpickles, and unpickling can run any code the file names. A checkpoint made
by ``cnf fit`` holds only tensors, numbers, strings and containers, which PyTorch's
weights-only unpickler reads without running anything; :func:`load_checkpoint` insists on it
unless told the file is trusted.

    >>> import tempfile, os
    >>> path = os.path.join(tempfile.mkdtemp(), "w.ckpt")
    >>> torch.save({"state_dict": {"w": torch.ones(2)}}, path)
    >>> load_checkpoint(path)["state_dict"]["w"]
    tensor([1., 1.])
"""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any

import torch

from cnf.errors import DataError, UntrustedCheckpointError

__all__ = ["load_checkpoint"]


def load_checkpoint(path: str | Path, trust: bool = False, map_location: Any = "cpu",
                    trust_option: str = "trust=True") -> dict[str, Any]:
    """The checkpoint at ``path`` as a dict, its tensors on ``map_location``.

    With ``trust=False`` (the default) only tensors, numbers, strings and containers are
    read (``torch.load(weights_only=True)``); a file that needs anything else raises
    :class:`cnf.errors.UntrustedCheckpointError` naming ``trust_option`` — the option of the
    caller that passes ``trust=True`` (for example ``--trust-checkpoint`` on a command line).
    ``trust=True`` unpickles in full: only for files from a source you trust.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"no checkpoint at {path.resolve()}: pass the path of a .ckpt file "
                        f"(a run keeps them in its checkpoints folder)")
    if trust:
        return torch.load(path, map_location=map_location, weights_only=False)
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as exc:
        raise UntrustedCheckpointError(
            f"{path} holds Python objects beyond tensors and plain containers, and loading "
            f"them could run code from the file ({_first_line(exc)}). If you trust where the "
            f"file comes from, load it with {trust_option}.") from None


def _first_line(exc: BaseException) -> str:
    """The line of torch's message that names what the file wanted to load."""
    lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
    named = [ln for ln in lines if "GLOBAL" in ln or "Unsupported" in ln]
    return (named or lines or [type(exc).__name__])[0].rstrip(".")
