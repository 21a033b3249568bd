"""`python -m hybrid.sweep_pool`: the tool lives in `hybrid.studies.sweep_pool`."""

import sys

from hybrid.studies.sweep_pool import main

if __name__ == "__main__":
    sys.exit(main())
