#!/usr/bin/env bash
# Roll a release out on the Docker host, with no failed request:
#   deploy/deploy.sh <git sha>
# CI runs it over SSH after pushing the images tagged <sha> (.github/workflows/ci.yml, job
# deploy: `ssh host "AIDETECT_DIR=... bash -s -- <sha>" < deploy/deploy.sh`); run it by hand
# with an older sha to roll back. It works in the checkout compose runs from (AIDETECT_DIR,
# default: the repository this file is in) and its .env, where AIDETECT_IMAGES names the
# registry (e.g. ghcr.io/<owner>/<repo>). Needs git, docker (Compose v2) and python3
# (standard library only) on the host.
#
# The first deploy that brings the proxy in (serving used to publish port 8000 itself) is a
# plain `docker compose up -d` in a maintenance window: the proxy cannot bind the port while
# the old replicas hold it.
set -euo pipefail

# Everything runs from main, called on the last line: bash has read the whole script before
# any command runs, so no command can swallow the rest of it from stdin (`bash -s`).
main() {
    local wanted=${1:?usage: deploy/deploy.sh <git sha>}
    [[ $wanted =~ ^[0-9a-f]{7,40}$ ]] || die "not a git sha: $wanted"
    local dir=${AIDETECT_DIR:-}
    if [[ -z $dir ]]; then
        [[ -f ${BASH_SOURCE[0]} ]] || die "set AIDETECT_DIR to the checkout (the script came on stdin)"
        dir=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
    fi
    cd "$dir" || die "no checkout at $dir"
    [[ -f .env ]] || die "no .env in $PWD (cp .env.example .env, then fill it in)"

    git fetch --quiet origin </dev/null
    local sha
    sha=$(git rev-parse --verify --quiet "$wanted^{commit}" </dev/null) || die "unknown commit $wanted"
    echo "deploy: $sha in $PWD"
    git -c advice.detachedHead=false checkout --quiet --detach "$sha" </dev/null
    export AIDETECT_IMAGE_TAG=$sha  # the images CI pushed, tagged with the full sha

    # Models are not in the images: replicas follow the registry alias.
    docker compose pull --quiet prefect-deploy serving worker-cpu </dev/null

    # 1. Flow code: re-register prefect.yaml's deployments with this release.
    docker compose run --rm -T --no-deps prefect-deploy </dev/null

    # 2. Workers: recreated on the new image. A flow run in progress on the old worker ends as
    #    crashed; the schedules and triggers start the next one (retrain takes a stale lease over).
    docker compose up --detach --no-deps worker-cpu </dev/null
    if [[ -n $(docker compose --profile gpu ps --quiet worker-gpu </dev/null) ]]; then
        docker compose --profile gpu pull --quiet worker-gpu </dev/null
        docker compose --profile gpu up --detach --no-deps worker-gpu </dev/null
    fi

    # 3. Serving: one replica at a time (start new, wait healthy and ready, drain and stop old).
    python3 deploy/rollout.py serving </dev/null

    # From here on a plain `docker compose up -d` keeps this release (it reads the tag from .env).
    if grep -q '^AIDETECT_IMAGE_TAG=' .env; then
        sed -i "s/^AIDETECT_IMAGE_TAG=.*/AIDETECT_IMAGE_TAG=$sha/" .env
    else
        echo "AIDETECT_IMAGE_TAG=$sha" >>.env
    fi

    # 4. The proxy and monitoring pick up changed settings (compose recreates only what changed;
    #    a changed deploy/haproxy.cfg alone needs `docker compose restart proxy`).
    docker compose up --detach --no-deps proxy prometheus grafana alertmanager </dev/null

    # 5. Every replica answering through the proxy runs this sha.
    local port
    port=$(sed -n 's/^SERVING_PORT=//p' .env | tail -n 1 | tr -d "\"'")
    port=${port##*:}
    port=${port%%-*}
    python3 - "$sha" "${port:-8000}" <<'PY'
import json, sys, time, urllib.error, urllib.request
sha, port = sys.argv[1], sys.argv[2]
seen, deadline = set(), time.monotonic() + 60
answers = 0
while answers < 40 and time.monotonic() < deadline:  # the proxy may have just been recreated
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=5) as response:
            seen.add(json.load(response)["build"])
            answers += 1
    except (urllib.error.URLError, OSError, ValueError, KeyError):
        pass
    time.sleep(0.25)
if seen != {sha}:
    sys.exit(f"deploy: replicas report builds {sorted(seen) or 'none'} ({answers} answers), expected {sha}")
print(f"deploy: every replica answering runs {sha}")
PY
}

die() {
    echo "deploy: $*" >&2
    exit 2
}

main "$@"
