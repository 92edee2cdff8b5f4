"""The one search request: every option validated once, in twostage/search_request.py, under one name per option
(old names still taken, with a warning); the CLI, the server and eval build it and parse no option themselves."""

from __future__ import annotations

import argparse
import re
import warnings
from pathlib import Path

import pytest

from twostage.errors import UsageError
from twostage.search_request import SearchRequest, add_search_arguments

REPO = Path(__file__).resolve().parents[1]


def test_defaults_and_one_line_errors_naming_the_field():
    request = SearchRequest()
    assert (request.top_k, request.candidate_depth, request.rerank, request.rerank_depth) == (10, 100, True, None)
    assert request.first_stage == "dense" and request.stage.uses_dense
    for options, words in (
        ({"top_k": 0}, "top_k must be a positive integer"),
        ({"candidate_depth": True}, "candidate_depth must be a positive integer"),
        ({"rerank_depth": 101}, "rerank_depth 101 is more than the candidate_depth 100"),
        ({"nprobe": -1}, "nprobe must be a positive integer"),
        ({"first_stage": "sparse"}, "first_stage: "),
        ({"prf": "x:y"}, "prf 'x:y': expected K or K:BETA"),
        ({"fusion": "minmax:7"}, "fusion weight must be between 0 and 1"),
        ({"query_tokens": "loud"}, "query_tokens: query tokens 'loud'"),
        ({"first_stage": "bm25", "prf": "3"}, "prf: pseudo-relevance feedback"),
        ({"filter": ["a"]}, "filter must map"),
        ({"rerank": "yes"}, "rerank must be true or false"),
    ):
        with pytest.raises(UsageError) as caught:
            SearchRequest(**options)
        assert str(caught.value).startswith(words.split()[0]) and words in str(caught.value)
        assert "\n" not in str(caught.value)


def test_old_names_still_work_with_a_deprecation_warning():
    with pytest.warns(DeprecationWarning, match="k is deprecated; use candidate_depth"):
        request = SearchRequest.from_options(k=20, top_n=5)
    assert (request.candidate_depth, request.top_k) == (20, 5)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        with pytest.raises(UsageError, match="^k must be a positive integer"):  # named as the caller spelled it
            SearchRequest.from_options(k=0)
        with pytest.raises(UsageError, match="candidate_depth or k, not both"):
            SearchRequest.from_options(k=3, candidate_depth=4)
    with pytest.raises(UsageError, match="bogus: not a search option"):
        SearchRequest.from_options(bogus=1)


def test_http_body_takes_both_names_and_the_limits():
    defaults = SearchRequest(candidate_depth=30)
    assert SearchRequest.from_json({"k": 20, "top_n": 5}, defaults).candidate_depth == 20
    assert SearchRequest.from_json({"top_k": 3, "prf": None}, defaults) == SearchRequest(candidate_depth=30, top_k=3)
    limits = {"candidate_depth": (1000, "max_k")}
    with pytest.raises(UsageError, match=r"^k=1001 is over the limit of 1000 \(max_k\)"):
        SearchRequest.from_json({"k": 1001}, defaults, limits=limits)
    with pytest.raises(UsageError, match="reranker: not a search option"):
        SearchRequest.from_json({"reranker": "maxsim"}, defaults)
    echoed = SearchRequest.from_json({"prf": "3:0.5", "fusion": "rrf"}).to_dict()
    assert (echoed["prf"], echoed["fusion"], echoed["query_tokens"]) == ("3:0.5", "rrf", None)


def test_cli_flags_new_and_old(capsys):
    parser = argparse.ArgumentParser()
    add_search_arguments(parser)
    new = SearchRequest.from_args(parser.parse_args(["--candidate-depth", "20", "--top-k", "3", "--filter", "a=b"]))
    assert (new.candidate_depth, new.top_k, new.filter) == (20, 3, {"a": "b"}) and capsys.readouterr().err == ""
    old = SearchRequest.from_args(parser.parse_args(["--k", "20", "--top", "3", "--no-rerank"]))
    assert (old.candidate_depth, old.top_k, old.rerank, old.reranker) == (20, 3, False, None)
    assert "--k is deprecated; use --candidate-depth" in capsys.readouterr().err
    with pytest.raises(UsageError, match="^--rerank-depth 50 is more than the --k 10 candidates"):
        SearchRequest.from_args(parser.parse_args(["--k", "10", "--rerank-depth", "50"]))


def test_eval_system_names():
    request = SearchRequest.from_system("dense+rerank@3/fusion=rrf/prf=1:0.5", 1000)
    assert (request.rerank, request.rerank_depth, request.fusion, request.prf, request.query_tokens) == (
        True,
        3,
        "rrf",
        "1:0.5",
        "none",
    )
    assert (request.top_k, request.candidate_depth) == (1000, 1000)
    assert SearchRequest.from_system("hybrid", 100, rrf_k=10).first_stage == "hybrid:rrf:10"
    assert SearchRequest.from_system("bm25", 100).rerank is False
    for bad in ("dense/boost=2", "dense/prf", "bm25/prf=3", "dense+rerank@x", "sparse"):
        with pytest.raises(UsageError, match="^system "):
            SearchRequest.from_system(bad, 100)


#: files that take search options from users, and what would mean they parse an option themselves
FRONT_ENDS = [
    *sorted(str(p.relative_to(REPO)) for p in (REPO / "twostage").glob("cli*.py")),
    *sorted(str(p.relative_to(REPO)) for p in (REPO / "twostage").glob("server*.py")),
    "twostage/batcher.py",
    "twostage/engine.py",
    *sorted(str(p.relative_to(REPO)) for p in (REPO / "eval").glob("*.py")),
    *sorted(str(p.relative_to(REPO)) for p in (REPO / "training").glob("*.py")),
]
OWN_PARSING = [
    r"rerank_depth\s*[<>]",  # the depth checked against the candidates
    r"\b(FirstStage|PRF|Fusion|QueryTokens)\.parse\(",  # a first stage or a lever parsed
    r"add_argument\(\s*\"--(k|top|top-k|candidate-depth|rerank-depth|first-stage|prf|fusion|query-tokens|filter)\"",
    r"LEVER_OPTIONS|SYSTEM_LEVERS",
    r"partition\(\"=\"\).*filter|--filter .*expected KEY=VALUE",
    r"(top_k|top_n|candidate_depth)\b[^\n]*must be a positive integer",
]


@pytest.mark.parametrize("path", FRONT_ENDS)
def test_no_front_end_parses_a_search_option_itself(path):
    text = (REPO / path).read_text(encoding="utf-8")
    found = [pattern for pattern in OWN_PARSING if re.search(pattern, text)]
    assert found == [], f"{path} parses search options itself ({found}); build a SearchRequest instead"
