"""The worker's Celery app: the shared configuration plus the task modules.

Run with ``celery -A worker.celery_app worker --pool solo -Q obliviate`` (one job per
process, so one process per GPU), or ``obliviate worker``.
"""

from core.queue import make_celery

celery_app = make_celery()
celery_app.conf.include = ["worker.tasks"]
app = celery_app
