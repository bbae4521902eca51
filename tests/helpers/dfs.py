r"""``DfsNamespace``: a standalone DFS namespace on loopback, three real smbd processes.

``\\127.0.0.1\dfs`` is the namespace root (``msdfs root = yes``); its links are symlinks
``msdfs:server\share[,server\share...]`` in the root share's directory, as Samba reads them.
Two file servers, on 127.0.0.2 and 127.0.0.3, serve one directory on disk (``data``) as
``share``: what DFS Replication gives two targets, for free. All three listen on one port,
since a referral names a server and never a port. Any of them can be killed, paused and
started again; ``data`` is the truth a test compares with.

``start_domain()`` adds what a domain-based namespace looks like from a client: a server on
127.0.0.4 (the domain's name, as DNS gives its controllers) that has no share ``corp`` but
answers the root referral for ``\\127.0.0.4\corp`` with the root ``\\127.0.0.1\dfs``
(Samba's ``msdfs proxy``: Samba's own AD DC hosts no domain-based roots besides SYSVOL and
NETLOGON).
"""

from __future__ import annotations

import os
from pathlib import Path

from cscd.samba import EmbeddedSamba, _free_port

TARGET_HOSTS = ("127.0.0.2", "127.0.0.3")
DOMAIN_HOST = "127.0.0.4"


class DfsNamespace:
    def __init__(self, workdir: Path) -> None:
        self.port = _free_port()
        self.data = workdir / "data"
        self.data.mkdir(parents=True)
        self.root = EmbeddedSamba(workdir / "namespace", share="dfs", port=self.port,
                                  extra_options={"msdfs root": "yes"})
        self.targets = [
            EmbeddedSamba(workdir / f"target-{host}", host=host, port=self.port,
                          password=self.root.password, extra_options={"path": str(self.data)})
            for host in TARGET_HOSTS
        ]
        self.username = self.root.username
        self.password = self.root.password

        self.domain: EmbeddedSamba | None = None
        self._workdir = workdir

    @property
    def servers(self) -> list[EmbeddedSamba]:
        return [self.root, *self.targets, *([self.domain] if self.domain else [])]

    def start_domain(self, name: str = "corp") -> str:
        r"""Start the domain's server (see the module's text); returns ``\\127.0.0.4\NAME``."""
        self.domain = EmbeddedSamba(self._workdir / "domain", host=DOMAIN_HOST, share=name, port=self.port,
                                    password=self.root.password,
                                    extra_options={"msdfs root": "yes", "msdfs proxy": "\\127.0.0.1\\dfs"})
        self.domain.start()
        return f"\\\\{DOMAIN_HOST}\\{name}"

    def add_link(self, name: str, *targets: str) -> str:
        r"""A link ``name`` in the root to ``targets`` (``host\share[\path]`` each); returns the
        link's namespace path ``\\127.0.0.1\dfs\name``."""
        self.root.share_dir.mkdir(parents=True, exist_ok=True)
        os.symlink("msdfs:" + ",".join(targets), self.root.share_dir / name)
        return self.unc(name)

    def add_home(self) -> str:
        r"""The usual link: ``home`` to both file servers' ``share``."""
        return self.add_link("home", *(f"{h}\\share" for h in TARGET_HOSTS))

    def unc(self, path: str = "") -> str:
        parts = [p for p in path.replace("/", "\\").split("\\") if p]
        return "\\".join(["\\\\127.0.0.1\\dfs", *parts])

    def start(self) -> None:
        for server in self.servers:
            server.start()

    def stop(self) -> None:
        for server in self.servers:
            server.stop()

    def panics(self) -> list[str]:
        return [str(s.conf_path) for s in self.servers if "PANIC" in s.log_text()]
