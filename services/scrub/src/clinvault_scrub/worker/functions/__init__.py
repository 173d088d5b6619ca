"""One job per module."""
