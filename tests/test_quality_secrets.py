"""Secret redaction: planted secrets never reach chunks, prompts or any export file."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from cicdllm_assets.config import load_settings
from cicdllm_assets.quality.secrets import find_secrets, redact_secrets
from tests.export_fixtures import answer_row, chunk_row, run_dataset_assets, store_repo

AWS_KEY = "AKIAIOSFODNN7EXAMPLE"
AWS_SECRET = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"
GITHUB_TOKEN = "ghp_" + "Zx9Qw8Er7Ty6Ui5Op4As3Df2Gh1Jk0LzXcVb"
PEM_BODY = [
    "MIIEowIBAAKCAQEAu1SU1LfVLPHCozMxH2Mo4lgOEePzNm0tRgeLezV6ffAt0gun",
    "VTLw7onLRnrq0/IzW7yWR7QkrmBL7jTKEn5u+qKhbwKfBstIs+bMY2Zkp18gnTxK",
    "LxoS2tFczGkPLPgizskuemMghRniWaoLcyehkd3qqGElvW/VDL5AaWTg0nLVkjRo",
]
PEM = "-----BEGIN RSA PRIVATE KEY-----\n" + "\n".join(PEM_BODY) + "\n-----END RSA PRIVATE KEY-----"
ENV_PASSWORD = "Tr0ub4dor&3-env"
DB_PASSWORD = "pg-s3cret-99"
YAML_PASSWORD = "hunter2yaml"
JWT = (
    "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJzdWIiOiIxMjM0NTY3ODkwIiwibmFtZSI6IkpvaG4gRG9lIiwiaWF0IjoxNTE2MjM5MDIyfQ"
    ".SflKxwRJSMeKKF2QT4fwpMeJf36POk6yJV_adQssw5c"
)
SLACK = "xoxb-123456789012-1234567890123-AbCdEfGhIjKlMnOpQrStUvWx"
STRIPE = "sk_live_" + "4eC39HqLyjWDarjtT1zdp7dc"
PLANTED = [
    AWS_KEY,
    AWS_SECRET,
    GITHUB_TOKEN,
    *PEM_BODY,
    ENV_PASSWORD,
    DB_PASSWORD,
    YAML_PASSWORD,
    JWT,
    JWT.split(".")[2],
    SLACK,
    STRIPE,
]

FILES = {
    "settings.py": (
        "import os\n\n"
        f'AWS_ACCESS_KEY_ID = "{AWS_KEY}"\n'
        f'AWS_SECRET_ACCESS_KEY = "{AWS_SECRET}"\n'
        f'GITHUB_TOKEN = "{GITHUB_TOKEN}"\n'
        f'SESSION = "{JWT}"\n'
        "def connect(password: str) -> None:\n"
        "    password = os.environ.get('PASSWORD')\n"
        "    token = tokenizer.encode(password)\n"
    ),
    "keys/deploy_key.py": f'DEPLOY_KEY = """{PEM}\n"""\n',
    ".env": f"DATABASE_URL=postgres://app:{DB_PASSWORD}@db.internal:5432/app\nADMIN_PASSWORD={ENV_PASSWORD}\n"
    "DEBUG=true\nAPI_TOKEN=${TOKEN_FROM_VAULT}\n",
    "config/app.yaml": f"database:\n  host: localhost\n  user: app\n  password: {YAML_PASSWORD}\n"
    "tokenizer: model\nmax_tokens: 256\n",
    "notify.js": f'const slack = "{SLACK}";\nconst stripeKey = "{STRIPE}";\n',
}


def assert_clean(text: str) -> None:
    for secret in PLANTED:
        assert secret not in text, f"planted secret leaked: {secret[:12]}…"
    assert find_secrets(text) == [], [f.describe() for f in find_secrets(text)]


@pytest.mark.parametrize("path", sorted(FILES))
def test_redacts_every_planted_secret(path: str) -> None:
    result = redact_secrets(FILES[path], path)
    assert result.total > 0
    assert_clean(result.text)
    assert "[REDACTED:" in result.text


def test_typed_placeholders_and_counts() -> None:
    env = redact_secrets(FILES[".env"], ".env")
    assert env.text.splitlines()[0] == "DATABASE_URL=[REDACTED:connection_string]"
    assert "ADMIN_PASSWORD=[REDACTED:password]" in env.text
    assert "API_TOKEN=${TOKEN_FROM_VAULT}" in env.text and "DEBUG=true" in env.text
    yaml = redact_secrets(FILES["config/app.yaml"], "config/app.yaml")
    assert "password: [REDACTED:password]" in yaml.text
    assert "tokenizer: model" in yaml.text and "max_tokens: 256" in yaml.text and "user: app" in yaml.text
    pem = redact_secrets(FILES["keys/deploy_key.py"], "keys/deploy_key.py")
    assert pem.text == 'DEPLOY_KEY = """[REDACTED:private_key]\n"""\n' and pem.counts == {"private_key": 1}
    py = redact_secrets(FILES["settings.py"], "settings.py")
    assert {"aws_access_key", "github_token", "jwt"} <= set(py.counts)
    assert "password = os.environ.get('PASSWORD')" in py.text and "token = tokenizer.encode(password)" in py.text


def test_truncated_pem_block_is_redacted_to_the_end() -> None:
    chunk = "KEY = '''-----BEGIN OPENSSH PRIVATE KEY-----\n" + "\n".join(PEM_BODY[:2]) + "\n"
    result = redact_secrets(chunk, "k.py")
    assert_clean(result.text)


def test_prose_and_answers_without_a_path() -> None:
    text = (
        "Set `password: hunter2prose` in the YAML, or export DB_PASSWORD=envpw-prose-1 before starting. "
        "Call `password = get_password()` and `def login(password: str, token: Optional[str] = None)`."
    )
    result = redact_secrets(text)
    assert "hunter2prose" not in result.text and "envpw-prose-1" not in result.text
    assert "password = get_password()" in result.text
    assert "def login(password: str, token: Optional[str] = None)" in result.text


def test_ordinary_code_is_untouched() -> None:
    code = (
        "def tokenize(text: str, max_tokens: int = 256) -> list[str]:\n"
        "    secret_name = config.secret_name\n"
        "    key = (repo, path)\n"
        "    url = f'https://example.com/{path}'\n"
        "    return [t for t in text.split() if t]\n"
        'pad_token = "[PAD]"\n'
        'eos_token = "<|im_end|>"\n'
        'secret_env = os.environ["AWS_SECRET_ACCESS_KEY"]\n'
        'api_key_env = "OPENAI_API_KEY"\n'
        "class _V1ValidatorWithValuesKwOnlyClsMethod(Protocol): ...\n"
        "see https://github.com/dagster-io/dagster/blob/22e79ea7024bd13b197e3a2f66401197/README.md\n"
    )
    assert redact_secrets(code, "tok.py").text == code
    assert redact_secrets(code).text == code


def test_redaction_is_idempotent() -> None:
    for path, text in FILES.items():
        once = redact_secrets(text, path).text
        assert redact_secrets(once, path).text == once
        assert redact_secrets(once).total == 0


def test_planted_repo_never_leaks_into_exports(project: Path, make_git_repo: Callable[..., object]) -> None:
    settings = load_settings()
    repo = make_git_repo("leaky", FILES)
    root = Path(repo.path)  # type: ignore[attr-defined]
    chunks = []
    for path in sorted(FILES):
        redacted = redact_secrets((root / path).read_text(encoding="utf-8"), path)
        assert_clean(redacted.text)
        chunks.append(chunk_row("acme/leaky", path, redacted.text, language="text"))
    # the model echoes secrets in questions and answers (as a small model might)
    answers = [
        answer_row(
            chunks[0],
            f"Why is {AWS_KEY} in settings.py?",
            f"The constant `AWS_ACCESS_KEY_ID` holds {AWS_KEY} and `GITHUB_TOKEN` holds {GITHUB_TOKEN}; "
            f"the session uses {JWT}.",
        ),
        answer_row(
            chunks[1],
            "What does deploy_key.py contain?",
            f"It defines `DEPLOY_KEY`, a private key:\n```\n{PEM}\n```\nLoad it with care.",
        ),
        answer_row(
            chunks[2],
            "How is the database configured in .env?",
            f"Through `DATABASE_URL`, e.g. postgres://app:{DB_PASSWORD}@db.internal:5432/app, and "
            f"ADMIN_PASSWORD={ENV_PASSWORD} sets the admin password.",
        ),
        answer_row(
            chunks[3],
            "What is in config/app.yaml?",
            f"The `database` section sets host, user and `password: {YAML_PASSWORD}` for the app.",
        ),
        answer_row(
            chunks[4],
            "Which services does notify.js use?",
            f"It posts to Slack with `{SLACK}` and bills through Stripe using `{STRIPE}`.",
        ),
    ]
    store_repo(settings.tables_dir, "acme/leaky", chunks, answers)
    run_dataset_assets(project, ["acme/leaky"])
    out = settings.export_dir
    files = [p for p in out.rglob("*") if p.is_file()]
    assert len(files) > 10
    for path in files:
        if path.suffix == ".parquet":
            import pyarrow.parquet as pq

            text = "\n".join(str(v) for row in pq.read_table(path).to_pylist() for v in row.values())
        else:  # text files, and the card's PNG plots (scanned as bytes: secrets are ASCII)
            text = path.read_bytes().decode("utf-8", errors="replace")
        for secret in PLANTED:
            assert secret not in text, f"{secret[:10]}… leaked into {path.relative_to(out)}"
    prompts = "\n".join(line for line in (out / "dataset.jsonl").read_text().splitlines())
    assert "[REDACTED:" in prompts


def test_key_block_split_across_chunks_is_redacted_in_every_piece() -> None:
    lines = PEM.splitlines()
    head = "KEY = '''" + "\n".join(lines[:2]) + "\n"
    middle = "\n".join(lines[1:3]) + "\n"
    tail = "\n".join(lines[2:]) + "\n'''\nx = 1\n"
    for piece in (head, middle, tail):
        result = redact_secrets(piece, "keys.py")
        assert_clean(result.text)
    assert redact_secrets(tail, "keys.py").text.endswith("\n'''\nx = 1\n")


def test_real_chunker_never_emits_a_planted_secret(tmp_path: Path) -> None:
    """The chunking engineer's row builder calls redact_secrets per chunk: small chunks cut
    key blocks and config files apart, and no piece may carry a secret."""
    from cicdllm_assets.chunking.plan import plan_file
    from cicdllm_assets.chunking.rows import ChunkRowBuilder, FileForChunks
    from cicdllm_assets.llm.tokenizer_counter import TokenCounter
    from tests.llm_fixtures import make_tiny_model_dir

    counter = TokenCounter(make_tiny_model_dir(tmp_path / "tiny") / "tokenizer.json")
    builder = ChunkRowBuilder("acme/leaky", "c0ffee", "MIT", budget=64, counter=counter)
    for path, text in sorted(FILES.items()):
        encoding = counter.encode_batch([text])[0]
        plan = plan_file(text, "text", encoding, 64, counter.count_batch)
        builder.add_file(FileForChunks(path, "blob-" + path, "text", text), plan)
    table = builder.table()
    assert table.num_rows > len(FILES)  # files were really cut into several chunks
    assert builder.stats.redactions > 0
    for text in table.column("text").to_pylist():
        for secret in PLANTED:
            assert secret not in text
