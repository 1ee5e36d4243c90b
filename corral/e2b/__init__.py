"""The E2B-compatible control API and envd data plane. Planned: the sandboxes issue."""
