"""A bi-encoder's export built in a child process, so the process that indexes never imports torch.

Exporting needs torch and transformers (``runtime.export`` traces the model), about 0.5-1 GB and seconds of imports;
the encoding after it needs neither (``runtime.light``). :func:`export_in_child` runs ``python -m
twostage.runtime.export_process MODEL_DIR BACKEND FINGERPRINT MAX_LENGTH`` and waits: the child loads the transformer
with ``transformers.AutoModel`` (the module sentence-transformers wraps), writes the export to the cache as
``runtime.export.cached_export`` always does, and exits, handing its memory back before indexing starts. The export
is the same one a sentence-transformers load would make (same tokenizer, sample and calibration batches).
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

from twostage.runtime.models import ModelLoadError

#: the child's last words on failure are cut to this many characters in the one-line error
_REASON = 300


def export_in_child(model_dir: str | Path, backend: str, fingerprint: str, max_length: int) -> float:
    """Build the ``feature-extraction`` export of the sentence-transformers model in ``model_dir`` for ``backend``
    in a child process (in this one where torch is imported already: nothing to save then); returns the seconds it
    took. ModelLoadError (one line) if it fails."""
    started = time.perf_counter()
    if "torch" in sys.modules:
        try:
            _export(str(model_dir), backend, fingerprint, max_length)
        except Exception as exc:  # noqa: BLE001 - export and runtime errors read the same to the user
            reason = (str(exc).strip().splitlines() or [""])[0][:_REASON]
            raise ModelLoadError(
                f"could not prepare the {backend} backend ({type(exc).__name__}: {reason}); use --backend torch"
            ) from exc
        return time.perf_counter() - started
    command = [sys.executable, "-m", __name__, str(model_dir), backend, fingerprint, str(int(max_length))]
    env = {**os.environ, "TOKENIZERS_PARALLELISM": "false"}
    done = subprocess.run(command, capture_output=True, text=True, env=env, check=False)
    if done.returncode != 0:
        lines = [line for line in done.stderr.strip().splitlines() if line.strip()]
        reason = (lines[-1] if lines else f"exit status {done.returncode}")[:_REASON]
        raise ModelLoadError(f"could not prepare the {backend} backend ({reason}); use --backend torch")
    return time.perf_counter() - started


def _export(model_dir: str, backend: str, fingerprint: str, max_length: int) -> None:
    """What the child does: load tokenizer and transformer (fp32, eval) and export them through the cache."""
    import torch
    from transformers import AutoModel, AutoTokenizer

    from twostage.runtime.backends import calibration_batches, configure_threads, sample_inputs
    from twostage.runtime.calibration import calibration_texts
    from twostage.runtime.export import cached_export

    configure_threads()
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModel.from_pretrained(model_dir, dtype=torch.float32).eval()
    cached_export(
        model,
        backend=backend,
        fingerprint=fingerprint,
        task="feature-extraction",
        sample=sample_inputs(tokenizer, ["a short query", "a somewhat longer passage of text to encode"], max_length),
        calibration=lambda: calibration_batches(tokenizer, calibration_texts(), max_length),
    )


if __name__ == "__main__":
    try:
        _export(sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]))
    except Exception as exc:  # noqa: BLE001 - the parent reports the last line
        print(f"{type(exc).__name__}: {(str(exc).strip().splitlines() or [''])[0]}", file=sys.stderr)
        sys.exit(1)
