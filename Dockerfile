# survey-worker: a slim, non-root image that runs the worker.
# Build: docker build -t survey-worker .
# Run:   docker run --env-file .env survey-worker            (a worker)
#        docker run --env-file .env survey-worker migrate    (any CLI command)
# In a container, DATABASE_URL and REDIS_URL must point at real servers.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    LOG_FORMAT=json

WORKDIR /app
COPY pyproject.toml README.md ./
COPY worker ./worker
COPY sql ./sql
COPY templates ./templates
# Editable install: sql/ and templates/ are read from /app at run time.
RUN pip install -e . \
    && useradd --system --uid 10001 --home-dir /app survey \
    && chown -R survey /app

USER survey
# Healthy while this container's worker refreshes its heartbeat in Redis (every 10 s).
HEALTHCHECK --interval=30s --timeout=10s --start-period=30s --retries=3 \
    CMD ["survey-worker", "health"]
ENTRYPOINT ["survey-worker"]
CMD ["worker"]
