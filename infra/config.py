"""Configuration: environment variables, then a `.env` file in the current directory."""
from __future__ import annotations

import io
from pathlib import Path

from pydantic import AliasChoices, Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from infra.errors import UsageError

OPENROUTER_URL = "https://openrouter.ai/api/v1"


def _env(name: str) -> AliasChoices:
    return AliasChoices(name, name.lower())


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_file=".env", extra="ignore", populate_by_name=True)

    api_key: SecretStr | None = Field(None, validation_alias=_env("OPENROUTER_API_KEY"))
    base_url: str = Field(OPENROUTER_URL, validation_alias=_env("OPENROUTER_BASE_URL"))
    books_dir: Path = Field(Path("books"), validation_alias=_env("AR_BOOKS_DIR"))
    workers: int = Field(32, ge=1, le=1024, validation_alias=_env("AR_WORKERS"))
    correct_model: str = Field("google/gemini-2.5-flash", validation_alias=_env("AR_CORRECT_MODEL"))
    fix_model: str = Field("anthropic/claude-sonnet-4.5", validation_alias=_env("AR_FIX_MODEL"))
    timeout_s: float = Field(120.0, gt=0, validation_alias=_env("AR_TIMEOUT"))
    max_retries: int = Field(6, ge=0, le=50, validation_alias=_env("AR_MAX_RETRIES"))
    # 0: no limit of our own; the provider's 429s (and Retry-After) set the pace.
    requests_per_minute: float = Field(0, ge=0, validation_alias=_env("AR_RPM"))
    budget_usd: float | None = Field(None, gt=0, validation_alias=_env("AR_BUDGET_USD"))
    # a warning (never a stop) when one run has spent more than this
    warn_run_usd: float | None = Field(None, gt=0, validation_alias=_env("AR_WARN_RUN_USD"))
    # OpenRouter's provider.max_price, USD per million tokens: a ceiling every request carries,
    # so that a variable-price model (openrouter/auto) can be held to a budget
    max_prompt_price: float | None = Field(None, gt=0, validation_alias=_env("AR_MAX_PROMPT_PRICE"))
    max_completion_price: float | None = Field(None, gt=0, validation_alias=_env("AR_MAX_COMPLETION_PRICE"))

    @model_validator(mode="after")
    def _whole_ceiling(self) -> Settings:
        if (self.max_prompt_price is None) != (self.max_completion_price is None):
            raise ValueError("set AR_MAX_PROMPT_PRICE and AR_MAX_COMPLETION_PRICE together")
        return self

    @property
    def max_price(self) -> dict[str, float] | None:
        if self.max_prompt_price is None:
            return None
        return {"prompt": self.max_prompt_price, "completion": self.max_completion_price}

    @field_validator("base_url")
    @classmethod
    def _strip_slash(cls, v: str) -> str:
        return v.rstrip("/")


def check_env_file(path: Path = Path(".env")) -> None:
    """A .env that does not parse is an error, not a warning and a setting silently missing
    (an unterminated quote would drop the key). The line is not shown: it may hold the key."""
    if not path.is_file():
        return
    from dotenv.parser import parse_stream

    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise UsageError(f"bad configuration {path.resolve()}: not UTF-8 text (byte {e.start})") from None
    offset = 0
    for binding in parse_stream(io.StringIO(text)):
        raw = binding.original.string
        if binding.error:
            line = text.count("\n", 0, offset) + len(raw) - len(raw.lstrip("\n")) + 1
            raise UsageError(f"bad configuration {path.resolve()}: line {line} does not parse "
                             "(expected NAME=value)")
        offset += len(raw)


def load_settings(**overrides) -> Settings:
    """Settings from the environment and .env; a bad value is a one-line usage error."""
    check_env_file()
    try:
        return Settings(**{k: v for k, v in overrides.items() if v is not None})
    except ValidationError as e:
        first = e.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "settings"
        raise UsageError(f"bad configuration {where}: {first['msg']}") from None
