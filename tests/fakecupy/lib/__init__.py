"""``cupy.lib`` of the stand-in."""

from fakecupy.lib import stride_tricks

__all__ = ["stride_tricks"]
