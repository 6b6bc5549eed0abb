"""Integrator commands of the CLI: ``trigger`` and ``verify`` (standard library only)."""

from __future__ import annotations

import argparse
from typing import Any


def register_tools(sub: Any) -> None:
    """Add the integrator sub-commands to the CLI's sub-parsers."""
    del sub  # filled in by the CLI work


def _unused(_: argparse.Namespace) -> int:  # pragma: no cover
    return 0
