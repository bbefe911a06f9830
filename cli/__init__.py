"""The ``obliviate`` command line: demo assets, local unlearning runs, the service."""
