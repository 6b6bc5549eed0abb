"""The ``ascend-webhooks`` console script.

Each sub-command lives in its own module and registers itself here; the integrator commands
(``trigger``, ``verify``) need the standard library only, the service commands (``serve``,
``worker``, ``migrate``) import the server extra lazily.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from . import __version__


def build_parser() -> argparse.ArgumentParser:
    """The argument parser for every sub-command."""
    parser = argparse.ArgumentParser(
        prog="ascend-webhooks", description="Send, receive and test Ascend webhooks."
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    from .tools import register_tools

    register_tools(sub)
    try:
        from .service.commands import register_service
    except ImportError:  # the server extra is not installed
        pass
    else:
        register_service(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI; the exit status is 0 on success, non-zero with a one-line reason otherwise."""
    parser = build_parser()
    args = parser.parse_args(argv)
    result: int = args.handler(args)
    return result


if __name__ == "__main__":
    sys.exit(main())
