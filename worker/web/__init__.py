"""The web app and its faces, one module per HTTP concept: `app` (the Starlette app and
its server), `backends` (Postgres and Redis as the app reaches them), `unsubscribe`,
`pages` (and `templates/`), `webhooks/`, the client API (`api/`) and `/ops` (`ops/`)."""
