"""Fine-tune the first-stage bi-encoder on sentence-transformers' SentenceTransformerTrainer.

Contrastive (MultipleNegativesRankingLoss: in-batch negatives plus one mined hard negative per query) or distillation
(MarginMSELoss on teacher score margins). The trainer plumbing (best checkpoint, resume, time budget) is shared
with the cross-encoder trainer in ``training.common``. A collection is re-encoded with the result by
``twostage index CORPUS --index NEW_DIR --model OUT_DIR``.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from twostage.training.common import RankingEvaluator, TrainOutcome, TrainSettings, fit

LOSSES = ("mnrl", "margin-mse")


def load_student(base: str, *, device: str = "cpu") -> Any:
    """The bi-encoder to fine-tune, resolved offline-first like the engine's (the packaged all-MiniLM-L6-v2 default)."""
    from sentence_transformers import SentenceTransformer

    from twostage.runtime.models import resolve_model

    resolved = resolve_model(base, kind="bi-encoder")
    return SentenceTransformer(resolved.source, device=device, local_files_only=resolved.origin != "hub")


def bi_encoder_scores(model: Any, query: str, texts: list[str]) -> np.ndarray:
    """Cosine similarity of the query's and each text's normalised embeddings: the first stage's score."""
    if not texts:
        return np.zeros(0, dtype=np.float32)
    q = model.encode_query([query], normalize_embeddings=True, convert_to_numpy=True, show_progress_bar=False)
    d = model.encode_document(
        texts, normalize_embeddings=True, convert_to_numpy=True, show_progress_bar=False, batch_size=32
    )
    return (np.asarray(d) @ np.asarray(q)[0]).astype(np.float32)


def make_loss(model: Any, name: str) -> Any:
    """MultipleNegativesRankingLoss ("mnrl") or MarginMSELoss ("margin-mse") for ``model``."""
    from sentence_transformers.sentence_transformer import losses

    if name == "mnrl":
        return losses.MultipleNegativesRankingLoss(model)
    if name == "margin-mse":
        return losses.MarginMSELoss(model)
    raise ValueError(f"unknown loss {name!r}; expected one of {', '.join(LOSSES)}")


def train_bi_encoder(
    model: Any,
    train_dataset: Any,
    loss_name: str,
    evaluator: RankingEvaluator,
    out_dir: Path,
    settings: TrainSettings,
    *,
    log: Callable[[str], None] | None = None,
) -> TrainOutcome:
    """Fine-tune ``model``, keep the best checkpoint by the evaluator's nDCG@10, save it to ``out_dir``
    (loadable by ``SentenceTransformer(out_dir)`` and ``twostage index --model out_dir``)."""
    from sentence_transformers import SentenceTransformerTrainer, SentenceTransformerTrainingArguments
    from sentence_transformers.base.sampler import BatchSamplers

    extra = {"batch_sampler": BatchSamplers.NO_DUPLICATES} if loss_name == "mnrl" else {}
    trainer, outcome = fit(
        SentenceTransformerTrainer,
        SentenceTransformerTrainingArguments,
        model,
        train_dataset,
        make_loss(model, loss_name),
        evaluator,
        out_dir,
        settings,
        extra=extra,
        log=log,
    )
    trainer.model.save(str(out_dir))
    return outcome
