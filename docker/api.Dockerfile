# The API image: FastAPI under uvicorn. It never imports torch, but the package
# depends on it, so it takes the small CPU build.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 \
    OBLIVIATE_HOME=/var/lib/obliviate
RUN pip install torch --index-url https://download.pytorch.org/whl/cpu \
    && useradd --create-home --uid 1000 obliviate \
    && mkdir -p /var/lib/obliviate /var/lib/obliviate-keys \
    && chown obliviate /var/lib/obliviate /var/lib/obliviate-keys

WORKDIR /app
COPY pyproject.toml README.md alembic.ini ./
COPY api ./api
COPY core ./core
COPY worker ./worker
COPY cli ./cli
COPY migrations ./migrations
RUN pip install .

USER obliviate
EXPOSE 8000
HEALTHCHECK --interval=10s --timeout=3s --retries=3 \
    CMD python -c "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/healthz')"
# Migrations run at start-up (safe with several replicas: an advisory lock serializes them).
CMD ["uvicorn", "--factory", "api.main:create_app", "--host", "0.0.0.0", "--port", "8000", "--workers", "2", "--no-access-log"]
