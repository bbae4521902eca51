"""The man page and the shell completions, generated from the command's own parser.

Owns turning ``cli.build_parser()`` (handed in: this module imports nothing of cscd) into a
troff man page (argparse-manpage) and bash, zsh or tcsh completion scripts (shtab), so they
never drift from the options the command takes. ``bash .ci/setup`` writes them into the
virtual environment's ``share/`` at install; ``cscd manpage`` and ``cscd completion SHELL``
print them for a package or an admin to install system-wide.
"""

from __future__ import annotations

import argparse

import shtab
from argparse_manpage.manpage import Manpage

SHELLS = ("bash", "zsh", "tcsh")


def manpage(parser: argparse.ArgumentParser, version: str) -> str:
    """``cscd(1)``: every command and option, with the parser's own help texts."""
    data = {"project_name": "cscd", "version": version, "url": "", "authors": [],
            "description": "Offline Files for Linux: redirected folders over SMB",
            "manual_section": "1", "manual_title": "cscd manual"}
    return str(Manpage(parser, _data=data))


def completion(parser: argparse.ArgumentParser, shell: str) -> str:
    """The completion script of ``shell`` (paths complete as files where a PATH is asked)."""
    if shell not in SHELLS:
        raise ValueError(f"shell must be one of {', '.join(SHELLS)}, not {shell!r}")
    return shtab.complete(parser, shell=shell)
