"""`python -m hybrid.subgroups` keeps working: the tool lives in `hybrid.studies.subgroups`."""

import sys

from hybrid.studies.subgroups import main

if __name__ == "__main__":
    sys.exit(main())
