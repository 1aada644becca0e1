"""The data plane's tests run the shipped pipeline in-process: plane_kit.py (Runtime over memory stores)."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # tests/aggregate/, for plane_kit
