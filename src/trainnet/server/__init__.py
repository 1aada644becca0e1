"""The coordinator's service layer and HTTP shell (see docs/ARCHITECTURE.md)."""
