"""Make helpers.py importable from the tests in this folder (pytest runs with importmode=importlib)."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
