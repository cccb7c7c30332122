"""Helpers shared by the tests: tiny models and their ONNX exports, digits slices, fake clocks and runners.

Test files import them from here (``from helpers.models import make_tiny_onnx``), never from another test file or
from ``conftest.py``, which holds only fixtures; ``tests/test_test_layout.py`` enforces it. ``tests/`` is on
``sys.path`` because pytest inserts the directory of the root ``conftest.py`` (the default ``prepend`` import mode),
the same way ``trt_double`` is found.
"""
