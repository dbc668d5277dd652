"""scmamba2: a bidirectional Mamba2 foundation model for single-cell data.

``import scmamba2`` stays light: the public names below are imported on first use.
"""

from importlib import import_module
from typing import Any

from .errors import InputError

__version__ = "0.1.0"

_LAZY = {
    "read": "scmamba2.data.io",
    "validate": "scmamba2.data.validate",
    "ValidationReport": "scmamba2.data.validate",
    "GeneVocab": "scmamba2.data.vocab",
    "TokenizerConfig": "scmamba2.data.tokenize",
    "ModelConfig": "scmamba2.model",
    "ScMamba2": "scmamba2.model",
    "TrainConfig": "scmamba2.train.config",
    "pretrain": "scmamba2.train.pretrain",
    "embed": "scmamba2.tasks.embed",
    "annotate": "scmamba2.tasks.annotate",
    "integrate": "scmamba2.tasks.integrate",
    "integrate_harmony": "scmamba2.tasks.integrate_harmony",
    "multiomics": "scmamba2.tasks.multiomics",
    "predict_modality": "scmamba2.tasks.multiomics_predict",
    "transfer_modality": "scmamba2.tasks.transfer_modality",
    "train_perturbation": "scmamba2.tasks.perturb",
    "predict_perturbation": "scmamba2.tasks.perturb_predict",
    "reverse_perturbation": "scmamba2.tasks.perturb_predict",
}

__all__ = ["InputError", "__version__", *_LAZY]


def __dir__() -> list[str]:
    """The public names too (imported on first use), for tab completion."""
    return sorted(set(globals()) | set(__all__))


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'scmamba2' has no attribute {name!r}")
