"""Detect a repository's licence (SPDX id) from its LICENSE / LICENCE / COPYING files.

Matching is on characteristic phrases of each licence text (case and whitespace folded), so a
reformatted or re-wrapped file still matches. Covered: MIT, MIT-0, Apache-2.0, BSD-2-Clause,
BSD-3-Clause, ISC, 0BSD, GPL-2.0-only, GPL-3.0-only, LGPL-2.1-only, LGPL-3.0-only,
AGPL-3.0-only, MPL-2.0, Unlicense, CC0-1.0, Zlib, BSL-1.0. A licence *file* cannot say
"or later" (that is in source headers), so GNU licences map to the ``-only`` ids.

Several files with different licences (``LICENSE-MIT`` + ``LICENSE-APACHE``) give an SPDX
``OR`` expression (``Apache-2.0 OR MIT``); nothing recognised gives ``NOASSERTION``.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path

__all__ = ["NOASSERTION", "detect_license", "identify_license_text", "license_files"]

NOASSERTION = "NOASSERTION"
_MAX_BYTES = 256 * 1024
_HEADER_CHARS = 600
_NAME = re.compile(r"^(licen[cs]e|copying|unlicense)([-._].*)?$", re.IGNORECASE)


def _fold(text: str) -> str:
    text = text.lower().replace("\u2019", "'").replace("`", "'")
    text = re.sub(r"[\"“”]", "", text)
    return re.sub(r"\s+", " ", text).strip()


def _has(text: str, *phrases: str) -> bool:
    return all(phrase in text for phrase in phrases)


_GNU_TITLE = re.compile(r"gnu (affero |lesser |library )?general public license,? version (\d(?:\.\d)?)")
_GNU_IDS = {
    ("affero", "3"): "AGPL-3.0-only",
    ("lesser", "3"): "LGPL-3.0-only",
    ("lesser", "2.1"): "LGPL-2.1-only",
    ("library", "2"): "LGPL-2.0-only",
    ("", "3"): "GPL-3.0-only",
    ("", "2"): "GPL-2.0-only",
    ("", "1"): "GPL-1.0-only",
}


def _gnu(header: str) -> str | None:
    """GNU licences by their title, the first one in the text (each body mentions the others)."""
    match = _GNU_TITLE.search(header)
    if match is None:
        return None
    variant = (match.group(1) or "").strip()
    return _GNU_IDS.get((variant, match.group(2)))


def _mit(text: str) -> str | None:
    if not _has(text, "permission is hereby granted, free of charge, to any person obtaining a copy"):
        return None
    if "the above copyright notice and this permission notice shall be included" in text:
        return "MIT"
    return "MIT-0"


def _bsd(text: str) -> str | None:
    if "redistribution and use in source and binary forms" not in text:
        return None
    if "may be used to endorse or promote products derived from this software" in text:
        return "BSD-3-Clause"
    if "redistributions of source code must retain the above copyright notice" in text:
        return "BSD-2-Clause"
    return None


def _isc(text: str) -> str | None:
    if "permission to use, copy, modify, and/or distribute this software for any purpose" not in text and (
        "permission to use, copy, modify, and distribute this software for any purpose" not in text
    ):
        return None
    if "provided that the above copyright notice and this permission notice appear in all copies" in text:
        return "ISC"
    return "0BSD"


_BODY_RULES: list[Callable[[str], str | None]] = [
    lambda t: "Apache-2.0" if _has(t, "apache license", "version 2.0") else None,
    lambda t: (
        "MPL-2.0" if ("mozilla public license version 2.0" in t or "mozilla public license, v. 2.0" in t) else None
    ),
    lambda t: "BSL-1.0" if "boost software license - version 1.0" in t else None,
    lambda t: "Unlicense" if "this is free and unencumbered software released into the public domain" in t else None,
    lambda t: "CC0-1.0" if ("cc0 1.0 universal" in t or "creative commons legal code cc0 1.0" in t) else None,
    lambda t: (
        "Zlib"
        if _has(t, "this software is provided 'as-is'", "altered source versions must be plainly marked as such")
        else None
    ),
    _mit,
    _bsd,
    _isc,
]


def identify_license_text(text: str) -> str | None:
    """The SPDX id of one licence text, or None if it is not recognised."""
    folded = _fold(text)
    if not folded:
        return None
    gnu = _gnu(folded[:_HEADER_CHARS])
    if gnu is not None:
        return gnu
    for rule in _BODY_RULES:
        found = rule(folded)
        if found is not None:
            return found
    return None


def license_files(root: Path) -> list[Path]:
    """Licence files at the top of a checkout (LICENSE*, LICENCE*, COPYING*, UNLICENSE), sorted."""
    try:
        children = sorted(root.iterdir())
    except OSError:
        return []
    return [path for path in children if path.is_file() and not path.is_symlink() and _NAME.match(path.name)]


def detect_license(root: Path) -> str:
    """SPDX id (or ``A OR B`` for several licences) of the checkout at ``root``, else NOASSERTION."""
    found: set[str] = set()
    for path in license_files(root):
        try:
            with path.open("rb") as handle:
                data = handle.read(_MAX_BYTES)
        except OSError:
            continue
        spdx = identify_license_text(data.decode("utf-8", errors="replace"))
        if spdx is not None:
            found.add(spdx)
    if not found:
        return NOASSERTION
    # LGPL projects ship the GPL text too (the LGPL is a set of additional permissions on it).
    for lesser, full in (("LGPL-3.0-only", "GPL-3.0-only"), ("LGPL-2.1-only", "GPL-2.0-only")):
        if lesser in found:
            found.discard(full)
    return " OR ".join(sorted(found))
