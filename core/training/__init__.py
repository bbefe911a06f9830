"""Training: the shared loop (``loop.run_training``), plain fine-tuning, and the
``unlearn`` entry point that loads data and models and writes a checkpoint."""
