# survey-worker: a slim, non-root image that runs the worker (or any CLI command).
# Build: docker build -t survey-worker .
# Run:   docker run --env-file .env survey-worker            (a worker)
#        docker run --env-file .env survey-worker migrate    (any CLI command)
# DATABASE_URL and REDIS_URL must point at real servers: the image has no embedded ones.

# Stage 1: build the wheel (it carries sql/ and templates/ inside the package).
FROM python:3.11-slim AS build
WORKDIR /src
COPY pyproject.toml README.md ./
COPY worker ./worker
COPY sql ./sql
COPY templates ./templates
RUN pip wheel --no-cache-dir --no-deps --wheel-dir /dist .

# Stage 2: the dependencies at exactly the versions of requirements.lock, checked by hash
# (refresh it with `make lock`), then that wheel alone: not editable, without the [embedded]
# extra, and nothing resolved on the day of the build.
FROM python:3.11-slim
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    LOG_FORMAT=json
COPY requirements.lock /tmp/requirements.lock
RUN pip install --require-hashes --no-deps -r /tmp/requirements.lock
COPY --from=build /dist /tmp/dist
RUN pip install --no-deps /tmp/dist/*.whl \
    && rm -rf /tmp/dist /tmp/requirements.lock \
    && useradd --system --uid 10001 --create-home --home-dir /home/survey survey

USER survey
WORKDIR /home/survey
# Healthy while this container's worker refreshes its heartbeat in Redis (every 10 s).
HEALTHCHECK --interval=30s --timeout=10s --start-period=30s --retries=3 \
    CMD ["survey-worker", "health"]
ENTRYPOINT ["survey-worker"]
CMD ["worker"]
