"""The daemon's operations, split from ``daemon.py`` (which builds the services and mounts) so
each part has one owner. Like ``daemon``, they may import every layer; only ``daemon`` (and
``cli`` for nothing) imports them.

- ``handlers.py``: the control handlers and the wiring of control, events and metrics;
- ``policy_in_force.py``: ``PolicyKeeper`` (the policy read at start and replaced on reload)
  and the central policy's copy;
- ``systemd.py``: sd_notify, the watchdog, waiting for the mount to answer;
- ``garbage.py``: the garbage collector's settings and the full collections in pauses.
"""
