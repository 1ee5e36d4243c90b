"""The execution-plane daemon. Planned: the sandboxes issue."""
