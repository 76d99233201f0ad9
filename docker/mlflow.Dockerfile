# syntax=docker/dockerfile:1
# MLflow tracking server for the tuning service: runs in PostgreSQL, artifacts proxied (--serve-artifacts)
# and stored under /mlartifacts (a volume). Same MLflow as the workers (pyproject pins mlflow==3.17.2).
#
#   docker build -f docker/mlflow.Dockerfile -t adatp-autotune-mlflow docker
#
# The password is never part of the image or of the command line: libpq reads PGPASSWORD from the
# environment (compose.yaml sets it from POSTGRES_PASSWORD), so MLFLOW_BACKEND_STORE_URI has no password.
FROM python:3.11-slim-bookworm

ENV PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

RUN python -m pip install "mlflow==3.17.2" "psycopg2-binary" "pyarrow<26" \
 && python -c "import mlflow, psycopg2; print('mlflow', mlflow.__version__)"

RUN useradd --create-home --uid 1000 --shell /usr/sbin/nologin mlflow \
 && mkdir -p /mlartifacts \
 && chown mlflow:mlflow /mlartifacts
USER mlflow
WORKDIR /home/mlflow

# Inside the compose network only; compose.yaml publishes port 5000 on 127.0.0.1 unless MLFLOW_BIND says
# otherwise. MLflow's own Host-header check (DNS-rebinding protection) admits MLFLOW_SERVER_ALLOWED_HOSTS.
ENV MLFLOW_BACKEND_STORE_URI=postgresql://autotune@postgres:5432/mlflow \
    MLFLOW_SERVER_ALLOWED_HOSTS="mlflow,mlflow:*,localhost,localhost:*,127.0.0.1,127.0.0.1:*"
EXPOSE 5000
VOLUME ["/mlartifacts"]

HEALTHCHECK --interval=15s --timeout=5s --start-period=60s --retries=5 \
    CMD python -c "import urllib.request; urllib.request.urlopen('http://127.0.0.1:5000/health', timeout=4)"

# Shell form on purpose: the backend URI comes from the environment at run time; `exec` replaces the shell,
# so `docker stop` signals mlflow itself.
CMD exec mlflow server \
    --backend-store-uri "${MLFLOW_BACKEND_STORE_URI}" \
    --artifacts-destination /mlartifacts \
    --serve-artifacts \
    --host 0.0.0.0 \
    --port 5000
