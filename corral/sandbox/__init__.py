"""Sandbox providers (local bubblewrap, host). Planned: the sandboxes issue."""
