"""pmm_gpu: Parametric Matrix Models (Cook et al., Nat. Commun. 16, 5929 (2025)) on NVIDIA GPUs,
with a NumPy backend that runs the same API on the CPU and serves as the reference oracle.

Layers, bottom up: ``pmm_gpu.ops`` (one module per op: NumPy reference and CUDA launcher side by
side), ``pmm_gpu.backend`` (the NumPy/CuPy op table and eigensolvers), ``pmm_gpu.functional`` (both
PMM types as pure functions with their reverse mode), ``pmm_gpu.models`` (thin stateful wrappers),
``pmm_gpu.optim`` and ``pmm_gpu.train`` (Adam and the loop), then estimators and the CLI.
"""
from . import functional
from ._xp import array_module
from .backend import cuda_status, get_backend, set_num_threads
from .conformal import ConformalRegressor
from .models import AffineEigenvaluePMM, AffineObservablePMM, load
from .scaling import Scaler
from .train import StopTraining

__version__ = "0.1.0"
__all__ = ["AffineEigenvaluePMM", "AffineObservablePMM", "PMMRegressor", "PMMClassifier", "load", "functional",
           "array_module", "get_backend", "cuda_status", "set_num_threads", "ConformalRegressor", "Scaler", "StopTraining", "__version__"]


def __getattr__(name):
    # The estimators import scikit-learn's base classes when it is installed: load them on first use
    # so that `import pmm_gpu` never imports scikit-learn.
    if name in ("PMMRegressor", "PMMClassifier"):
        from . import estimators

        return getattr(estimators, name)
    raise AttributeError(f"module 'pmm_gpu' has no attribute {name!r}")


def __dir__():
    return sorted(__all__)
