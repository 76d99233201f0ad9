"""The `autotune` command's entry point: a clear one-line error when the service's extra is not installed.

`pip install adatp-autotune` gives the `adatp` library only; the service's dependencies (Optuna, MLflow, Typer,
...) come with `pip install 'adatp-autotune[tune]'`. This module imports nothing outside the standard library until
it knows they are there.
"""

from __future__ import annotations

import importlib.util
import os
import sys

# Import name -> distribution, for what the CLI imports at start-up (the rest of the extra loads on use).
SERVICE_MODULES = {"typer": "typer", "rich": "rich", "optuna": "optuna", "mlflow": "mlflow", "yaml": "pyyaml"}
EXTRA_HINT = "pip install 'adatp-autotune[tune]'"


def missing_service_modules() -> list[str]:
    return [dist for module, dist in SERVICE_MODULES.items() if importlib.util.find_spec(module) is None]


def main() -> None:
    from autotune.interrupt import STOP, ignore_signals_for_exit

    # Installed before the heavy imports (torch, transformers, MLflow take seconds): SIGTERM or Ctrl-C during
    # start-up ends the command with 130 and one line instead of dying by the signal.
    STOP.install(exit_at_once=True)
    try:
        _main()
    except KeyboardInterrupt:
        print("\ninterrupted during start-up; nothing was written", file=sys.stderr, flush=True)
        os._exit(130)  # not sys.exit: Python would report an interrupted C-level import as death by SIGINT
    finally:
        ignore_signals_for_exit()


def _main() -> None:
    missing = missing_service_modules()
    if missing:
        print(f"autotune: the tuning service needs the 'tune' extra ({', '.join(missing)} not installed): "
              f"{EXTRA_HINT}", file=sys.stderr)
        sys.exit(2)
    from autotune.cli import main as cli_main

    cli_main()


if __name__ == "__main__":
    main()
