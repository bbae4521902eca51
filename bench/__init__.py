"""``python -m bench``: cscd measured side by side with the local disk and with rclone.

Owns the benchmark harness only; it imports cscd (``cscd.samba``, ``cscd.upstream.smb``)
and the test proxy (``tests.helpers.proxy``) read-only and never changes them. See
``bench/README.md`` for what each case measures.
"""
