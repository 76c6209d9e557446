# syntax=docker/dockerfile:1
# The HTTP service: FastAPI + onnxruntime, no TensorFlow (the `serve` extra of pyproject.toml).
# No model inside: every replica follows the registry alias (AIDETECT_MODEL_ALIAS, default
# production) in the object store and caches the last good model under AIDETECT_HOME.
# /var/lib/aidetect/replicas: the mount point of the volume shared by replicas (owned by the user,
# so that a fresh named volume is too).
#   docker build -f docker/serving.Dockerfile -t aidetect-serving .
FROM python:3.11.14-slim-bookworm

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    AIDETECT_HOME=/var/lib/aidetect

RUN groupadd --system --gid 10001 aidetect \
    && useradd --system --uid 10001 --gid aidetect --home-dir /var/lib/aidetect --create-home aidetect \
    && install -d -o aidetect -g aidetect /var/lib/aidetect/replicas

WORKDIR /app
# The locked third-party dependencies first, in a layer of their own: it is rebuilt only when
# pyproject.toml or requirements.lock change, never for a commit that changes only code.
COPY pyproject.toml requirements.lock ./
COPY deploy/requirements.py ./deploy/
RUN python deploy/requirements.py serve > /tmp/requirements.txt \
    && pip install --no-cache-dir -c requirements.lock -r /tmp/requirements.txt \
    && rm /tmp/requirements.txt
# Then the code, and the package itself on top (--no-deps: everything it needs is above).
COPY README.md ./
COPY aidetect ./aidetect
COPY cli ./cli
COPY storage ./storage
COPY model ./model
COPY serving ./serving
COPY feedback ./feedback
COPY flows ./flows
RUN pip install --no-cache-dir -c requirements.lock --no-deps . \
    && python -c "import serving.app, onnxruntime, prometheus_client" \
    && ! python -c "import tensorflow" 2>/dev/null

# The git sha the image was built from (CI passes it); late, so a new sha reuses the layers above.
ARG AIDETECT_BUILD=dev
ENV AIDETECT_BUILD=${AIDETECT_BUILD}

USER 10001:10001
EXPOSE 8000
HEALTHCHECK --interval=15s --timeout=5s --start-period=30s --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/healthz', timeout=4)"]
CMD ["aidetect", "serve", "--host", "0.0.0.0", "--port", "8000"]
