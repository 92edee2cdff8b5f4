"""``check``'s look inside ``documents.sqlite``: the rows and records every other command reads, read as they read them.

A collection that ``search``, ``info`` or a write would refuse must not pass ``check``: meta values that are not JSON,
a token encoding no version knows, a row whose metadata is not a JSON object, an embedding blob of the wrong size,
token rows whose codec table is gone, a lexical (BM25) index recorded but dropped, a model fingerprint the manifest
lost. Each finding says whether ``--repair`` can rebuild it from what SQLite still holds (:func:`repair_content`).
"""

from __future__ import annotations

import json
import sqlite3
from dataclasses import dataclass, field
from typing import Any

from .lexical import TABLE as LEXICAL_TABLE
from .token_store import ENCODINGS, RESIDUAL

#: rows named in one finding (the rest are counted)
SHOWN = 5


@dataclass
class ContentFindings:
    """Problems (each a line), what ``--repair`` cannot fix, and the repairs it can make (names for repair_content)."""

    problems: list[str] = field(default_factory=list)
    unrepairable: list[str] = field(default_factory=list)
    repairs: dict[str, Any] = field(default_factory=dict)


def inspect_content(con: sqlite3.Connection, tables: dict[str, str], manifest: Any, dimension: int) -> ContentFindings:
    """Read-only checks of the meta records, the documents' rows, the token tables and the lexical index."""
    found = ContentFindings()
    meta = _meta(con, tables, found)
    _documents(con, dimension, found)
    _fingerprint(meta, manifest, found)
    if "lexical" in meta and LEXICAL_TABLE not in tables:
        found.problems.append(f"the lexical (BM25) table {LEXICAL_TABLE!r} is gone though the collection records one")
        found.repairs["lexical"] = True
    if manifest.extra.get("token_store") or "tokens" in tables:
        _tokens(con, tables, meta, manifest, found)
    return found


def _meta(con: sqlite3.Connection, tables: dict[str, str], found: ContentFindings) -> dict[str, Any]:
    """The meta table, decoded; a value that is not JSON is a finding (and left out)."""
    meta: dict[str, Any] = {}
    rows = con.execute("SELECT key, value FROM meta").fetchall() if "meta" in tables else []
    for key, value in rows:
        try:
            meta[key] = json.loads(value)
        except (TypeError, ValueError):
            found.problems.append(f"the meta value {key!r} is not JSON ({str(value)[:40]!r})")
            if key not in ("token_encoding",):  # the token encoding can be read back from the rows themselves
                found.unrepairable.append(f"meta {key!r} cannot be rebuilt from anything: restore a backup")
    return meta


def _documents(con: sqlite3.Connection, dimension: int, found: ContentFindings) -> None:
    """Rows whose metadata is not a JSON object, and embeddings that are not ``dimension`` float32 values."""
    bad = [
        r[0]
        for r in con.execute(
            "SELECT doc_id FROM docs WHERE NOT json_valid(metadata) OR json_type(metadata) != 'object' ORDER BY doc_id"
        )
    ]
    if bad:
        found.problems.append(f"{len(bad)} document(s) have metadata that is not a JSON object: {_ids(bad)}")
        found.unrepairable.append(
            f"the metadata of {_ids(bad)} cannot be rebuilt: delete those documents and add them again"
        )
    wrong = [
        r[0]
        for r in con.execute(
            "SELECT doc_id FROM docs WHERE typeof(embedding) != 'blob' OR length(embedding) != ? ORDER BY doc_id",
            (4 * dimension,),
        )
    ]
    if wrong:
        found.problems.append(
            f"{len(wrong)} document(s) have an embedding that is not {dimension} float32 values: {_ids(wrong)}"
        )
        found.unrepairable.append(
            f"the embeddings of {_ids(wrong)} need the bi-encoder: delete those documents and add them again"
        )


