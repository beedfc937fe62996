"""Hand freed heap back to the OS (glibc `malloc_trim`); a no-op on C libraries without it (macOS, musl)."""

from __future__ import annotations

import ctypes
import gc


def glibc_trim():
    """glibc's `malloc_trim`, or None where the C library has none."""
    try:
        return ctypes.CDLL("libc.so.6").malloc_trim
    except (OSError, AttributeError):  # no libc.so.6 (macOS, Windows), or a libc without the symbol
        return None


def release_free_heap() -> bool:
    """Return memory that is already freed (e.g. load-time copies of weights) to the OS; whether it could.

    glibc keeps freed heap pages mapped, so without this they would stay in RSS; it changes nothing
    that is still in use.
    """
    gc.collect()
    trim = glibc_trim()
    if trim is None:
        return False
    trim(0)
    return True
