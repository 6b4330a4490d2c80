# syntax=docker/dockerfile:1
#
# One image for every Herald process. It has no default command of its own: each
# docker-compose.yml service says which module to run, e.g.
#   docker run --rm herald python -m services.ingest
#   docker run --rm herald python -m herald_tools.cli migrate  (the `herald migrate` command)
# Configuration comes from HERALD_* / HERALD_SIM_* environment variables (docs/configuration.md).
#
# Dependencies come from a lock file with hashes (requirements/*.lock, `make lock`): the
# production image installs requirements/runtime.lock, which leaves out the gateway
# simulator's SMPP codec (smpp34). docker-compose.yml builds with HERALD_LOCK=simulator, whose
# image can also run `python -m services.simulator`.

# --- build: a virtualenv with the locked dependencies (hash-checked), then Herald itself
FROM python:3.11-slim AS build
ARG HERALD_LOCK=runtime
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1
WORKDIR /src
COPY requirements/ requirements/
RUN python -m venv /opt/herald \
    && /opt/herald/bin/pip install --require-hashes --no-deps -r "requirements/${HERALD_LOCK}.lock"
# .dockerignore lets in only pyproject.toml, README.md, requirements/, shared/, services/ and
# herald_tools/ (the `herald` command: migrate, admin; no service imports it).
COPY . .
RUN /opt/herald/bin/pip install --no-deps .

# --- runtime: the virtualenv only (no source tree), as an unprivileged user
FROM python:3.11-slim
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PATH=/opt/herald/bin:$PATH
RUN groupadd --system --gid 10001 herald \
    && useradd --system --uid 10001 --gid herald --home-dir /app --no-create-home --shell /usr/sbin/nologin herald
COPY --from=build /opt/herald /opt/herald
WORKDIR /app
USER herald:herald
# ingest and reports APIs (HERALD_HTTP_PORT); the services' ops ports (HERALD_OPS_PORT: /healthz,
# /readyz, /metrics); simulator API and control ports
EXPOSE 28080 28083 28180 28181 28182 28183 28090 28091
