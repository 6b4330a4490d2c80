# syntax=docker/dockerfile:1
#
# One image for every Herald process. It has no default command of its own: each
# docker-compose.yml service says which module to run, e.g.
#   docker run --rm herald python -m services.ingest
#   docker run --rm herald python -m shared.cli migrate      (the `herald migrate` command)
# Configuration comes from HERALD_* / HERALD_SIM_* environment variables (docs/configuration.md).

# --- build: wheels for the dependencies (cached while pyproject.toml does not change), then Herald
FROM python:3.11-slim AS build
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1
WORKDIR /src
COPY pyproject.toml ./
RUN python -c "import tomllib; print('\n'.join(tomllib.load(open('pyproject.toml', 'rb'))['project']['dependencies']))" \
        > requirements.txt \
    && pip wheel --wheel-dir /wheels -r requirements.txt
# .dockerignore lets in only pyproject.toml, README.md, shared/ and services/.
COPY . .
RUN pip wheel --no-deps --wheel-dir /wheels .

# --- runtime: the installed package only (no source tree), as an unprivileged user
FROM python:3.11-slim
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1
RUN groupadd --system --gid 10001 herald \
    && useradd --system --uid 10001 --gid herald --home-dir /app --no-create-home --shell /usr/sbin/nologin herald
RUN --mount=type=bind,from=build,source=/wheels,target=/wheels \
    pip install --no-index --find-links /wheels herald
WORKDIR /app
USER herald:herald
# ingest, scheduler, dispatcher, reports (HERALD_HTTP_PORT); simulator API and control ports
EXPOSE 38080 38081 38082 38083 38090 38091
