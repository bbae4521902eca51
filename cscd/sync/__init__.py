"""Sync: the only place where local and remote meet.

``source.py`` fills what the cache lacks (on-demand listing and range reads, obeying the
folder's mode); ``push.py`` applies dirty nodes to the server (creates, renames, uploads,
deletes, in a safe order, idempotent after a crash); ``scan.py`` brings server changes into
the index by re-listing directories, ``notify.py`` tells it which ones from the server's
change notifications; ``chunker.py`` (pure) cuts content into chunks and hashes them,
``hashing.py`` runs it in worker processes, ``delta.py`` (pure) plans an upload from base and
new chunks; ``conflicts.py`` names conflict copies; ``engine.py`` runs them as tasks. Sync
never imports the cache: it talks to it through the ``LocalSide`` protocol in ``local.py``,
which ``daemon.py`` satisfies with the real ``Cache``.

State, not a byte log: what to do is derived from each dirty node's local state and its
*base* (the version both sides last agreed on), so repeating a step after a crash is safe.
"""
