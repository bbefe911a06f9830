"""Forget/retain/evaluation data: reading files into records (no torch), rendering
prompts, and encoding records into masked token sequences."""
