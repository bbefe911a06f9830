"""Webhooks: service plumbing that tells users' endpoints when jobs and deletion
requests end. Registration checks (``urls``), signatures (``signing``, standard library
only, for receivers to copy) and the sender the workers run (``delivery``); the rows
live in ``core.db.webhooks``."""
