# One image for web, inference worker and trainer; the command picks the role.
FROM python:3.11-slim AS base

# gunicorn listens on the loopback outside a container (gunicorn.conf.py); in one, on every interface of its own.
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    DJANGO_SETTINGS_MODULE=mnistsite.settings.production \
    MEDIA_ROOT=/srv/media \
    DATA_DIR=/srv/data \
    CHECKPOINT_DIR=/srv/checkpoints \
    STATIC_ROOT=/srv/static \
    GUNICORN_BIND=0.0.0.0:8000

WORKDIR /app
COPY requirements.txt .
RUN pip install -r requirements.txt

COPY . .
# collectstatic needs a key and a database URL only to import settings; the real ones come at run time.
RUN SECRET_KEY=build-only-collectstatic-key-never-used-to-sign-anything-0123456789 \
    DATABASE_URL=sqlite://:memory: python manage.py collectstatic --noinput \
    && useradd --system --uid 1000 --home /app mnistsite \
    && mkdir -p /srv/media /srv/data /srv/checkpoints \
    && chown -R mnistsite /srv
# By number (mnistsite, with its own group): an orchestrator that only runs non-root containers (Kubernetes'
# runAsNonRoot) cannot verify a name, and refuses to start the container.
USER 1000

EXPOSE 8000
# Processes, threads and the port: gunicorn.conf.py, read from the working directory.
CMD ["gunicorn", "mnistsite.wsgi:application"]
