"""Offline only (no model or dataset hub), and small model configs shared by the tests in this folder."""

import os
import sys
from pathlib import Path

for var in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_DATASETS_OFFLINE"):
    os.environ[var] = "1"
sys.path.insert(0, str(Path(__file__).parent))
