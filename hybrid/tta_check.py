"""`python -m hybrid.tta_check` keeps working: the tool lives in `hybrid.studies.tta_check`."""

import sys

from hybrid.studies.tta_check import main

if __name__ == "__main__":
    sys.exit(main())
