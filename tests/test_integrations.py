"""The LangChain and LlamaIndex adapters against the real packages (langchain-core, llama-index-core; in the test
extra), offline: a chain and a query engine each built with the framework's own fake LLM, the retrieved documents
asserted with their ids, metadata and scores."""

from __future__ import annotations

import pytest

from twostage import Engine, Ranker

DOCS = [
    {"id": "berlin", "title": "Population of Berlin", "text": "Berlin has 3.8 million inhabitants.", "year": 2023},
    {"id": "paris", "text": "The Louvre in Paris is the most visited museum.", "year": 2022},
    {"id": "tokyo", "text": "Greater Tokyo is the most populous metropolitan area.", "year": 2020},
]
QUERY = "How many people live in Berlin?"


@pytest.fixture(scope="module")
def engine(tiny_bi_encoder_dir, tiny_cross_encoder_dir):
    with Engine.in_memory(model=str(tiny_bi_encoder_dir), reranker=str(tiny_cross_encoder_dir)) as engine:
        engine.add(DOCS)
        yield engine


@pytest.fixture(scope="module")
def ranker(tiny_bi_encoder_dir, tiny_cross_encoder_dir):
    return Ranker(tiny_bi_encoder_dir, str(tiny_cross_encoder_dir))


def expected_hits(engine, top_k):
    return engine.search(QUERY, top_k=top_k).hits


# ----------------------------------------------------------------------------------------------------- LangChain
def test_langchain_retriever_in_a_chain_with_a_fake_llm(engine):
    pytest.importorskip("langchain_core")
    from langchain_core.language_models import FakeListLLM
    from langchain_core.output_parsers import StrOutputParser
    from langchain_core.prompts import PromptTemplate
    from langchain_core.runnables import RunnableParallel, RunnablePassthrough

    from twostage.integrations.langchain import TwostageRetriever

    retriever = TwostageRetriever(engine=engine, top_k=2)
    prompt = PromptTemplate.from_template("Context: {context}\nQuestion: {question}")
    llm = FakeListLLM(responses=["About 3.8 million."])
    chain = RunnableParallel(context=retriever, question=RunnablePassthrough()).assign(
        answer=prompt | llm | StrOutputParser()
    )
    out = chain.invoke(QUERY)
    hits = expected_hits(engine, 2)
    assert out["answer"] == "About 3.8 million." and out["question"] == QUERY
    assert [doc.id for doc in out["context"]] == [hit.doc_id for hit in hits]
    for doc, hit in zip(out["context"], hits):
        assert doc.page_content == hit.text and doc.metadata["year"] == hit.metadata["year"]
        assert doc.metadata["relevance_score"] == hit.score == hit.rerank_score
        assert doc.metadata["retrieval_score"] == hit.retrieval_score
        assert doc.metadata.get("title") == hit.title
    filtered = TwostageRetriever(engine=engine, search_kwargs={"filter": {"year": 2020}}).invoke(QUERY)
    assert [doc.id for doc in filtered] == ["tokyo"]


def test_langchain_compressor_reranks_another_retrievers_documents(ranker):
    pytest.importorskip("langchain_core")
    from langchain_core.documents import Document
    from langchain_core.runnables import RunnableLambda

    from twostage.integrations.langchain import TwostageCompressor

    documents = [Document(id=d["id"], page_content=d["text"], metadata={"year": d["year"]}) for d in DOCS]
    compressor = TwostageCompressor(ranker=ranker, top_k=2)
    chain = RunnableLambda(lambda query: documents) | RunnableLambda(
        lambda docs: compressor.compress_documents(docs, QUERY)
    )
    kept = chain.invoke(QUERY)
    expected = ranker.rerank(QUERY, [d["text"] for d in DOCS], top_k=2)
    assert [doc.id for doc in kept] == [DOCS[row["corpus_id"]]["id"] for row in expected]
    assert [doc.metadata["relevance_score"] for doc in kept] == [row["score"] for row in expected]
    assert [doc.metadata["year"] for doc in kept] == [DOCS[row["corpus_id"]]["year"] for row in expected]
    assert compressor.compress_documents([], QUERY) == []


