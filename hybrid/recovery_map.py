"""`python -m hybrid.recovery_map`: the tool lives in `hybrid.studies.recovery_map`."""

import sys

from hybrid.studies.recovery_map import main

if __name__ == "__main__":
    sys.exit(main())
