"""fusion: multi-modal outcome modelling for biomedicine.

Each modality (3D imaging, omics, clinical tables) gets its own encoder; a late-fusion
head tuned with Optuna combines them; Captum and exact Shapley values over modalities
measure how much each modality and each feature contributed.
"""

from ._errors import ConfigError, DataError, DataWarning, FusionError, FusionWarning, MetricWarning
from ._task import Task
from .config import FusionConfig, load_config

__version__ = "0.1.0"

__all__ = [
    "ConfigError",
    "DataError",
    "DataWarning",
    "FusionConfig",
    "FusionError",
    "FusionWarning",
    "MetricWarning",
    "Task",
    "__version__",
    "load_config",
    "run",
]


def run(config, run_dir, **options):
    """Run the main job; see :func:`fusion._pipeline.run` (imported lazily, it pulls in torch)."""
    from ._pipeline import run as _run

    return _run(config, run_dir, **options)
