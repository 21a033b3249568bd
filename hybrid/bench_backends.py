"""`python -m hybrid.bench_backends` keeps working: the tool lives in `hybrid.studies.bench_backends`."""

import sys

from hybrid.studies.bench_backends import main

if __name__ == "__main__":
    sys.exit(main())
