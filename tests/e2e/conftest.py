"""Offline only: no model, tokenizer or dataset hub is ever contacted by these tests (children inherit it)."""

import os

for var in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_DATASETS_OFFLINE"):
    os.environ[var] = "1"
