"""Is an answer grounded in its chunk? Compare the code identifiers it uses with the chunk's.

The identifiers an answer *claims about the code* are those inside its fenced code
blocks and inline backticks. From them we drop language keywords and builtins, very
common library/method names, names shorter than 3 characters, and names the answer's
own code defines (assignments, ``def``/``class``/``function``, loop variables, imports,
parameters): an example may invent ``result`` or ``client`` freely. What remains must
mostly occur in the chunk text, its imports, its path, the question, or the repository's
symbol index (every name any chunk of the repository defines, :func:`repo_symbol_index`):
a function defined in another file of the repository is grounded, an invented one is not.

Names Python itself defines (builtins, dunder names such as ``__name__``, standard-library
modules) are real, so they are grounded too; the attributes of a module the chunk imports
(``np.array`` after ``import numpy as np``) or of a standard-library module cannot be checked
against the repository and are not counted.

Threshold: an answer is grounded when at least ``DEFAULT_MIN_GROUNDED_RATIO`` (80 %,
``export.min_grounded_ratio``) of its checked identifiers occur in that ground set. One checked
identifier is enough to judge: with up to four checked names, one invented name rejects the
answer; from five on, one name the index cannot know (a third-party API, say) is tolerated.
"""

from __future__ import annotations

import builtins
import re
import sys
from collections.abc import Iterable
from dataclasses import dataclass, field

DEFAULT_MIN_GROUNDED_RATIO = 0.8
MIN_CHECKED_IDENTIFIERS = 1

_IDENT = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
FENCE = re.compile(r"```([^\n`]*)\n(.*?)(?:```|\Z)", re.DOTALL)
_INLINE = re.compile(r"(?<!`)`([^`\n]{1,200})`(?!`)")
_DEFINED = re.compile(
    r"(?:\b(?:def|class|function|func|fn|let|const|var|val|struct|enum|interface|type|module|macro)\s+"
    r"(?P<a>[A-Za-z_]\w*))"
    r"|(?:\bfor\s+\(?\s*(?:(?:let|const|var)\s+)?(?P<b>[A-Za-z_]\w*)(?:\s*,\s*(?P<b2>[A-Za-z_]\w*))?\s+(?:in|of)\b)"
    r"|(?:\bas\s+(?P<c>[A-Za-z_]\w*))"
    r"|(?:\bimport\s+(?P<d>[A-Za-z_][\w.]*))"
    r"|(?:^\s*(?P<e>[A-Za-z_]\w*)(?:\s*,\s*(?P<e2>[A-Za-z_]\w*))*\s*(?::\s*[\w\[\], .|]+)?\s*:?=(?!=))"
    r"|(?:\b(?P<f>[A-Za-z_]\w*)\s*:=)",
    re.MULTILINE,
)
_PARAMS = re.compile(r"\b(?:def|function|func|fn)\s+\w+\s*\(([^)]*)\)")

_COMMON_WORDS = """
    and as assert async await break class continue def del elif else except finally for from global if import in
    is lambda nonlocal not or pass raise return try while with yield none true false self cls print len str int
    float bool list dict set tuple bytes object type range enumerate zip map filter sorted reversed min max sum
    abs any all open isinstance issubclass getattr setattr hasattr super property staticmethod classmethod
    iter next repr hash format input exit exception valueerror typeerror keyerror indexerror runtimeerror
    oserror ioerror attributeerror notimplementederror stopiteration args kwargs main name file doc init
    const let var function return new this null undefined void typeof instanceof export default require
    module exports console log async await promise then catch throw public private protected static final
    extends implements interface package string integer boolean char byte short long double println system out
    err func fmt err nil make struct go defer chan select case switch fn mut impl pub use crate trait enum
    match some ok unwrap expect vec box println echo done fi esac then elif local readonly
    append extend insert remove pop clear copy count index keys values items get update join split strip
    lower upper replace startswith endswith encode decode read write close seek readline readlines
    path paths exists mkdir os sys json re math time datetime logging typing collections functools itertools
    pathlib subprocess argparse unittest pytest mock patch fixture np numpy pd pandas requests http url
    example foo bar baz qux test tests result results value values data item items key obj x y z i j k n
    usage code line lines text the you your our call calls function functions method methods
"""
_COMMON = frozenset(_COMMON_WORDS.split())
_DUNDERS = """
    __name__ __main__ __file__ __doc__ __all__ __init__ __new__ __del__ __call__ __repr__ __str__ __eq__
    __hash__ __len__ __iter__ __next__ __getitem__ __setitem__ __delitem__ __contains__ __enter__ __exit__
    __aenter__ __aexit__ __getattr__ __getattribute__ __setattr__ __delattr__ __dict__ __slots__ __class__
    __module__ __qualname__ __annotations__ __debug__ __version__ __path__ __package__ __spec__ __loader__
    __post_init__ __init_subclass__ __class_getitem__ __bool__ __lt__ __le__ __gt__ __ge__ __ne__ __add__
    __format__ __bytes__ __reduce__ __copy__ __deepcopy__ __await__ __aiter__ __anext__ __set_name__ __get__
    __set__ __delete__ __missing__ __reversed__ __index__ __int__ __float__ __fspath__ __sizeof__ __builtins__
"""
PYTHON_NAMES = frozenset(dir(builtins)) | frozenset(_DUNDERS.split()) | frozenset(sys.stdlib_module_names)
"""Names Python itself defines (builtins, dunder names, standard-library modules): real, so grounded."""
_ATTRIBUTE = re.compile(r"\b([A-Za-z_][A-Za-z0-9_]*)((?:\.[A-Za-z_][A-Za-z0-9_]*)+)")


