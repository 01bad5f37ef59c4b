"""A corpus of fake secrets of many kinds, each planted in every position of a small repository.

Values are generated here from a seeded RNG in the documented formats of each provider
(never real keys). :func:`corpus_files` returns the repository's files; :data:`KINDS`
lists the kinds and :func:`planted_values` every string that must never leave the clone.
"""

from __future__ import annotations

import base64
import json
import random
import string
from dataclasses import dataclass, field

_RNG = random.Random(20260417)
_ALNUM = string.ascii_letters + string.digits
_UPPER_DIGITS = string.ascii_uppercase + "234567"
_B64_SAFE = string.ascii_letters + string.digits + "+"  # no "/": every value fits in a file name
_HEX = "0123456789abcdef"


def _pick(alphabet: str, n: int) -> str:
    """``n`` random characters; letters-and-digits alphabets always mix digits and (both) cases."""
    while True:
        value = "".join(_RNG.choice(alphabet) for _ in range(n))
        has_digit = any(c.isdigit() for c in value)
        letters = [c for c in value if c.isalpha()]
        if alphabet == string.digits:
            return value
        if alphabet in (_HEX, _UPPER_DIGITS):
            if has_digit and letters:
                return value
        elif has_digit and any(c.isupper() for c in letters) and any(c.islower() for c in letters):
            return value


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode().rstrip("=")


def _jwt() -> str:
    header = _b64url(json.dumps({"alg": "HS256", "typ": "JWT"}).encode())
    payload = _b64url(
        json.dumps(
            {"sub": _pick(string.digits, 10), "name": "Fake User", "iat": 1700000000 + _RNG.randrange(10**6)}
        ).encode()
    )
    return f"{header}.{payload}.{_pick(_ALNUM + '_-', 43)}"


_PEM_LINES = [_pick(_B64_SAFE, 64) for _ in range(6)] + [_pick(_B64_SAFE, 24) + "=="]
PEM = "-----BEGIN RSA PRIVATE KEY-----\n" + "\n".join(_PEM_LINES) + "\n-----END RSA PRIVATE KEY-----\n"
_GCP_KEY_ID = _pick(_HEX, 40)
GCP_SERVICE_ACCOUNT = json.dumps(
    {
        "type": "service_account",
        "project_id": "fake-project-4711",
        "private_key_id": _GCP_KEY_ID,
        "private_key": PEM,
        "client_email": "svc@fake-project-4711.iam.gserviceaccount.com",
        "client_id": "1" + _pick(string.digits, 20),
        "token_uri": "https://oauth2.googleapis.com/token",
    },
    indent=2,
)


@dataclass(frozen=True)
class Kind:
    """One secret kind: the value planted, the strings that must never leak, and where it goes."""

    name: str
    value: str
    secrets: tuple[str, ...]
    key: str = "api_key"
    in_names: bool = True
    """Path-safe and recognisable alone: also planted in a file name and a directory name."""
    bare_ok: bool = True
    """Recognisable without a key next to it (a provider format, a URL, a key block): also
    planted bare in a comment, a docstring and a string literal. Passwords and hex values
    are only secrets by their key, so they are planted with one everywhere."""
    code_form: str = ""
    """How the value is written in code (default: the value itself in a string)."""
    extra: dict[str, str] = field(default_factory=dict)


def _kinds() -> list[Kind]:
    aws_id = "AKIA" + _pick(_UPPER_DIGITS, 16)
    aws_secret = _pick(_B64_SAFE, 40)
    ghp = "ghp_" + _pick(_ALNUM, 36)
    gh_pat = "github_pat_" + _pick(_ALNUM, 22) + "_" + _pick(_ALNUM, 59)
    glpat = "glpat-" + _pick(_ALNUM, 20)
    slack = f"xoxb-{_pick(string.digits, 12)}-{_pick(string.digits, 13)}-{_pick(_ALNUM, 24)}"
    sk_live = "sk_live_" + _pick(_ALNUM, 24)
    rk_live = "rk_live_" + _pick(_ALNUM, 24)
    openai = "sk-" + _pick(_ALNUM, 20) + "T3BlbkFJ" + _pick(_ALNUM, 20)
    openai_proj = "sk-proj-" + _pick(_ALNUM + "_-", 80)
    google = "AIza" + _pick(_ALNUM + "_-", 35)
    azure = _pick(_B64_SAFE, 86) + "=="
    jwt = _jwt()
    db_password = _pick(_ALNUM, 10) + "-pg"
    url_key = _pick(_HEX, 32)
    password = "Tr0ub4dor-" + _pick(_ALNUM, 8)
    hex_secret = _pick(_HEX, 64)
    b64_secret = _pick(_B64_SAFE, 43) + "="
    return [
        Kind("aws_access_key_id", aws_id, (aws_id,), key="aws_access_key_id"),
        Kind("aws_secret_access_key", aws_secret, (aws_secret,), key="aws_secret_access_key"),
        Kind("github_ghp", ghp, (ghp,), key="github_token"),
        Kind("github_pat", gh_pat, (gh_pat,), key="github_token"),
        Kind("gitlab_glpat", glpat, (glpat,), key="gitlab_token"),
        Kind("slack", slack, (slack,), key="slack_token"),
        Kind("stripe_sk_live", sk_live, (sk_live,), key="stripe_key"),
        Kind("stripe_rk_live", rk_live, (rk_live,), key="stripe_restricted_key"),
        Kind("openai_sk", openai, (openai,), key="openai_api_key"),
        Kind("openai_sk_proj", openai_proj, (openai_proj,), key="openai_api_key"),
        Kind("google_aiza", google, (google,), key="google_api_key"),
        Kind(
            "azure_storage_key",
            azure,
            (azure,),
            key="azure_storage_key",
            extra={
                "connection": f"DefaultEndpointsProtocol=https;AccountName=fakeacct;AccountKey={azure};"
                "EndpointSuffix=core.windows.net"
            },
        ),
        Kind(
            "pem_private_key",
            _PEM_LINES[0],
            tuple(_PEM_LINES[:-1]),
            key="private_key",
            in_names=True,
            code_form=PEM.replace("\n", "\\n"),
        ),
        Kind(
            "gcp_service_account",
            _GCP_KEY_ID,
            (_GCP_KEY_ID, *_PEM_LINES[:-1]),
            key="private_key_id",
            in_names=False,
            bare_ok=False,
        ),
        Kind(
            "database_url",
            f"postgres://app:{db_password}@db.internal:5432/app",
            (db_password,),
            key="database_url",
            in_names=False,
        ),
        Kind(
            "url_api_key",
            f"https://api.example.com/v1/items?api_key={url_key}&limit=5",
            (url_key,),
            key="endpoint",
            in_names=False,
        ),
        Kind(
            "url_google_key",
            f"https://maps.googleapis.com/maps/api/js?key={google}&v=3",
            (google,),
            key="maps_url",
            in_names=False,
        ),
        Kind("password", password, (password,), key="password", in_names=False, bare_ok=False),
        Kind("jwt", jwt, (jwt, jwt.split(".")[2]), key="session_token"),
        Kind("hex_high_entropy", hex_secret, (hex_secret,), key="signing_key", in_names=False, bare_ok=False),
        Kind("base64_high_entropy", b64_secret, (b64_secret,), key="encryption_key", in_names=False),
    ]


