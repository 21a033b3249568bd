"""`python -m hybrid.design` keeps working: the tool lives in `hybrid.studies.design`."""

import sys

from hybrid.studies.design import main

if __name__ == "__main__":
    sys.exit(main())