# ----------------------------------------------------------------------------------------------------- LlamaIndex
def test_llamaindex_retriever_and_postprocessor_in_a_query_engine_with_a_mock_llm(engine, ranker):
    pytest.importorskip("llama_index.core")
    from llama_index.core import Settings
    from llama_index.core.llms import MockLLM
    from llama_index.core.query_engine import RetrieverQueryEngine

    from twostage.integrations.llamaindex import TwostagePostprocessor, TwostageRetriever

    Settings.tokenizer = str.split  # tiktoken would download its vocabulary
    retriever = TwostageRetriever(engine, top_k=3, search_kwargs={"rerank": False})
    postprocessor = TwostagePostprocessor(ranker=ranker, top_n=2)
    query_engine = RetrieverQueryEngine.from_args(retriever, llm=MockLLM(), node_postprocessors=[postprocessor])
    response = query_engine.query(QUERY)
    first_stage = engine.search(QUERY, top_k=3, rerank=False).hits
    reranked = ranker.rerank(QUERY, [hit.text for hit in first_stage], top_k=2)
    assert [n.node.node_id for n in response.source_nodes] == [first_stage[r["corpus_id"]].doc_id for r in reranked]
    assert [n.score for n in response.source_nodes] == [r["score"] for r in reranked]
    for node in response.source_nodes:
        hit = next(h for h in first_stage if h.doc_id == node.node.node_id)
        assert node.node.metadata["year"] == hit.metadata["year"]
        assert node.node.metadata["retrieval_score"] == hit.retrieval_score
    assert isinstance(response.response, str)


def test_llamaindex_retriever_round_trips_metadata_and_scores(engine):
    pytest.importorskip("llama_index.core")
    from twostage.integrations.llamaindex import TwostageRetriever

    nodes = TwostageRetriever(engine, top_k=3).retrieve(QUERY)
    hits = expected_hits(engine, 3)
    assert [n.node.node_id for n in nodes] == [hit.doc_id for hit in hits]
    assert [n.score for n in nodes] == [hit.score for hit in hits]
    berlin = next(n for n in nodes if n.node.node_id == "berlin")
    assert berlin.node.metadata["title"] == "Population of Berlin" and berlin.node.metadata["year"] == 2023
    assert berlin.node.get_content() == "Berlin has 3.8 million inhabitants."


# ----------------------------------------------------------------------------------------------------- passages
LONG = " ".join(
    [f"The museum in Paris opened in year {i} with paintings and books." for i in range(40)]
    + ["Berlin has a population of 3.8 million people."]
    + [f"The river in Rome flows past bridge {i} and the old tower." for i in range(40)]
)


@pytest.fixture(scope="module")
def long_engine(tiny_bi_encoder_dir):
    with Engine.in_memory(model=str(tiny_bi_encoder_dir), reranker=None) as engine:
        engine.add([{"id": "long", "text": LONG, "topic": "cities"}, *DOCS])
        yield engine


def test_both_retrievers_carry_the_passage_that_matched(long_engine):
    pytest.importorskip("langchain_core")
    pytest.importorskip("llama_index.core")
    from twostage.integrations.langchain import TwostageRetriever as LangChainRetriever
    from twostage.integrations.llamaindex import TwostageRetriever as LlamaIndexRetriever

    hit = next(h for h in long_engine.search(QUERY, top_k=4) if h.doc_id == "long")
    assert hit.passage is not None and hit.passage.count > 1  # the document was split
    document = next(d for d in LangChainRetriever(engine=long_engine).invoke(QUERY) if d.id == "long")
    node = next(n for n in LlamaIndexRetriever(long_engine).retrieve(QUERY) if n.node.node_id == "long")
    for text, metadata in ((document.page_content, document.metadata), (node.node.get_content(), node.node.metadata)):
        passage = metadata["passage"]
        assert text == hit.text and LONG[passage["start"] : passage["end"]] == text and len(text) < len(LONG)
        assert (passage["number"], passage["count"]) == (hit.passage.number, hit.passage.count)
        assert metadata["topic"] == "cities"
