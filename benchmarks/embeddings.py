"""An in-run embedding cache shared by our engine and the embedding peers.

Within one benchmark run the model encodes every distinct text once: catalog phrases, tuning
queries and test queries are batch-encoded on first use and looked up afterwards, whichever
system asks (the CLINC catalogs K=5, K=10 and full share phrases, val and test). Batched and
one-by-one encodings differ by at most ~4e-7 in cosine and the engine rounds similarities to
6 decimals, so quality numbers are unaffected; latency is measured separately with the plain
model (`benchmarks.perf`), never through this cache.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import numpy.typing as npt

from matcher import Embedder

__all__ = ["CachingEmbedder"]

FloatMatrix = npt.NDArray[np.float32]


class CachingEmbedder:
    """An `Embedder` that remembers every vector it has produced, keyed by the exact text.

    It keeps the wrapped model's `model_id`, so the engine's on-disk task-embedding cache is
    shared with plain runs (the vectors are the same model's).
    """

    def __init__(self, inner: Embedder, *, batch_size: int = 256) -> None:
        self._inner = inner
        self._batch_size = batch_size
        self._vectors: dict[str, npt.NDArray[np.float32]] = {}
        self.encoded = 0

    @property
    def model_id(self) -> str:
        return self._inner.model_id

    def __len__(self) -> int:
        return len(self._vectors)

    def prime(self, texts: Sequence[str], *, progress: bool = False, desc: str = "encode") -> None:
        """Batch-encode the texts not seen yet (optionally with a tqdm bar on stderr)."""
        missing = list(dict.fromkeys(t for t in texts if t not in self._vectors))
        if not missing:
            return
        starts = range(0, len(missing), self._batch_size)
        if progress:
            from tqdm.auto import tqdm

            starts = tqdm(starts, desc=desc, unit="batch", leave=False)
        for start in starts:
            chunk = missing[start:start + self._batch_size]
            vectors = self._inner.encode(chunk)
            self.encoded += len(chunk)
            for text, vector in zip(chunk, vectors, strict=True):
                self._vectors[text] = np.asarray(vector, dtype=np.float32)

    def encode(self, texts: Sequence[str]) -> FloatMatrix:
        """Unit-norm rows for `texts`, encoding only the ones never seen before."""
        self.prime(texts)
        if not texts:
            return np.zeros((0, 0), dtype=np.float32)
        return np.stack([self._vectors[t] for t in texts]).astype(np.float32, copy=False)
