"""Contrastive fine-tuning of the embedding model on a catalog's own texts (SetFit-style, on the CPU).

Every task text (title with description, each phrase: `matcher.semantic.profile_texts`) is an
anchor, and its positive is another text of the same task drawn by a seeded generator (the text
itself, under dropout, when the task has one). A batch holds each task at most once, so every
other row of a batch is a true negative, and the loss is the symmetric in-batch softmax over
scaled cosine similarities (multiple-negatives ranking). Seeded draws, torch's seeded dropout and
a fixed thread count make a run reproducible: the same catalog, base model, settings and thread
count give the same weights. Out-of-scope profiles are not trained on: the head and the gate
learn the no-match side from them.

The result is a sentence-transformers folder with a `finetune.json` record of how it was made;
load it with ``Matcher(catalog, semantic=DIR)`` or ``task-matcher serve --model DIR``.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import random
import shutil
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

from .catalog import Catalog
from .errors import FinetuneError, SemanticUnavailableError
from .semantic import base_model_id, model_folder, profile_texts, usable_cores

__all__ = ["RECORD_FILE", "FinetuneReport", "FinetuneSettings", "finetune"]

RECORD_FILE = "finetune.json"
_HINT = ("fine-tuning needs torch and sentence-transformers: pip install 'task-matcher[semantic]' "
         "-c constraints.txt (torch==2.13.0 takes the CPU build)")


@dataclass(frozen=True)
class FinetuneSettings:
    """How a run trains: passes over every task text, rows per batch, AdamW's peak learning rate
    (linear warm-up over `warmup_share` of the steps, then linear decay), the similarity scale of
    the softmax, the seed of every draw, and torch's intra-op threads (None: the usable cores)."""

    epochs: int = 4
    batch_size: int = 32
    learning_rate: float = 5e-5
    warmup_share: float = 0.1
    weight_decay: float = 0.01
    scale: float = 20.0
    seed: int = 0
    threads: int | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.epochs, int) or self.epochs < 1:
            raise FinetuneError(f"epochs must be a positive whole number, got {self.epochs!r}")
        if not isinstance(self.batch_size, int) or self.batch_size < 2:
            raise FinetuneError(f"batch_size must be at least 2 (in-batch negatives), got {self.batch_size!r}")
        if not (isinstance(self.learning_rate, float) and 0 < self.learning_rate < 1):
            raise FinetuneError(f"learning_rate must be in (0, 1), got {self.learning_rate!r}")
        if not 0 <= self.warmup_share < 1:
            raise FinetuneError(f"warmup_share must be in [0, 1), got {self.warmup_share!r}")
        if self.threads is not None and (not isinstance(self.threads, int) or self.threads < 1):
            raise FinetuneError(f"threads must be a positive whole number or None, got {self.threads!r}")


@dataclass(frozen=True)
class FinetuneReport:
    """What a run did: where the model went, what it trained on, how long it took and its loss
    (mean over the first and the last epoch's batches)."""

    out: Path
    base_model: str
    catalog_fingerprint: str
    tasks: int
    texts: int
    steps: int
    threads: int
    seconds: float
    first_epoch_loss: float
    last_epoch_loss: float
    weights_sha256: str
    settings: FinetuneSettings


def _task_texts(catalog: Catalog) -> list[tuple[str, list[str]]]:
    """Each task's distinct texts, in id order (catalog order does not matter)."""
    rows = []
    for task in sorted(catalog, key=lambda t: t.id):
        texts = list(dict.fromkeys(profile_texts(task)))
        if texts:
            rows.append((task.id, texts))
    return rows


def training_batches(task_texts: Sequence[tuple[str, Sequence[str]]], batch_size: int,
                     rng: random.Random) -> list[list[tuple[str, str]]]:
    """One epoch of (anchor, positive) batches: every text once as an anchor, no task twice in a batch.

    Each task's anchors are shuffled; then rounds take one anchor from every task with some left, in
    a shuffled task order, and each round is cut into batches (a batch never spans two rounds).
    Batches of one row (nothing to contrast) are dropped.
    """
    queues: list[list[tuple[str, str]]] = []
    for _, texts in task_texts:
        pairs = []
        for position, text in enumerate(texts):
            others = [t for i, t in enumerate(texts) if i != position]
            pairs.append((text, rng.choice(others) if others else text))
        rng.shuffle(pairs)
        queues.append(pairs)
    batches: list[list[tuple[str, str]]] = []
    while any(queues):
        live = [q for q in queues if q]
        rng.shuffle(live)
        round_pairs = [q.pop() for q in live]
        for start in range(0, len(round_pairs), batch_size):
            batch = round_pairs[start:start + batch_size]
            if len(batch) > 1:
                batches.append(batch)
    return batches


