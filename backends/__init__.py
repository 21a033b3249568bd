"""Where the quantum layer's circuit runs: simulators and IBM Runtime QPUs.

`get_backend(name, **options)` returns a `Backend` holding the V2 estimator and the pass
manager that maps the layer's circuit to the device; the quantum layer takes them as
collaborators. Exact backends are simulated with the fast torch engine instead; the others
run forward-only through `EstimatorRunner`, one job per batch. Registered backends:
statevector, aer, aer_noisy (`backends/noisy.py`), torch_noisy (`backends/density.py`: aer_noisy's
noise simulated in torch), ibm_runtime (`backends/ibm.py`).
"""

from backends.registry import (BACKENDS, EXACT_BY_DEFAULT, Backend, BackendError, get_backend, parse_backend_spec,
                               register_backend)
from backends.runner import EstimatorRunner, ExecutionStats, JobError

from backends import density as _density, ibm as _ibm, noisy as _noisy  # noqa: E402,F401  (register their backends)

__all__ = ["BACKENDS", "EXACT_BY_DEFAULT", "Backend", "BackendError", "EstimatorRunner", "ExecutionStats", "JobError",
           "get_backend", "parse_backend_spec", "register_backend"]
