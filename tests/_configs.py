"""Small run configs shared by the test modules: a shrunken demo cohort and a TCGA-LGG subset."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd

# Minimal tuning and attribution budgets: enough to exercise every stage in seconds.
FAST_TUNING = {"n_trials": 3, "inner_folds": 2, "epochs": 30}
FAST_ATTRIBUTION = {"n_steps": 8}


def shrink_demo_config(config: dict[str, Any], *, outer_folds: int = 2) -> dict[str, Any]:
    """Shrink a demo cohort's config in place to a run of seconds to a minute; return it."""
    config["evaluation"] = {"outer_folds": outer_folds, "inner_folds": 2}
    config["tuning"] = dict(FAST_TUNING)
    config["attribution"] = dict(FAST_ATTRIBUTION)
    for modality in config["modalities"].values():
        modality["training"] = {"epochs": 5, "batch_size": 16, "learning_rate": 0.01, "weight_decay": 0.0001}
    mri = config["modalities"]["mri"]
    mri["spatial_size"] = [12, 12, 8]
    mri["encoder"] = {"widths": [4, 4, 8, 8], "embedding_dim": 4, "stem_stride": 1}
    mri["training"]["epochs"] = 2
    return config


def tcga_subset_config(root: Path, folder: Path, *, name: str, target: str, n_subjects: int,
                       modalities: tuple[str, ...] = ("mri", "cnv", "clinical")) -> dict[str, Any]:
    """Return a fast config on the first ``n_subjects`` TCGA-LGG patients with a target.

    ``root`` is the ``tcga_lgg`` data folder; the subset's clinical table is written to
    ``folder/clinical.csv``. ``target`` is ``"survival"`` (overall survival) or ``"idh"``
    (binary IDH mutation).
    """
    if target == "survival":
        target_config = {"kind": "survival", "time": "os_days", "event": "os_event"}
        labelled = "os_days"
    else:
        target_config = {"kind": "binary", "column": "idh_mutation",
                         "outcome_columns": ["death01", "os_days", "os_event"]}
        labelled = "idh_mutation"
    clinical = pd.read_csv(root / "clinical.csv")
    clinical[clinical[labelled].notna()].head(n_subjects).to_csv(folder / "clinical.csv", index=False)

    available = {
        "mri": {"kind": "imaging", "manifest": str(root / "imaging" / "manifest.csv"),
                "id_column": "patient_id", "paths_relative_to": str(root),
                "sequences": ["flair", "t1pre"], "mask": "mask", "crop_margin": 4,
                "spatial_size": [16, 16, 16], "resize_mode": "stretch",
                "encoder": {"widths": [4, 4, 8, 8], "embedding_dim": 4},
                "training": {"epochs": 2, "batch_size": 16}},
        "cnv": {"kind": "omics", "files": [str(root / "omics" / "cnv.h5ad")], "training": {"epochs": 10}},
        "clinical": {"kind": "clinical", "table": "clinical.csv", "id_column": "patient_id",
                     "categorical": ["gender", "histological_type"],
                     "continuous": ["age_at_initial_pathologic"], "training": {"epochs": 10}},
    }
    return {
        "name": name,
        "cache_dir": str(folder / "cache"),
        "target": {"table": "clinical.csv", "id_column": "patient_id", **target_config},
        "modalities": {m: available[m] for m in modalities},
        "evaluation": {"outer_folds": 2, "inner_folds": 2},
        "tuning": dict(FAST_TUNING),
        "attribution": dict(FAST_ATTRIBUTION),
    }
