"""For development and trials only: the embedded Postgres and Redis, the demo and its SMTP
sink. Imported only when DATABASE_URL / REDIS_URL are unset or by `demo`; a deployment
with its own servers never loads this package or the `[embedded]` extra it needs."""
