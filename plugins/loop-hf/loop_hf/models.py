"""Model references for the hf backend. Resolution lives in loop (`loop.resolve_model`), so every
backend and updater resolves a reference the same way; this module keeps the old names
(`loop_hf.models.resolve_model`, `ModelNotFound`) and the hf plugin's own `quiet_transformers`."""

from __future__ import annotations

import loop

ModelNotFound = loop.ModelNotFound
resolve_model = loop.resolve_model

__all__ = ["ModelNotFound", "quiet_transformers", "resolve_model"]


def quiet_transformers() -> None:
    """Silence transformers' per-load progress bars and info logs: loop draws its own progress."""
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()
