"""The REST API (FastAPI). Never imports torch or transformers: it validates, records
and enqueues; workers do the training. Start it with
``uvicorn --factory api.main:create_app``."""