def _fingerprint(meta: dict[str, Any], manifest: Any, found: ContentFindings) -> None:
    """The manifest's bi-encoder fingerprint against the one SQLite recorded at create (newer collections)."""
    recorded = meta.get("model_fingerprint")
    given = manifest.model_fingerprint
    if isinstance(recorded, str) and recorded and recorded != given:
        found.problems.append(
            f"manifest.json names bi-encoder fingerprint {given[:12]!r}, the collection was built with "
            f"{recorded[:12]!r}: every search would refuse its model"
        )
        found.repairs["model_fingerprint"] = recorded
    elif not isinstance(recorded, str) and not given.strip("0"):
        found.problems.append(
            f"manifest.json's bi-encoder fingerprint is {'empty' if not given else 'all zeros'}: every search "
            f"would refuse its model"
        )
        found.unrepairable.append(
            "the fingerprint of an older collection is recorded only in manifest.json: restore it from a backup"
        )


def _tokens(
    con: sqlite3.Connection, tables: dict[str, str], meta: dict[str, Any], manifest: Any, found: ContentFindings
) -> None:
    """The token store's tables, its recorded encoding, and the codec every stored row needs to be decoded."""
    missing = [t for t in ("tokens", "token_codec") if t not in tables]
    if "tokens" in missing:
        found.problems.append("the token table 'tokens' is gone though the manifest records stored tokens")
        found.unrepairable.append("the stored token vectors are lost: re-index the collection to store them again")
        return
    used = sorted({r[0] for r in con.execute("SELECT DISTINCT encoding FROM tokens")})
    unknown = [e for e in used if e not in ENCODINGS]
    if unknown:
        found.problems.append(f"token rows name encodings no version knows: {', '.join(map(repr, unknown))}")
        found.unrepairable.append("token rows in an unknown encoding cannot be decoded: re-index the collection")
    recorded = meta.get("token_encoding")
    if (recorded is not None and recorded not in ENCODINGS) or (
        "token_encoding" not in meta and (used or _manifest_encoding(manifest))
    ):
        found.problems.append(
            f"the token encoding recorded in the meta table is {recorded!r}, not one of {', '.join(ENCODINGS)}"
        )
        wanted = used[0] if len(used) == 1 and not unknown else _manifest_encoding(manifest) if not used else None
        if wanted is None:
            found.unrepairable.append("token rows in several encodings: convert them with 'twostage tokens --convert'")
        else:
            found.repairs["token_encoding"] = wanted
    codec_rows = con.execute("SELECT COUNT(*) FROM token_codec").fetchone()[0] if "token_codec" not in missing else 0
    pq_rows = con.execute("SELECT COUNT(*) FROM token_pq").fetchone()[0] if "token_pq" in tables else 0
    lacking = [e for e in used if (e in RESIDUAL and not codec_rows) or (e == "pq" and not pq_rows)]
    if lacking:
        found.problems.append(
            f"token rows in {', '.join(lacking)} have no codec to decode them "
            f"({'the token_codec table is gone' if missing else 'the codec table is empty'})"
        )
        found.unrepairable.append(
            "the codec was learned from tokens that are no longer stored: re-index the collection to store its "
            "token vectors again"
        )
    elif missing:
        found.problems.append("the token codec table 'token_codec' is gone")
        found.repairs["token_codec"] = True


def _manifest_encoding(manifest: Any) -> str | None:
    recorded = (manifest.extra.get("token_store") or {}).get("encoding")
    return recorded if recorded in ENCODINGS else None


def repair_content(con: sqlite3.Connection, repairs: dict[str, Any]) -> list[str]:
    """Make the repairs :func:`inspect_content` found possible, inside the caller's transaction; what was done."""
    done = []
    if "token_encoding" in repairs:
        con.execute(
            "INSERT INTO meta(key, value) VALUES ('token_encoding', ?) "
            "ON CONFLICT(key) DO UPDATE SET value = excluded.value",
            (json.dumps(repairs["token_encoding"]),),
        )
        done.append(f"meta 'token_encoding' set to {repairs['token_encoding']!r}, the encoding its rows are in")
    if "token_codec" in repairs:
        from .token_store import CODEC_SCHEMA

        con.execute(CODEC_SCHEMA)
        done.append("recreated the empty token codec table (no stored row needs a codec)")
    return done


def _ids(ids: list[str]) -> str:
    shown = ", ".join(map(repr, ids[:SHOWN]))
    return shown + (f" and {len(ids) - SHOWN} more" if len(ids) > SHOWN else "")