def finetune(catalog: Catalog, out: str | Path, *, model: str | Path | None = None,
             settings: FinetuneSettings | None = None, overwrite: bool = False,
             progress: Callable[[int, int, float], None] | None = None) -> FinetuneReport:
    """Fine-tune `model` (default: the shipped MiniLM) on `catalog`'s task texts and save it to `out`.

    `out` must not exist, or be an empty folder, unless `overwrite`; the model is written to a
    temporary folder beside it and moved in place when complete, so a failed run leaves nothing
    half-written. `progress(step, steps, loss)` is called after every optimiser step.
    """
    settings = settings or FinetuneSettings()
    target = Path(out)
    if target.exists() and (not target.is_dir() or any(target.iterdir())) and not overwrite:
        raise FinetuneError(f"{target} exists and is not an empty folder: choose another --out, or overwrite it "
                            "(overwrite=True, --overwrite)")
    task_texts = _task_texts(catalog)
    if len(task_texts) < 2:
        raise FinetuneError(f"fine-tuning contrasts tasks with each other, so the catalog needs at least 2 tasks "
                            f"with text; {catalog.source} has {len(task_texts)}")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    try:
        import torch
        from sentence_transformers import SentenceTransformer
    except ImportError as exc:
        raise SemanticUnavailableError(_HINT) from exc

    threads = settings.threads or usable_cores()
    previous_threads = torch.get_num_threads()
    started = time.perf_counter()
    rng = random.Random(settings.seed)
    epochs = [training_batches(task_texts, settings.batch_size, rng) for _ in range(settings.epochs)]
    steps = sum(len(batches) for batches in epochs)
    try:
        torch.set_num_threads(threads)
        torch.manual_seed(settings.seed)
        encoder = SentenceTransformer(str(model_folder(model)), device="cpu")
        encoder.train()
        optimiser = torch.optim.AdamW(encoder.parameters(), lr=settings.learning_rate,
                                      weight_decay=settings.weight_decay)
        warmup = max(1, math.ceil(settings.warmup_share * steps))
        schedule = torch.optim.lr_scheduler.LambdaLR(
            optimiser, lambda step: min((step + 1) / warmup, max(0.0, (steps - step) / max(1, steps - warmup))))
        losses: list[list[float]] = []
        step = 0
        for batches in epochs:
            losses.append([])
            for batch in batches:
                loss = _batch_loss(encoder, batch, settings.scale, torch)
                optimiser.zero_grad()
                loss.backward()
                optimiser.step()
                schedule.step()
                step += 1
                losses[-1].append(float(loss.detach()))
                if progress is not None:
                    progress(step, steps, losses[-1][-1])
        encoder.eval()
        report_out = _save(encoder, target, overwrite=overwrite)
    finally:
        torch.set_num_threads(previous_threads)
    weights = _weights_digest(report_out)
    report = FinetuneReport(
        out=report_out, base_model=base_model_id(model), catalog_fingerprint=catalog.fingerprint,
        tasks=len(task_texts), texts=sum(len(t) for _, t in task_texts), steps=steps, threads=threads,
        seconds=round(time.perf_counter() - started, 1),
        first_epoch_loss=round(sum(losses[0]) / max(1, len(losses[0])), 4),
        last_epoch_loss=round(sum(losses[-1]) / max(1, len(losses[-1])), 4),
        weights_sha256=weights, settings=settings)
    record = {**asdict(report), "out": None, "settings": asdict(settings),
              "versions": {name: _version(name) for name in ("torch", "sentence-transformers", "transformers")}}
    (report_out / RECORD_FILE).write_text(json.dumps(record, indent=1, sort_keys=True) + "\n", encoding="utf-8")
    return report


def _batch_loss(encoder: Any, batch: Sequence[tuple[str, str]], scale: float, torch: Any) -> Any:
    """Symmetric cross-entropy of each anchor against every positive of the batch (and the reverse)."""
    anchors = encoder(encoder.preprocess([a for a, _ in batch]))["sentence_embedding"]
    positives = encoder(encoder.preprocess([p for _, p in batch]))["sentence_embedding"]
    anchors = torch.nn.functional.normalize(anchors, p=2.0, dim=1)
    positives = torch.nn.functional.normalize(positives, p=2.0, dim=1)
    logits = scale * anchors @ positives.T
    labels = torch.arange(len(batch))
    return (torch.nn.functional.cross_entropy(logits, labels)
            + torch.nn.functional.cross_entropy(logits.T, labels)) / 2


def _save(encoder: Any, target: Path, *, overwrite: bool) -> Path:
    """Save to a temporary sibling of `target`, then move it in place (replacing an old one if allowed)."""
    target.parent.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=target.parent))
    try:
        encoder.save(str(scratch))
        _record_sentence_settings(scratch, encoder)
        if target.exists():
            if not overwrite and any(target.iterdir()):
                raise FinetuneError(f"{target} was filled while fine-tuning ran; the model is left in {scratch}")
            shutil.rmtree(target) if target.is_dir() else target.unlink()
        scratch.rename(target)
    except BaseException:
        if scratch.exists():
            shutil.rmtree(scratch, ignore_errors=True)
        raise
    return target


def _record_sentence_settings(folder: Path, encoder: Any) -> None:
    """Write the truncation limit into `sentence_bert_config.json`, where every reader looks for it."""
    path = folder / "sentence_bert_config.json"
    config = json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}
    config.setdefault("max_seq_length", int(encoder.max_seq_length))
    path.write_text(json.dumps(config, indent=4) + "\n", encoding="utf-8")


def _weights_digest(folder: Path) -> str:
    digest = hashlib.sha256()
    for file in sorted(folder.glob("*.safetensors")) + sorted(folder.glob("*.bin")):
        digest.update(file.read_bytes())
    return digest.hexdigest()


def _version(name: str) -> str:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return "not installed"
