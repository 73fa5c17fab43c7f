"""Hydra command-line overrides written by the launchers (a resume's rewritten command, DDP ranks' commands)."""

from __future__ import annotations

import re
from pathlib import Path

_PLAIN = re.compile(r"[\w./:@+%-]+")  # override values that need no quotes in Hydra's grammar


def quote(value: str | Path) -> str:
    """A value as a Hydra override: as is when plain, else single-quoted (paths with spaces, commas...)."""
    text = str(value)
    if _PLAIN.fullmatch(text):
        return text
    return "'" + text.replace("\\", "\\\\").replace("'", "\\'") + "'"
