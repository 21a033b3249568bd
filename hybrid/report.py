"""`python -m hybrid.report` keeps working: the tool lives in `hybrid.studies.report`."""

import sys

from hybrid.studies.report import main

if __name__ == "__main__":
    sys.exit(main())
