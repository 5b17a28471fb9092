"""`python -m ielstudio` runs the `ielstudio` command."""

import sys

from ielstudio.cli import main

if __name__ == "__main__":
    sys.exit(main())
