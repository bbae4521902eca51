"""Test harness support code: plain modules, no fixtures and no tests.

Owns the pieces that fixtures in ``tests/conftest.py`` and the benchmarks in ``bench/`` are
built from: ``wait`` (polling with a deadline), ``proxy`` (a TCP proxy that can delay, hang
and reset a link), ``daemon`` (the cscd daemon as a subprocess), ``mount_env`` and
``policy_env`` (what the ``mount_env`` and ``penv`` fixtures hand a test). A test module imports
these, never another test module (STYLE.md §5; ``tests/test_layers.py`` checks it).
"""
