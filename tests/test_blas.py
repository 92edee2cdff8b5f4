"""runtime/blas.py: numpy's BLAS on one thread while any write runs, restored when the last one ends, other
libraries' pools untouched."""

from __future__ import annotations

import threading

import numpy as np
import pytest

threadpoolctl = pytest.importorskip("threadpoolctl")

from twostage.runtime.blas import numpy_blas_single_threaded  # noqa: E402


def numpy_blas_threads() -> list[int]:
    np.ones((4, 4)) @ np.ones((4, 4))  # numpy's BLAS loaded
    own = {lib["filepath"] for lib in threadpoolctl.threadpool_info() if "numpy" in lib["filepath"]}
    return [lib["num_threads"] for lib in threadpoolctl.threadpool_info() if lib["filepath"] in own]


def test_numpy_blas_is_held_to_one_thread_until_the_last_write_ends():
    before = numpy_blas_threads()
    if not before:
        pytest.skip("numpy's BLAS is not one threadpoolctl can tell apart here")
    with threadpoolctl.threadpool_limits(2, user_api="blas"):  # two threads to begin with, on any machine
        others = [lib for lib in threadpoolctl.threadpool_info() if "numpy" not in lib["filepath"]]
        first_in, second_out = threading.Event(), threading.Event()

        def second_write() -> None:
            with numpy_blas_single_threaded():
                first_in.wait(5)
            second_out.set()

        with numpy_blas_single_threaded():
            assert numpy_blas_threads() == [1] * len(before)
            writer = threading.Thread(target=second_write)
            writer.start()
            first_in.set()
            assert second_out.wait(5)
            assert numpy_blas_threads() == [1] * len(before)  # the other write ended: this one still holds it
        writer.join(5)
        assert numpy_blas_threads() == [2] * len(before)  # restored by the last to leave
        after = [lib for lib in threadpoolctl.threadpool_info() if "numpy" not in lib["filepath"]]
        assert [lib["num_threads"] for lib in after] == [lib["num_threads"] for lib in others]
