"""Configuration and policy: YAML and ``redirections.xml`` → frozen dataclasses, validated with
file, line and key.

Imports only leaves (and trio, for the one async function in ``central.py``); never
``upstream``: the central source is reached through a small ``Protocol``. No logging here —
callers decide what a failed reload means. Modules:

- ``config.py``: the daemon's own YAML file (mount, cache, folders; the minimal form).
- ``unc.py``: parsing and vetting ``\\\\server\\share\\path``; ``credentials.py``: 0600
  credentials files.
- ``located.py``: YAML nodes with file and line, and the ``FILE:LINE: KEY: message`` errors.
- ``model.py``: the effective policy (``Policy`` and its parts) and every default.
- ``schema.py``: which keys exist, their types and ranges; one file → validated blocks.
- ``machine.py``: ``/etc/cscd/policy.yaml`` + ``policy.d`` + the central copy, scope
  precedence, per-user expansion, ``cscd policy show`` rows, conversions for the daemon.
- ``central.py``: copying the central policy folder from the server when it changed.
- ``fslogix.py``: FSLogix ``redirections.xml`` → the roaming profile's exclusion model.

Start here: ``machine.load_policy(current_subject())``, then ``machine.daemon_config``.
"""
