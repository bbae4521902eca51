"""cscd: Folder Redirection, Offline Files and Roaming Profiles for Linux workstations.

A per-user daemon mounts the redirected folders through FUSE (``fs.py``), serves every
file from a local cache indexed in LMDB (``cache/``), keeps the truth on an SMB server
(``upstream/``) and reconciles the two in the background (``sync/``). ``daemon.py`` wires
the pieces in one trio nursery; ``cli.py`` is the ``cscd`` command.
"""

__version__ = "0.1.0"
