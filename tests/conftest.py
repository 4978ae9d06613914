"""Shared pytest configuration."""

import importlib.util

# The fixture generator imports torch at module level; only collect it (for its
# doctests, of which it has none) when torch is there.
collect_ignore = []
if importlib.util.find_spec("torch") is None:
  collect_ignore.append("parity/make_fixture.py")
