# One image for both deployables: `taskwire api` (the default) and `taskwire processor`.
#   docker build -t taskwire .
#   docker run --rm -p 8000:8000 -e DATABASE_URL=... -e REDIS_URL=... -e RABBITMQ_URL=... taskwire
#   docker run --rm -e ... taskwire processor

FROM python:3.11-slim-bookworm AS build
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1 PIP_ROOT_USER_ACTION=ignore
WORKDIR /src

# Every third-party file that can reach the image is fetched here, and only if its hash is the
# one in the lock (binary wheels only: nothing is compiled).
COPY requirements.lock ./
RUN pip download --require-hashes --no-deps --only-binary=:all: --dest /wheels \
        -r requirements.lock

# The project's wheel is built offline: its build backend comes from those checked wheels.
COPY pyproject.toml README.md ./
COPY taskwire ./taskwire
COPY graphql_api ./graphql_api
COPY processor ./processor
RUN pip wheel --no-deps --no-index --find-links /wheels --wheel-dir /wheels .

# The runtime venv gets taskwire and what it needs at run time (not the dev extra), resolved
# offline from the checked wheels, so every version is the lock's. No pip inside it.
RUN python -m venv --without-pip /opt/taskwire \
    && pip --python /opt/taskwire/bin/python install --no-index --find-links /wheels \
        /wheels/taskwire-*.whl


FROM python:3.11-slim-bookworm
ENV PATH=/opt/taskwire/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1
RUN groupadd --system --gid 10001 taskwire \
    && useradd --system --uid 10001 --gid taskwire --home-dir /home/taskwire --create-home \
        --shell /usr/sbin/nologin taskwire
COPY --from=build /opt/taskwire /opt/taskwire
# Numeric, so that runtimes which check for a non-root user can tell without /etc/passwd.
USER 10001:10001
WORKDIR /home/taskwire

EXPOSE 8000
# For the API; compose turns it off for the processor, which serves no HTTP.
HEALTHCHECK --interval=10s --timeout=5s --start-period=20s --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/healthz', timeout=4)"]
ENTRYPOINT ["taskwire"]
CMD ["api", "--host", "0.0.0.0", "--port", "8000"]
