"""Model providers and the agent loop. Planned."""
