"""`python -m hybrid.probe`: the tool lives in `hybrid.studies.probe`."""

import sys

from hybrid.studies.probe import main

if __name__ == "__main__":
    sys.exit(main())
