"""`python -m ielstudio` runs the `ielstudio` command."""

import sys

from ielstudio.entry import main

if __name__ == "__main__":
    sys.exit(main())