KINDS: list[Kind] = _kinds()


def _python_file(kind: Kind) -> str:
    value = kind.code_form or kind.value
    bare = value if kind.bare_ok else f'{kind.key}="{value}"'
    lines = [
        f"import os  # fallback credential: {bare}",
        f'from clients import connect  # {kind.key} = "{value}"',
        "",
        "",
        f'@retry(token="{value}")',
        f'def fetch_{kind.name}(client, {kind.key}: str = "{value}") -> dict:',
        f'    """Fetch with the {kind.name} credential.',
        "",
        f"    Example credential: {bare}",
        '    """',
        f"    # the default is {bare}",
        f'    {kind.key} = "{value}"',
    ]
    if kind.bare_ok:
        lines.append(f'    header = "Bearer " + "{value}"')
    lines.append(f"    return client.get({kind.key})")
    return "\n".join(lines) + "\n"


def _js_file(kind: Kind) -> str:
    value = kind.code_form or kind.value
    arg = f'"{value}"' if kind.bare_ok else f'{{ {kind.key}: "{value}" }}'
    bare = value if kind.bare_ok else f'{kind.key}="{value}"'
    return (
        f'const client = require("client-lib")({arg});\n'
        f'import {{ connect }} from "./connect"; // {bare}\n\n'
        f"export function use_{kind.name}() {{\n"
        f'  return client.call({{ {kind.key}: "{value}" }});\n'
        "}\n"
    )


def corpus_files() -> dict[str, str]:
    """path -> text of the planted repository."""
    files: dict[str, str] = {
        "README.md": "# planted\n\nA repository full of fake credentials for the redaction tests.\n",
        "LICENSE": "MIT License\n\nPermission is hereby granted, free of charge, to any person obtaining a copy\n",
        "gcp/service_account.json": GCP_SERVICE_ACCOUNT + "\n",
        "keys/deploy_key.pem.py": f'DEPLOY_KEY = """{PEM}"""\n',
    }
    env, yaml, ini, jsn = [], ["credentials:"], ["[credentials]"], {}
    for kind in KINDS:
        files[f"src/k_{kind.name}.py"] = _python_file(kind)
        files[f"web/k_{kind.name}.js"] = _js_file(kind)
        if kind.in_names:
            files[f"names/d_{kind.value}/f_{kind.value}.py"] = f"def f_{kind.name}():\n    return 1\n"
        value = kind.extra.get("connection", kind.value)
        env.append(f"{kind.key.upper()}={value}")
        yaml.append(f"  {kind.key}: {value}")
        ini.append(f"{kind.key} = {value}")
        jsn[kind.name + "_" + kind.key] = value
        if kind.in_names:  # the secret as a key
            env.append(f"{kind.value}=enabled")
            yaml.append(f"  {kind.value}: enabled")
            ini.append(f"{kind.value} = enabled")
            jsn[kind.value] = "enabled"
    files["config/.env"] = "\n".join(env) + "\n"
    files["config/settings.yaml"] = "\n".join(yaml) + "\n"
    files["config/settings.ini"] = "\n".join(ini) + "\n"
    files["config/settings.json"] = json.dumps(jsn, indent=2) + "\n"
    return files


def planted_values() -> list[str]:
    """Every string that must never appear outside the clone."""
    values: list[str] = []
    for kind in KINDS:
        values.extend(kind.secrets)
    return sorted(set(values))
