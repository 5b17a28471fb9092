"""The `ielstudio` executable's entry point: start-up that a Ctrl+C cannot turn into a traceback.

Importing the command line pulls in PyTorch (seconds); a Ctrl+C in that time raised
KeyboardInterrupt out of the import. This module imports nothing heavy itself, so the
interrupt is caught here and the command exits 130 with one line, like a Ctrl+C later.
"""

from __future__ import annotations

import sys


def main(argv: list[str] | None = None) -> int:
    """Run the `ielstudio` command (see `ielstudio.cli.main`); 130 when interrupted while starting."""
    try:
        from ielstudio import cli
    except KeyboardInterrupt:
        sys.stderr.write("\nielstudio: interrupted while starting; nothing was read or written\n")
        return 130
    return cli.main(argv)


if __name__ == "__main__":
    sys.exit(main())
