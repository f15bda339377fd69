"""Trustworthy results through the command line: bad input, nothing lost, the split, portable runs."""
