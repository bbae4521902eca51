"""The policy as ``gpresult`` would show it, computed from the files alone (no daemon).

Owns ``cscd policy check DIR`` (are the files valid: file, line and key of the first
mistake, as ``sssctl config-check`` does) and the offline form of ``cscd policy show``: the
effective policy of a user on a host, key by key with the file and line it came from, in the
same shape the daemon answers with, for an admin on any machine, before a rollout, or when
no daemon runs. Reads files only; the central policy is the local copy a daemon keeps (when
given), never the server.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

from cscd.errors import ConfigError
from cscd.policy.machine import current_subject, load_policy, load_policy_set, policy_rows
from cscd.policy.model import Subject


def check(root: Path, central_dir: Path | None = None) -> dict[str, Any]:
    """Read and validate every file under ``root``; ConfigError (file:line: key: …) if one is wrong."""
    policy_set = load_policy_set(root, central_dir=central_dir)
    return {"policy_dir": str(root), "files": [str(f) for f in policy_set.files], "blocks": len(policy_set.blocks)}


def subject_for(user: str | None, host: str | None, groups: tuple[str, ...] | None) -> Subject:
    """The subject to compute for: ``user`` (default: the caller) as this machine knows them,
    on ``host`` (default: this one), with ``groups`` instead of theirs when given."""
    try:
        subject = current_subject(user)
    except KeyError:
        raise ConfigError(f"{user}: no such user on this machine (is SSSD or winbind running?)") from None
    if host is not None:
        subject = replace(subject, host=host)
    if groups is not None:
        subject = replace(subject, groups=tuple(sorted(set(groups))))
    return subject


def show(subject: Subject, root: Path, central_dir: Path | None = None) -> dict[str, Any]:
    """``cscd policy show``'s answer for ``subject``, computed here. Raises ConfigError."""
    policy = load_policy(subject, root, central_dir=central_dir)
    return {
        "user": subject.user, "host": subject.host, "groups": list(subject.groups),
        "policy_dir": str(root), "files": [str(f) for f in policy.files],
        "is_primary_computer": policy.is_primary_computer(),
        "rows": [{"key": r.key, "value": r.value, "origin": r.origin} for r in policy_rows(policy)],
        "computed_from_files": True,
    }
