# syntax=docker/dockerfile:1
# A Prefect worker for the aidetect flows (the `flows` extra: Prefect, Evidently, TensorFlow).
#   CPU pool: docker build -f docker/worker.Dockerfile -t aidetect-worker .
#   GPU pool: docker build -f docker/worker.Dockerfile --build-arg VARIANT=gpu -t aidetect-worker:gpu .
# The GPU variant swaps tensorflow-cpu for tensorflow[and-cuda] at the same version: the CUDA
# and cuDNN libraries come as pinned pip wheels, so the base stays python:slim and the host
# only needs the NVIDIA driver and container toolkit. No model and no data inside: flows read
# and write the object store named by AIDETECT_STORE_URL.
# The source stays at /app (an editable install): prefect.yaml's pull step runs the flows from
# AIDETECT_CODE_DIR, and `aidetect deploy` registers prefect.yaml from here.
FROM python:3.11.14-slim-bookworm

ARG VARIANT=cpu
ARG TENSORFLOW_VERSION=2.21.0

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    AIDETECT_HOME=/var/lib/aidetect \
    AIDETECT_CODE_DIR=/app \
    PREFECT_HOME=/var/lib/aidetect/prefect

SHELL ["/bin/bash", "-o", "pipefail", "-c"]

RUN groupadd --system --gid 10001 aidetect \
    && useradd --system --uid 10001 --gid aidetect --home-dir /var/lib/aidetect --create-home aidetect

WORKDIR /app
# The locked third-party dependencies first, in a layer of their own: it is rebuilt only when
# pyproject.toml or requirements.lock change, never for a commit that changes only code.
COPY pyproject.toml requirements.lock ./
COPY deploy/requirements.py ./deploy/
RUN python deploy/requirements.py flows > /tmp/requirements.txt \
    && pip install --no-cache-dir -c requirements.lock -r /tmp/requirements.txt \
    && rm /tmp/requirements.txt \
    && if [ "$VARIANT" = gpu ]; then \
         pip uninstall --yes tensorflow-cpu \
         && pip install --no-cache-dir -c requirements.lock "tensorflow[and-cuda]==${TENSORFLOW_VERSION}"; \
       elif [ "$VARIANT" != cpu ]; then echo "VARIANT must be cpu or gpu, got $VARIANT" >&2; exit 1; fi
# Then the code, and the package itself on top (--no-deps: everything it needs is above).
COPY README.md prefect.yaml ./
COPY aidetect ./aidetect
COPY cli ./cli
COPY storage ./storage
COPY model ./model
COPY serving ./serving
COPY feedback ./feedback
COPY flows ./flows
RUN pip install --no-cache-dir -c requirements.lock --no-deps -e . \
    && python -c "import prefect, flows.retrain, tensorflow"

# The git sha the image was built from (CI passes it); late, so a new sha reuses the layers above.
ARG AIDETECT_BUILD=dev
ENV AIDETECT_BUILD=${AIDETECT_BUILD}

USER 10001:10001
# `--with-healthcheck` serves /health on PREFECT_WORKER_WEBSERVER_PORT (8080).
HEALTHCHECK --interval=30s --timeout=5s --start-period=60s --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8080/health', timeout=4)"]
CMD ["prefect", "worker", "start", "--pool", "cpu", "--type", "process", "--with-healthcheck"]
