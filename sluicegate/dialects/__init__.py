"""Client-facing wire formats: each parses requests into a `Call` and renders results and errors."""
