"""``python -m cscd`` is the ``cscd`` command."""

from cscd.cli import main

raise SystemExit(main())
