"""The simulator: N virtual workers driving the real coordinator core, and the sync baseline."""
