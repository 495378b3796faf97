# Production image: gunicorn (web), Celery worker and beat all run from it (see docker-compose.yml).
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    DATA_DIR=/app/var

WORKDIR /app
RUN useradd --system --uid 10001 --user-group --home-dir /app --no-create-home app

# Dependencies first, in their own layer: rebuilt only when pyproject.toml or constraints.txt change.
COPY pyproject.toml constraints.txt ./
RUN python -c "import tomllib; print('\n'.join(tomllib.load(open('pyproject.toml', 'rb'))['project']['dependencies']))" \
        > /tmp/requirements.txt \
    && pip install -c constraints.txt -r /tmp/requirements.txt \
    && rm /tmp/requirements.txt

COPY . .
# Editable, so the code (and templates/) is used from /app; the dependencies are already in place.
RUN pip install --no-deps -c constraints.txt -e . \
    && mkdir -p /app/var \
    && chown -R app:app /app/var

USER app
# Static files are built into the image (WhiteNoise serves them); the key is a build-time dummy only.
RUN DJANGO_DEBUG=0 SECRET_KEY=build-time-dummy-key-not-used-at-runtime python manage.py collectstatic --noinput

EXPOSE 8000
# Worker class and threads: gunicorn.conf.py (read from /app).
CMD ["gunicorn", "config.wsgi", "--bind", "0.0.0.0:8000"]
