#!/bin/sh
# The alertmanager container's entrypoint (docker-compose.yml): writes the config with the
# webhook URL from the environment, then runs its command (alertmanager).
#
#   AIDETECT_ALERT_WEBHOOK_URL   http(s) URL alerts are posted to; unset or empty = no webhook
#                                (alerts only in Alertmanager's UI)
#   ALERTMANAGER_TEMPLATE        the config as committed (monitoring/alertmanager.yml)
#   ALERTMANAGER_CONFIG          where the config alertmanager reads is written
#
# Alertmanager does not expand environment variables in its config (and the url_file
# option is newer than the amtool that checks this config), hence this step.
set -eu

template=${ALERTMANAGER_TEMPLATE:-/etc/alertmanager/alertmanager.yml}
config=${ALERTMANAGER_CONFIG:-/alertmanager/alertmanager.yml}
placeholder='https://aidetect-alert-webhook-url.invalid/'
url=${AIDETECT_ALERT_WEBHOOK_URL:-}

fail() {
  echo "alertmanager-entrypoint: $*" >&2
  exit 2
}

[ "$#" -gt 0 ] || fail "usage: alertmanager-entrypoint.sh <command> [args...] (e.g. /bin/alertmanager ...)"
[ -r "$template" ] || fail "cannot read the config template $template"

drop=0
if [ -z "$url" ]; then
  drop=1
  echo "alertmanager-entrypoint: AIDETECT_ALERT_WEBHOOK_URL is not set: alerts are only shown in Alertmanager's UI, never sent" >&2
else
  case "$url" in
    *[[:space:]]* | *[[:cntrl:]]*) fail "AIDETECT_ALERT_WEBHOOK_URL contains whitespace or control characters" ;;
    http://?* | https://?*) ;;
    *) fail "AIDETECT_ALERT_WEBHOOK_URL must be an http:// or https:// URL" ;;
  esac
  grep -qF "$placeholder" "$template" || fail "$template has no webhook URL placeholder ($placeholder)"
fi

# The URL goes in a single-quoted YAML scalar: a ' in it is written twice. ENVIRON, not -v,
# so awk does not read backslashes in it as escapes; index(), not a regex, finds the placeholder.
ALERT_URL=$url awk -v drop="$drop" -v placeholder="$placeholder" -v q="'" '
  BEGIN { url = ENVIRON["ALERT_URL"]; gsub(q, q q, url) }
  index($0, "# >>> webhook") { inside = 1 }
  inside && drop == 1 { if (index($0, "# <<< webhook")) inside = 0; next }
  index($0, "# <<< webhook") { inside = 0 }
  {
    at = index($0, placeholder)
    if (at) $0 = substr($0, 1, at - 1) url substr($0, at + length(placeholder))
    print
  }
' "$template" >"$config.tmp"
mv "$config.tmp" "$config"

exec "$@"
