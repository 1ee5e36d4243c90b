"""Corral's own functions, laid out like a Convex `convex/` folder: schema.py plus one module per domain."""
