"""Test fixtures (filled in by the area owner)."""
