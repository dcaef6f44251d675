"""The one registry of CLI verbs: every verb group, in the order `lora-studio --help` lists them.

Built once from an explicit tuple of verb modules, so a module that fails to import fails the CLI
loudly instead of dropping its verbs, and nothing is added to a global at import time.
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType

from studio.cli import blend, chat, library, models, train
from studio.cli.verb import Verb, VerbGroup

GROUPS: tuple[VerbGroup, ...] = (library.GROUP, models.GROUP, train.GROUP, blend.GROUP, chat.GROUP)


def index(groups: tuple[VerbGroup, ...]) -> Mapping[str, Verb]:
    """Verb name -> Verb over all groups; two verbs with one name are a programming error."""
    verbs: dict[str, Verb] = {}
    for group in groups:
        for v in group.verbs:
            if v.name in verbs:
                raise ValueError(f"two CLI verbs are named {v.name!r}")
            verbs[v.name] = v
    return MappingProxyType(verbs)


VERBS: Mapping[str, Verb] = index(GROUPS)
