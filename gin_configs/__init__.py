"""Shipped gin configuration files (see the *.gin files in this directory)."""
