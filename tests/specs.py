"""Study specs on the synthetic set and the shipped demo model, written to a directory for the service tests."""

from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
MODEL = REPO / "assets" / "tiny-llava-ov-synthetic"


def spec_file(directory: Path, name: str, data_root: Path, **changes) -> Path:
    """directory/spec.yaml: 16 synthetic videos, AdaTP by token norm at layer 0, TPE; `changes` override fields."""
    spec = {
        "name": name,
        "model": {"path": str(MODEL)},
        "dataset": {"name": "synthetic", "root": str(data_root), "frames": 16,
                    "synthetic": {"n_videos": 16, "seed": 30000}},
        "budgets": [0.5],
        "base": {"method": "adatp", "score": "norm", "prune_layer": 0},
        "sampler": {"name": "tpe", "seed": 0, "n_startup_trials": 2},
        "pruner": {"name": "none"},
        "n_trials": 4,
        "workdir": str(directory / "work"),
        "presets_dir": str(directory / "presets"),
    }
    spec.update(changes)
    path = directory / "spec.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path
