"""Model I/O: resolving references, loading, scoring sequences, saving checkpoints."""
