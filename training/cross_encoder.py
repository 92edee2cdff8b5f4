"""Fine-tune a cross-encoder on sentence-transformers' training stack (CrossEncoderTrainer, its losses); the trainer
plumbing it shares with the bi-encoder trainer is in ``training.common``."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from twostage.training.common import RankingEvaluator, TrainOutcome, TrainSettings, fit

LOSSES = ("margin-mse", "listwise-kl", "bce")


def cross_encoder_scores(model: Any, query: str, texts: list[str]) -> np.ndarray:
    """Raw logits of a ``CrossEncoder`` for (query, text) pairs: the scores ``CrossEncoderReranker`` sorts by."""
    import torch

    if not texts:
        return np.zeros(0, dtype=np.float32)
    scores = model.predict(
        [(query, t) for t in texts],
        activation_fn=torch.nn.Identity(),
        batch_size=32,
        show_progress_bar=False,
        convert_to_numpy=True,
    )
    return np.asarray(scores, dtype=np.float32).reshape(-1)


def load_student(base: str, *, max_length: int | None = 256, device: str = "cpu") -> Any:
    """A single-score ``CrossEncoder`` to train: a cross-encoder as it is, or a bi-encoder / plain transformer with a
    fresh one-logit head on its own weights (e.g. all-MiniLM-L6-v2, which already learned relevance from 1B pairs)."""
    from sentence_transformers import CrossEncoder

    from twostage.runtime.models import ModelLoadError, resolve_model

    try:
        resolved = resolve_model(base, kind="bi-encoder")
    except ModelLoadError:
        resolved = resolve_model(base, kind="cross-encoder")
    return CrossEncoder(
        resolved.source, num_labels=1, max_length=max_length, device=device, local_files_only=resolved.origin != "hub"
    )


def make_loss(model: Any, name: str) -> Any:
    """The sentence-transformers loss for ``name``: margin-MSE (Hofstätter et al.), listwise KL (ListNet over
    temperature-scaled teacher scores) or binary cross-entropy on 0/1 labels."""
    from sentence_transformers.cross_encoder import losses

    if name == "margin-mse":
        return losses.MarginMSELoss(model)
    if name == "listwise-kl":
        return losses.ListNetLoss(model, mini_batch_size=64)
    if name == "bce":
        return losses.BinaryCrossEntropyLoss(model)
    raise ValueError(f"unknown loss {name!r}; expected one of {', '.join(LOSSES)}")


def train_cross_encoder(
    model: Any,
    train_dataset: Any,
    loss_name: str,
    evaluator: RankingEvaluator,
    out_dir: Path,
    settings: TrainSettings,
    *,
    log: Callable[[str], None] | None = None,
) -> TrainOutcome:
    """Fine-tune ``model`` on ``train_dataset`` (columns matching ``loss_name``), keep the best checkpoint by the
    evaluator's nDCG@10, and save it to ``out_dir`` so ``CrossEncoder(out_dir)`` loads it."""
    from sentence_transformers.cross_encoder import CrossEncoderTrainer, CrossEncoderTrainingArguments

    extra: dict[str, Any] = {}
    if settings.head_learning_rate:
        # the pooler on [CLS] was never trained by a mean-pooling bi-encoder, and the classifier is new: both fast
        extra["learning_rate_mapping"] = {r"(classifier|pooler)\.": settings.head_learning_rate}
    trainer, outcome = fit(
        CrossEncoderTrainer,
        CrossEncoderTrainingArguments,
        model,
        train_dataset,
        make_loss(model, loss_name),
        evaluator,
        out_dir,
        settings,
        extra=extra,
        log=log,
    )
    trainer.model.save_pretrained(str(out_dir))
    return outcome
