#!/usr/bin/env bash
# Roll a release out on the Docker host, with no failed request:
#   deploy/deploy.sh <git sha>
# CI runs it over SSH after pushing the images tagged <sha> (.github/workflows/ci.yml, job
# deploy); run it by hand with an older sha to roll back. It works in the checkout compose runs
# from (AIDETECT_DIR, default: the repository this file is in) and its .env, where
# AIDETECT_IMAGES names the registry (e.g. ghcr.io/<owner>/<repo>). Needs git, docker
# (Compose v2) and python3 (standard library only) on the host.
set -euo pipefail

sha=${1:?usage: deploy/deploy.sh <git sha>}
[[ $sha =~ ^[0-9a-f]{7,40}$ ]] || { echo "deploy: not a git sha: $sha" >&2; exit 2; }
cd "${AIDETECT_DIR:-$(dirname "$0")/..}"
[[ -f .env ]] || { echo "deploy: no .env in $PWD (cp .env.example .env, then fill it in)" >&2; exit 2; }

echo "deploy: $sha in $PWD"
git fetch --quiet origin
git -c advice.detachedHead=false checkout --quiet --detach "$sha"
export AIDETECT_IMAGE_TAG=$sha

# The images CI pushed for this sha; models are not in them (replicas follow the registry alias).
docker compose pull --quiet prefect-deploy serving worker-cpu

# 1. Flow code: re-register prefect.yaml's deployments with this release.
docker compose run --rm --no-deps prefect-deploy

# 2. Workers: recreated on the new image. A flow run in progress on the old worker ends as
#    crashed; the schedules and triggers start the next one (retrain takes a stale lease over).
docker compose up --detach --no-deps worker-cpu
if docker compose --profile gpu ps --quiet worker-gpu | grep -q .; then
    docker compose pull --quiet worker-gpu
    docker compose --profile gpu up --detach --no-deps worker-gpu
fi

# 3. Serving: one replica at a time (start new, wait healthy and ready, drain and stop old).
python3 -m aidetect.rollout serving

# 4. The proxy and monitoring pick up changed settings (compose recreates only what changed;
#    a changed deploy/haproxy.cfg alone needs `docker compose restart proxy`).
docker compose up --detach --no-deps proxy prometheus grafana

# 5. Every replica runs this sha, and serving answers through the proxy.
port=$(sed -n 's/^SERVING_PORT=//p' .env | tail -n 1)
python3 - "$sha" "${port:-8000}" <<'PY'
import json, sys, time, urllib.request
sha, port = sys.argv[1], sys.argv[2]
seen = set()
for _ in range(40):  # the proxy balances over the replicas: ask until each answered
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=5) as response:
        seen.add(json.load(response)["build"])
    time.sleep(0.25)
if seen != {sha}:
    sys.exit(f"deploy: replicas report builds {sorted(seen)}, expected {sha}")
print(f"deploy: every replica answering runs {sha}")
PY
