"""A Python client for the Obliviate API."""
