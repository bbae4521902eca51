"""Configuration and policy: YAML files → frozen dataclasses, validated with file, line and key.

Leaf-like: imports only leaves. ``config.py`` reads the daemon's YAML file (the minimal form
documented in the README); ``unc.py`` parses and vets server paths; ``credentials.py`` reads
mount.cifs-style credentials files. Group-policy-style machine policy (issue 6) builds on it.
"""
