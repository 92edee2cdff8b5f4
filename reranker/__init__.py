"""Second stage of twostage: rerank first-stage candidates with a cross-encoder, or with MaxSim over the bi-encoder."""
from .base import Candidate, Reranked, Reranker, RerankerLoadError
from .cross_encoder import DEFAULT_RERANKER, CrossEncoderReranker
from .loading import load_reranker
from .maxsim import MaxSimReranker

__all__ = [
    "Candidate",
    "CrossEncoderReranker",
    "DEFAULT_RERANKER",
    "MaxSimReranker",
    "Reranked",
    "Reranker",
    "RerankerLoadError",
    "load_reranker",
]
