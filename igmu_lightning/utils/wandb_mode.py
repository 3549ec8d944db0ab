"""Whether a W&B run goes offline: offline unless an API key is configured or ``WANDB_MODE`` says
online, so a run never blocks on a login prompt (``wandb sync <run dir>`` uploads it later). Shared
by training's logger and evaluate.py's run."""

from __future__ import annotations

import netrc
import os


def wandb_key_configured() -> bool:
    """True when ``WANDB_API_KEY`` is set or ``wandb login`` stored a key in ``~/.netrc``."""
    if os.environ.get("WANDB_API_KEY"):
        return True
    try:
        return netrc.netrc().authenticators("api.wandb.ai") is not None
    except (FileNotFoundError, netrc.NetrcParseError, OSError):
        return False


def wandb_offline(offline: bool | None = None) -> bool:
    """``offline`` when given; ``None``: offline unless ``WANDB_MODE=online`` or an API key is configured."""
    if offline is not None:
        return offline
    mode = os.environ.get("WANDB_MODE", "").lower()
    return mode in ("offline", "dryrun", "disabled") or (mode != "online" and not wandb_key_configured())
