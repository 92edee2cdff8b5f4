# faiss-cpu ships stubs generated from its SWIG wrappers, which miss what SWIG adds at run time (IndexIDMap.id_map,
# IndexHNSW.hnsw, SearchParametersHNSW, ...); read faiss as Any instead (this folder is mypy_path in pyproject.toml).
from typing import Any

def __getattr__(name: str) -> Any: ...
