"""Pruning methods, one class each, found by name in a registry.

``create_method("l1", model, target=0.5)`` attaches a method to a gated supernet;
``list_methods()`` names every registered one; ``@register_method("mine")`` on a
``PruningMethod`` subclass adds one. Importing this package registers the built-in
methods: PaS and the baselines it is measured against.
"""

from repas.search.methods import (  # noqa: F401 (registers)
    adaptive_bn,
    casd,
    compensation,
    evolution,
    feature_flow,
    lasso,
    magnitude,
    pas,
    regularized,
    resrep,
    taylor,
    torch_pruning,
    unstructured,
)
from repas.search.methods.registry import (
    PruningMethod,
    create_method,
    list_methods,
    method_class,
    register_method,
)

__all__ = ["PruningMethod", "create_method", "list_methods", "method_class", "register_method"]
