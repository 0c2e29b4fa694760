"""Helpers shared by test modules (not fixtures: those live next to the tests that use them)."""
