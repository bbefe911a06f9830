"""Requests to one model decoded in batches: a thread per loaded model takes what is
waiting (up to ``OBLIVIATE_INFERENCE_MAX_BATCH`` requests, gathered for a few
milliseconds after the first) and decodes them together (``decode_batch``); each
request reads its own deltas as they come. Requests that arrive while a batch runs
form the next one."""

from __future__ import annotations

import queue
import threading
from collections.abc import Iterator
from dataclasses import dataclass

from core.inference.generation import Delta, Row, Sampling, decode_batch

#: how long the first request of a batch waits for company
GATHER_SECONDS = 0.005
_CLOSE = object()


@dataclass
class _Failure:
    error: BaseException


class Batcher:
    def __init__(self, model, tokenizer, lock: threading.Lock, max_batch: int):
        self.model, self.tokenizer, self.lock = model, tokenizer, lock
        self.max_batch = max_batch
        self.waiting: queue.Queue = queue.Queue()
        self.thread = threading.Thread(target=self._serve, name="inference-batcher", daemon=True)
        self.thread.start()

    def submit(self, prompt_ids: list[int], sampling: Sampling, processor=None) -> Iterator[Delta]:
        """The request's deltas, the last with its finish reason."""
        deltas: queue.Queue = queue.Queue()
        self.waiting.put(Row(prompt_ids, sampling, processor, deltas.put))
        return self._read(deltas)

    @staticmethod
    def _read(deltas: queue.Queue) -> Iterator[Delta]:
        while True:
            item = deltas.get()
            if isinstance(item, _Failure):
                raise item.error
            yield item
            if item.finish_reason:
                return

    def close(self) -> None:
        """Stop the thread (the model was unloaded); requests already waiting fail."""
        self.waiting.put(_CLOSE)

    def _serve(self) -> None:
        while True:
            first = self.waiting.get()
            if first is _CLOSE:
                break
            batch = [first]
            closing = False
            try:
                while len(batch) < self.max_batch:
                    row = self.waiting.get(timeout=GATHER_SECONDS)
                    if row is _CLOSE:
                        closing = True
                        break
                    batch.append(row)
            except queue.Empty:
                pass
            try:
                decode_batch(self.model, self.tokenizer, batch, self.lock)
            except BaseException as exc:  # noqa: BLE001 - every waiting reader must hear of it
                for row in batch:
                    row.emit(_Failure(exc))
            if closing:
                break
        self.model = self.tokenizer = None  # let an unloaded model's memory go
        while not self.waiting.empty():
            row = self.waiting.get()
            if row is not _CLOSE:
                row.emit(_Failure(RuntimeError("the model was unloaded")))
