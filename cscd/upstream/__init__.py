"""The server side: one small ``Upstream`` protocol and its implementations.

``base.py`` defines the protocol and ``RemoteEntry``; ``smb.py`` talks SMB2/3 through
smbprotocol; ``local.py`` serves a plain directory with the same semantics. Nothing here
touches LMDB or the cache; every blocking call runs in a worker thread with a deadline.
"""
