"""`pip install adatp-autotune` gives the library alone; the service comes with the `tune` extra.

`make test` runs this module twice: in .venv (with the extras) and in .venv-newest (no extras, newest transformers).
"""

import importlib.util
import subprocess
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SERVICE = ("optuna", "mlflow", "typer", "rich", "psycopg2", "psycopg", "decord", "av", "sqlalchemy", "datasets")


def test_core_dependencies_are_what_adatp_imports():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    names = {dep.split(">")[0].split("<")[0].split("=")[0].split("[")[0].strip() for dep in project["dependencies"]}
    assert names == {"torch", "transformers", "pyyaml", "numpy"}
    assert {"optuna", "mlflow", "datasets"} <= {dep.split(">")[0].split("=")[0].split("<")[0]
                                    for dep in project["optional-dependencies"]["tune"]}


def test_importing_adatp_loads_no_service_module():
    code = ("import sys, adatp; adatp.enable, adatp.load_preset; from adatp import video, presets, relevance; "
            f"print(','.join(sorted(m for m in {SERVICE!r} if m in sys.modules)))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT)
    assert out.stdout.strip() == ""


def test_autotune_command_without_the_extra_names_it():
    command = [str(Path(sys.executable).parent / "autotune"), "version"]
    out = subprocess.run(command, capture_output=True, text=True, timeout=120)
    if importlib.util.find_spec("optuna") is not None:  # .venv: the extra is installed
        assert out.returncode == 0, out.stderr
        assert "adatp" in out.stdout
    else:  # .venv-newest: `pip install .` without extras
        assert out.returncode == 2
        assert out.stderr.count("\n") == 1 and "Traceback" not in out.stderr
        assert "pip install 'adatp-autotune[tune]'" in out.stderr and "optuna" in out.stderr
        assert out.stdout == ""
