# One image for every service (worker, web, flower); compose picks the command.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1
WORKDIR /app

COPY pyproject.toml README.md ./
COPY config ./config
COPY worker ./worker
COPY schemas ./schemas
COPY Procfile ./
RUN pip install . && useradd --create-home --uid 10001 app

# Celery refuses to be root without being forced; nothing here needs root.
USER app
CMD ["celery", "-A", "worker.app", "worker", "--loglevel=INFO", "--without-gossip", "--without-mingle"]
