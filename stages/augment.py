"""augment: decide which training set `train` reads, and how it is augmented.

With `augment.mode: off` the prepared training arrays are used as they are: the stage
records that in policy.json instead of copying them.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from stages.config import AugmentParams
from stages.io import atomic_dir, load_array, read_json, write_json

POLICY_FILE = "policy.json"


def augment(params: AugmentParams, seed: int, prepared_dir: str | Path, output_dir: str | Path) -> dict:
    """Run the stage; return the policy written to policy.json."""
    read_json(Path(prepared_dir) / "meta.json", "prepared metadata")  # fail early if prepare never ran
    policy = {"mode": params.mode, "seed": seed, "materialized": False}
    with atomic_dir(output_dir) as folder:
        write_json(folder / POLICY_FILE, policy)
    return policy


def load_training_set(prepared_dir: str | Path, augmented_dir: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """The training images and labels chosen by the augment stage (memory-mapped)."""
    policy = read_json(Path(augmented_dir) / POLICY_FILE, "augmentation policy")
    source = Path(augmented_dir) if policy.get("materialized") else Path(prepared_dir)
    return load_array(source / "train_x.npy"), load_array(source / "train_y.npy")
