"""pmm_gpu: Parametric Matrix Models (Cook et al., Nat. Commun. 16, 5929 (2025)) on NVIDIA GPUs,
with a NumPy backend that runs the same API on the CPU and serves as the reference oracle."""
from .backend import cuda_status, get_backend
from .io import load
from .model import AffineEigenvaluePMM
from .observable import AffineObservablePMM

__version__ = "0.1.0"
__all__ = ["AffineEigenvaluePMM", "AffineObservablePMM", "PMMRegressor", "PMMClassifier", "load",
           "get_backend", "cuda_status", "__version__"]


def __getattr__(name):
    # The estimators import scikit-learn's base classes when it is installed: load them on first use
    # so that `import pmm_gpu` never imports scikit-learn.
    if name in ("PMMRegressor", "PMMClassifier"):
        from . import estimators

        return getattr(estimators, name)
    raise AttributeError(f"module 'pmm_gpu' has no attribute {name!r}")
