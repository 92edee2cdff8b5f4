"""Load a BEIR-style dataset from the Hugging Face hub (e.g. `BeIR/scifact` + `BeIR/scifact-qrels`).

Offline it fails within seconds with a `DatasetError` instead of retrying for half a minute: unless offline mode is
set (HF_HUB_OFFLINE=1, then only the local cache is used), the runtime's hub probe (`runtime.hub`) is asked first.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any

from twostage.eval.errors import DatasetError
from twostage.eval.trec import Qrels, Queries
from twostage.runtime.hub import hub_offline, hub_reachable, hub_unavailable_reason
from twostage.runtime.optional import available, install_hint

_LOCAL = "pass a local dataset folder (uniform, BEIR or MS MARCO layout) or a name found on the data search path"
_ADVICE = _LOCAL + ", or set HF_HUB_OFFLINE=1 to use a copy already in the Hugging Face cache"


def _offline_mode() -> bool:
    """Offline as the user set it (read now) or as the ``datasets`` library read it at import."""
    import datasets

    return hub_offline() or bool(datasets.config.HF_HUB_OFFLINE)


def load_hub_beir(name: str, split: str = "test") -> tuple[Queries, Qrels, Any]:
    """Load queries, `split` qrels and the corpus (an HF `Dataset`) of a BEIR-style hub dataset.

    Corpus and queries come from the `corpus` and `queries` configs of `name`; qrels from `<name>-qrels`
    for `BeIR/...` names, else from the `default` config of `name` (the MTEB layout).
    """
    if not available("datasets"):
        raise DatasetError(
            f"could not load dataset {name!r}: loading from the Hugging Face hub needs datasets, which is not "
            f"installed ({install_hint('hf')}); " + _ADVICE
        )
    import datasets

    offline = _offline_mode()
    if not offline and not hub_reachable():
        raise DatasetError(
            f"could not load dataset {name!r} from the Hugging Face hub: offline / "
            f"{hub_unavailable_reason()}; " + _ADVICE
        )
    qrels_name, qrels_config = (f"{name}-qrels", None) if name.startswith("BeIR/") else (name, "default")
    try:
        corpus = datasets.load_dataset(name, "corpus", split="corpus")
        query_rows = datasets.load_dataset(name, "queries", split="queries")
        qrel_rows = datasets.load_dataset(qrels_name, qrels_config, split=split)
    except ConnectionError as exc:
        if offline:
            raise DatasetError(
                f"could not load dataset {name!r} from the Hugging Face hub: offline / unreachable "
                "(offline mode is on, HF_HUB_OFFLINE, and it is not in the local Hugging Face "
                "cache); " + _LOCAL
            ) from None
        raise DatasetError(
            f"could not load dataset {name!r} from the Hugging Face hub: offline / unreachable ({exc}); " + _ADVICE
        ) from None
    except Exception as exc:  # the hub client raises many types (not found, gated, bad config...)
        raise DatasetError(
            f"could not load dataset {name!r} from the Hugging Face hub: {type(exc).__name__}: {exc}; " + _ADVICE
        ) from None
    qrels: Qrels = {}
    for row in qrel_rows:
        qrels.setdefault(str(row["query-id"]), {})[str(row["corpus-id"])] = int(row["score"])
    queries = {str(row["_id"]): row["text"] for row in query_rows}
    return queries, qrels, corpus


def iter_hub_corpus(rows: Iterable[dict[str, Any]]) -> Iterator[dict[str, str]]:
    """Yield `{"id", "title", "text"}` documents from the rows of a BEIR corpus on the hub."""
    for row in rows:
        yield {"id": str(row["_id"]), "title": str(row.get("title") or ""), "text": row["text"]}
