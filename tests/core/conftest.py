"""The protocol engine's tests drive `Coordinator` directly (no store, no blobs): engine_kit.py holds the helpers."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # tests/core/, for engine_kit
