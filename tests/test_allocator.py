"""The CLI's allocator setting: freed large buffers go back to the system instead of fragmenting glibc's heaps."""

from __future__ import annotations

import subprocess
import sys

import pytest

from twostage.runtime.allocator import USER_SETTING, return_large_buffers

# After a 4 MiB block is freed, does a 1 MiB block still get a mapping of its own? (glibc's mallinfo2 counts them.)
PROBE = """
import ctypes, sys
class Info(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in
                ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks",
                 "keepcost")]
libc = ctypes.CDLL("libc.so.6")
libc.mallinfo2.restype = Info
libc.malloc.restype = ctypes.c_void_p
libc.free.argtypes = [ctypes.c_void_p]
if sys.argv[1] == "set":
    from twostage.runtime.allocator import return_large_buffers
    assert return_large_buffers()
libc.free(libc.malloc(4 << 20))  # glibc's adjustment raises the threshold past 4 MiB here
before = libc.mallinfo2().hblks
block = libc.malloc(1 << 20)
print(libc.mallinfo2().hblks - before)
"""


def _mapped_after_a_large_free(mode: str) -> int:
    done = subprocess.run([sys.executable, "-c", PROBE, mode], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    return int(done.stdout)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc only")
def test_a_freed_large_block_no_longer_moves_later_ones_into_the_heap() -> None:
    try:
        _mapped_after_a_large_free("plain")
    except AssertionError as err:
        if "mallinfo2" in str(err):
            pytest.skip("this C library has no mallinfo2")
        raise
    assert _mapped_after_a_large_free("plain") == 0  # glibc's default: the 1 MiB block came from the heap
    assert _mapped_after_a_large_free("set") == 1  # with the CLI's setting it has its own mapping


def test_a_users_own_setting_is_left_alone(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(USER_SETTING, "65536")
    assert return_large_buffers() is False


def test_the_cli_sets_it_before_running_a_command(monkeypatch: pytest.MonkeyPatch, tmp_path, capsys) -> None:
    from twostage import cli

    calls: list[bool] = []
    monkeypatch.setattr(cli, "return_large_buffers", lambda: calls.append(True) or True)
    assert cli.main(["check", str(tmp_path / "missing")]) == 2  # any command; this one fails at once
    assert calls == [True]
