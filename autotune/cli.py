"""The `autotune` command line. Exit codes: 0 ok, 2 bad input, 1 internal error."""

from __future__ import annotations

import platform
from importlib import metadata

import typer

app = typer.Typer(add_completion=False, no_args_is_help=True)

# Reported by `autotune version`: the packages whose versions change results.
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


@app.callback()
def _root() -> None:
    """Tune AdaTP thresholds per dataset and FLOPs budget (Optuna studies, tracked in MLflow)."""


@app.command()
def version() -> None:
    """Print the versions of adatp-autotune and the packages it runs on."""
    for name, value in package_versions().items():
        typer.echo(f"{name} {value}")


def main() -> None:
    app()


if __name__ == "__main__":
    main()
