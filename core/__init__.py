"""Obliviate's engine: unlearning methods, training, data, evaluation, storage, persistence.

Usable without any server. Modules that the API imports (settings, spec, methods'
schemas, data records, storage, db) import torch lazily, inside functions.
"""
