"""The PMM model classes, thin stateful wrappers over pmm_gpu/functional.py, and ``load``."""
from __future__ import annotations

from .. import checks, io
from .base import MODELS, PMM
from .eigenvalue import AffineEigenvaluePMM
from .observable import AffineObservablePMM

__all__ = ["PMM", "AffineEigenvaluePMM", "AffineObservablePMM", "MODELS", "load"]


def load(path, device: str | None = None) -> PMM:
    """Rebuild a model saved with ``PMM.save``; ``device`` overrides the saved device ("auto" by default).

    Raises FileNotFoundError for a missing file and ValueError naming the file for anything that is
    not a complete pmm_gpu model file (io.read_model_file checks the file, checks.model_config its config
    and the parameter count it implies before the model is built).
    """
    cls_name, config, arrays = io.read_model_file(path, MODELS)
    where = f"model file {str(path)!r}"
    # config keys, sizes and the parameter count they imply, before the model allocates anything
    config = checks.model_config(where, MODELS[cls_name], config, arrays["params"].size)
    try:
        model = MODELS[cls_name](**{**config, "device": device or "auto"})
    except (TypeError, ValueError) as e:
        raise ValueError(f"{where}: its config does not build a {cls_name}: {e}") from None
    if arrays["params"].shape != model.theta.shape:
        raise ValueError(f"{str(path)!r}: parameter buffer has shape {arrays['params'].shape}, "
                         f"expected {model.theta.shape} for {cls_name} with this config")
    xp = model.backend.xp
    model.theta[...] = model.backend.asarray(arrays["params"], model.real_dtype)
    if "adam_m" in arrays:
        model.opt_state = {"m": xp.asarray(arrays["adam_m"]), "v": xp.asarray(arrays["adam_v"]),
                           "step": xp.asarray(arrays["adam_step"])}
    model.extra_state = {k[len("extra_"):]: v for k, v in arrays.items() if k.startswith("extra_")}
    return model