@dataclass(frozen=True)
class GroundingScore:
    """How many checked answer identifiers occur in the chunk (``ratio`` = found / checked)."""

    checked: int
    found: int
    missing: list[str] = field(default_factory=list)

    @property
    def ratio(self) -> float:
        """Fraction grounded (1.0 when nothing could be checked)."""
        return self.found / self.checked if self.checked else 1.0

    @property
    def judged(self) -> bool:
        """Whether enough identifiers were checked to judge."""
        return self.checked >= MIN_CHECKED_IDENTIFIERS


def claimed_identifiers(answer: str) -> set[str]:
    """Identifiers the answer uses in code blocks and inline code, minus those it defines itself."""
    blocks = [match.group(2) for match in FENCE.finditer(answer)]
    without_blocks = FENCE.sub(" ", answer)
    inline = _INLINE.findall(without_blocks)
    dotted_defined: set[str] = set()
    for source in blocks + inline:
        dotted_defined |= defined_names(source)
        for params in _PARAMS.findall(source):
            dotted_defined.update(_IDENT.findall(params))
    used: set[str] = set()
    for source in blocks + inline:
        # Strings and comments are prose, not claims about the code.
        stripped = re.sub(r"(?m)#.*$|//.*$|\"[^\"\n]*\"|'[^'\n]*'", " ", source)
        used.update(_IDENT.findall(stripped))
    return {name for name in used if len(name) >= 3 and name.lower() not in _COMMON and name not in dotted_defined}


def module_attributes(answer: str, modules: Iterable[str]) -> set[str]:
    """Attribute names the answer reaches through one of ``modules`` (``np.array`` -> ``array``):
    another library's API, which the repository cannot confirm or refute."""
    bound = set(modules)
    found: set[str] = set()
    for base, rest in _ATTRIBUTE.findall(answer):
        if base in bound:
            found.update(rest.lstrip(".").split("."))
    return found


def defined_names(source: str) -> set[str]:
    """Names ``source`` binds: ``def``/``class``/... names, assignments, loop variables, imports."""
    names: set[str] = set()
    for match in _DEFINED.finditer(source):
        for value in match.groupdict().values():
            if value:
                names.update(value.split("."))
    return names


def repo_symbol_index(symbols: Iterable[str], texts: Iterable[str]) -> frozenset[str]:
    """The repository's symbol index: every identifier in ``symbols`` (the chunks' ``symbol`` cells,
    ``"a, b"`` lists, and their file paths: packages and modules) and every name the chunk texts
    define (functions, classes, methods, assignments, imports)."""
    index: set[str] = set()
    for cell in symbols:
        index.update(_IDENT.findall(cell or ""))
    for text in texts:
        index.update(defined_names(text or ""))
    return frozenset(index)


def grounding_score(
    answer: str,
    chunk_text: str,
    imports: str = "",
    question: str = "",
    path: str = "",
    repo_symbols: frozenset[str] = frozenset(),
) -> GroundingScore:
    """Score ``answer`` against the chunk (plus imports, question, path and the repository's
    symbol index as ground truth)."""
    claimed = claimed_identifiers(answer)
    if claimed:  # the ground set (the whole repo index) is built only for answers that claim names
        ground = set(_IDENT.findall(chunk_text)) | set(_IDENT.findall(imports)) | repo_symbols | PYTHON_NAMES
        ground |= set(_IDENT.findall(question)) | set(_IDENT.findall(path))
        claimed -= module_attributes(answer, defined_names(imports) | sys.stdlib_module_names) - ground
    if not claimed:
        return GroundingScore(0, 0)
    ground_lower = {name.lower() for name in ground}
    missing = sorted(name for name in claimed if name not in ground and name.lower() not in ground_lower)
    checked = len(claimed)
    if checked < MIN_CHECKED_IDENTIFIERS:
        return GroundingScore(0, 0, missing)
    return GroundingScore(checked, checked - len(missing), missing)
