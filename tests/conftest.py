"""Shared by every room (tests/adatp, tests/autotune, tests/service): the helpers beside this file are importable
as top-level modules (`from tiny import tiny_model`, `from specs import spec_file`), from any room."""

import sys
from pathlib import Path

HELPERS = Path(__file__).resolve().parent
if str(HELPERS) not in sys.path:
    sys.path.insert(0, str(HELPERS))
