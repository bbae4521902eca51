"""``python -m cscd`` is the ``cscd`` command.

Guarded: worker processes (trio-parallel spawns them) import the main module again, and
must not start a second cscd.
"""

from cscd.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
