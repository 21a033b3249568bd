"""`python -m hybrid.experiment` keeps working: the tool lives in `hybrid.studies.experiment`."""

import sys

from hybrid.studies.experiment import main

if __name__ == "__main__":
    sys.exit(main())
