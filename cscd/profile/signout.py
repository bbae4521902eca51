r"""FSLogix sign-in and sign-out for the local-only folders a ``redirections.xml`` names.

Owns what happens to an ``Exclude`` folder's local content around a session, as the seed
describes ``Copy``: at sign-out the local folder is dropped — after its content went back
into the profile for ``Copy`` 2 and 3, with its new data lost for 0 and 1 — and at sign-in
``Copy`` 0 and 2 start from an empty folder (1 and 3 are filled by the logon pull). An
``Include`` below an excluded folder roams like the rest of the profile and is never dropped.

Only explicit ``Exclude`` elements: the ``ExcludeCommonFolders`` bits name whole user folders
(Documents, Pictures …), which on a Linux workstation are the user's data, not a session's
scratch space; they are kept out of the profile and never deleted. Runs only for a real
sign-out (``cscd profile logoff``, the session script's step), never when the daemon merely
stops, and drops nothing of a ``Copy`` 2/3 folder whose push did not finish.

Paths are matched case-insensitively, as Windows does. Synchronous file-system work: callers
run it in a thread.
"""

from __future__ import annotations

import logging
import os
import shutil
from pathlib import Path

from cscd.policy.fslogix import Exclusion, Inclusion, ProfileExclusions
from cscd.profile.state import load_state, save_state

log = logging.getLogger(__name__)


def _find(home: Path, parts: tuple[str, ...]) -> Path | None:
    """The existing local path for ``parts`` under ``home``, each name matched ignoring case."""
    here = home
    for part in parts:
        exact = here / part
        if exact.is_dir() and not exact.is_symlink():
            here = exact
            continue
        try:
            match = next((e for e in os.scandir(here) if e.name.casefold() == part.casefold()
                          and e.is_dir(follow_symlinks=False)), None)
        except OSError:
            return None
        if match is None:
            return None
        here = Path(match.path)
    return here


def _drop(home: Path, folder: Path, exclusions: ProfileExclusions) -> int:
    """Delete what is under ``folder`` except the ``Include``d subtrees; returns entries removed."""
    removed = 0
    for entry in list(os.scandir(folder)):
        path = Path(entry.path)
        rel = path.relative_to(home).parts
        if isinstance(exclusions.rule_for(rel), Inclusion):
            continue
        if entry.is_dir(follow_symlinks=False):
            if any(isinstance(exclusions.rule_for((*rel, *p.relative_to(path).parts)), Inclusion)
                   for p in path.rglob("*") if p.is_dir()):
                removed += _drop(home, path, exclusions)
                continue
            shutil.rmtree(path)
        else:
            path.unlink()
        removed += 1
    return removed


def _explicit(exclusions: ProfileExclusions) -> list[Exclusion]:
    # Deepest first, so a nested Exclude is handled by its own Copy value before its parent's.
    return sorted((e for e in exclusions.exclusions if e.common is None), key=lambda e: -len(e.parts))


def sign_out(home: Path, exclusions: ProfileExclusions, *, pushed: bool, state_file: Path,
             target: str) -> list[str]:
    r"""Drop the local content of every excluded folder; ``pushed``: the logoff push finished
    with nothing pending, so ``Copy`` 2/3 content is in the profile. Returns the profile
    paths dropped (``\``-separated, as written in the file).

    The roaming state (``state_file``, for the server folder ``target``) forgets what it
    agreed under a dropped folder: the files went with the session, not by the user's
    deletion, so the next push must not delete them in the profile and the next logon brings
    the profile's copy back (``Copy`` 1 and 3).
    """
    dropped: list[str] = []
    prefixes: list[bytes] = []
    for rule in _explicit(exclusions):
        if rule.copy.copies_out and not pushed:
            log.info("profile sign-out: %s kept (Copy %d): the push did not finish", rule.path, int(rule.copy))
            continue
        folder = _find(home, rule.parts)
        if folder is None:
            continue
        try:
            n = _drop(home, folder, exclusions)
        except OSError as exc:
            # Part of it may be gone: forget its agreed state all the same, so the next push
            # never takes what went for a deletion by the user.
            log.warning("profile sign-out: %s only partly dropped: %s", rule.path, exc)
            n = 1
        if n:
            dropped.append(rule.path)
            prefixes.append(os.fsencode(folder.relative_to(home).as_posix()))
            log.info("profile sign-out: %s dropped (Copy %d%s)", rule.path, int(rule.copy),
                     ", copied into the profile first" if rule.copy.copies_out else ", not kept by the profile")
    if prefixes:
        entries = load_state(state_file, target)
        kept = {path: e for path, e in entries.items()
                if not any(path == p or path.startswith(p + b"/") for p in prefixes)
                or isinstance(exclusions.rule_for(os.fsdecode(path).split("/")), Inclusion)}
        if len(kept) != len(entries):
            save_state(state_file, target, kept)
    return dropped


def sign_in(home: Path, exclusions: ProfileExclusions) -> None:
    """``Copy`` 0 and 2 start a session from an empty local folder: create the missing ones."""
    for rule in _explicit(exclusions):
        if not rule.copy.copies_in and _find(home, rule.parts) is None:
            (home.joinpath(*rule.parts)).mkdir(parents=True, exist_ok=True, mode=0o700)
