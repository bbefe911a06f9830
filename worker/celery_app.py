"""The worker's Celery app: the shared configuration plus the task modules, and the
worker's process hooks (logging, GPU pinning).

Run with ``obliviate worker`` (it picks the queues, concurrency and device slots), or
``celery -A worker.celery_app worker -Q obliviate`` for one-GPU jobs without pinning.
"""

from celery import signals

from core.logs import configure_logging
from core.queue import make_celery
from core.settings import get_settings
from worker.devices import check_concurrency, pin_to_slot

# Now, not only at Celery's setup_logging signal: what the worker says before that (the
# warning for running as root) comes out in the same format.
configure_logging(get_settings().log_format, get_settings().log_level)

celery_app = make_celery()
celery_app.conf.include = ["worker.tasks"]
app = celery_app


@signals.setup_logging.connect
def _configure_logging(loglevel=None, **_) -> None:
    # Connected, so Celery leaves logging to us: its own records (task received,
    # worker ready) come out in the same format as ours.
    settings = get_settings()
    configure_logging(settings.log_format, loglevel or settings.log_level)


@signals.worker_init.connect
def _check_slots(sender=None, **_) -> None:
    check_concurrency(get_settings(), sender.concurrency)


@signals.worker_process_init.connect
def _pin_child(**_) -> None:
    pin_to_slot()


_webhook_sender = None


@signals.worker_ready.connect
def _start_webhook_sender(**_) -> None:
    """The parent process sends webhook deliveries (core.webhooks.delivery) on a
    connection per pass (NullPool: nothing open for a forked child to inherit)."""
    global _webhook_sender
    from core.db.engine import make_engine, make_session_factory
    from core.webhooks.delivery import WebhookSender

    settings = get_settings()
    sessions = make_session_factory(make_engine(settings.database_url, pooled=False))
    _webhook_sender = WebhookSender(sessions, settings)
    _webhook_sender.start()


@signals.worker_shutdown.connect
def _stop_webhook_sender(**_) -> None:
    if _webhook_sender is not None:
        _webhook_sender.stop()
