"""Where the quantum layer's circuit runs: simulators and IBM Runtime QPUs.

`get_backend(name, **options)` returns a `Backend` holding the V2 estimator and the pass
manager that maps the layer's circuit to the device; the quantum layer takes them as
collaborators. Exact backends are simulated with the fast torch engine instead.
"""

from backends.registry import BACKENDS, Backend, get_backend, register_backend

__all__ = ["BACKENDS", "Backend", "get_backend", "register_backend"]
