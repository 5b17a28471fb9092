"""Entry script of the PyInstaller bundle: the `ielstudio` command (GUI by default)."""

import multiprocessing
import sys

from ielstudio.entry import main

if __name__ == "__main__":
    multiprocessing.freeze_support()  # torch DataLoader workers re-enter a frozen executable
    sys.exit(main())
