"""The API's settings, read from the environment and `.env` like the rest (see
`.env.example`)."""

from __future__ import annotations

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from worker.settings import postgres_url_problem


class ApiSettings(BaseSettings):
    """API_DATABASE_URL, API_MAX_UPLOAD_BYTES, API_RATE_LIMIT."""

    model_config = SettingsConfigDict(env_file=".env", extra="ignore", env_ignore_empty=True)

    # The database user the API acts as (it launches and controls campaigns, as `launch`
    # does: a login in the survey_worker role). Unset: the web app's own DATABASE_URL.
    api_database_url: str | None = None
    # A request body (JSON or a CSV upload) larger than this is refused with 413.
    api_max_upload_bytes: int = Field(default=100_000_000, ge=1_000)
    # Requests per minute per key; more get 429. 0: no limit.
    api_rate_limit: int = Field(default=600, ge=0)

    @field_validator("api_database_url")
    @classmethod
    def _postgres_url(cls, value: str | None) -> str | None:
        problem = None if value is None else postgres_url_problem(value)
        if problem:
            raise ValueError(problem)
        return value
