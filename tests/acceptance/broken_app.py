"""An app module that fails while being imported (for the worker's error path)."""

raise RuntimeError("broken on purpose")
