"""Adapters for the frameworks RAG applications are built with, each an extra that installs its framework:
``twostage.integrations.langchain`` (``pip install 'twostage[langchain]'``) and ``twostage.integrations.llamaindex``
(``pip install 'twostage[llamaindex]'``). They use twostage's public API only (``Engine``, ``Ranker``, ``Hit``)."""
