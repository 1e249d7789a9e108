"""The ``trackin`` command: ``serve`` runs the service, ``replay`` streams a file through it, ``keys``
manages API keys.

It lives at the import root because it joins two packages that stay independent of each other.
"""

from __future__ import annotations

import argparse
import sys

from trackin.replay.cli import add_parser as add_replay
from trackin.service.cli import add_parser as add_serve
from trackin.service.security.cli import add_parser as add_keys

__all__ = ["main"]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="trackin", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    add_serve(commands)
    add_replay(commands)
    add_keys(commands)
    args = parser.parse_args(argv)
    result: int = args.run(args)
    return result


if __name__ == "__main__":
    sys.exit(main())
