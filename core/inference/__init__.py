"""Text generation for registered models, behind an OpenAI-compatible HTTP API.

``protocol`` (request schemas and the error shape, no torch) is shared by the API
process, which validates and forwards, and the model-serving process
(``server``: ``obliviate inference``), which loads models (``models``) and decodes
(``generation``).
"""
