"""Celery worker: claims jobs, runs the engine's pipeline, records progress."""
