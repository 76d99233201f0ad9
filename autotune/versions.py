"""Versions of the packages whose versions change results: recorded in MLflow runs, Optuna studies and presets."""

from __future__ import annotations

import platform
from importlib import metadata

# The packages whose versions change results.
REPORTED_PACKAGES = ("adatp-autotune", "torch", "transformers", "optuna", "mlflow")


def package_versions() -> dict[str, str]:
    """Installed versions of the packages that matter for reproducing a result (read from metadata, no imports)."""
    versions = {"python": platform.python_version()}
    for name in REPORTED_PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = "not installed"
    return versions
