"""Data pipeline: read -> split -> format -> tokenize -> batch."""
