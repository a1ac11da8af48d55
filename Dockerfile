# One image for every service (worker, web, flower); compose picks the command, the Procfile's.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1
WORKDIR /app

COPY pyproject.toml README.md ./
COPY config ./config
COPY worker ./worker
COPY schemas ./schemas
COPY Procfile ./
# /data belongs to the app user, so a fresh named volume mounted there (Flower's state) is
# writable without root.
RUN pip install . \
    && useradd --create-home --uid 10001 app \
    && mkdir -p /data \
    && chown app:app /data

# Celery refuses to be root without being forced; nothing here needs root.
USER app
# web (uvicorn) and flower.
EXPOSE 8000 5555
CMD ["celery", "-A", "worker.app", "worker", "--loglevel=INFO", "--without-gossip", "--without-mingle"]
