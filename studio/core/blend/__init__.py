"""Blend recipes and the checks that run before a blend loads anything."""
