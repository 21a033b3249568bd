"""`python -m hybrid.readout_refit`: the tool lives in `hybrid.studies.readout_refit`."""

import sys

from hybrid.studies.readout_refit import main

if __name__ == "__main__":
    sys.exit(main())
