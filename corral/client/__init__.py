"""The Python SDK. Planned; today use the official `convex` client."""
