"""pmm_gpu: Parametric Matrix Models (Cook et al., Nat. Commun. 16, 5929 (2025)) on NVIDIA GPUs,
with a NumPy backend that runs the same API on the CPU and serves as the reference oracle."""
from .backend import cuda_status, get_backend
from .io import load
from .model import AffineEigenvaluePMM

__version__ = "0.1.0"
__all__ = ["AffineEigenvaluePMM", "load", "get_backend", "cuda_status", "__version__"]
