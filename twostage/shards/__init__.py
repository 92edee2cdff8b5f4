"""Ray: a sharded collection served from actors (``collection``), indexing on an encoder actor pool (``indexing``)
and cross-encoder replicas (``replicas``), joined through one connection (``cluster``).

Imported only when ``--ray`` is given (importing ray takes seconds); the engine imports ``collection`` alone, lazily,
and nothing here is imported by anything below the engine.
"""
