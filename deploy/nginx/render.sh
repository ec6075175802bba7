#!/bin/sh
# Renders deploy/nginx/qmd-triton.conf.template from the environment (see the template's header) to stdout.
# Refuses, with one line on stderr and exit status 1, when QMD_API_TOKEN is unset or unusable: nginx is then
# never started without the token (compose, the Kubernetes init container and the systemd unit all run this
# before nginx).
#   usage: QMD_API_TOKEN=... sh render.sh [TEMPLATE] > /etc/nginx/conf.d/qmd-triton.conf
set -eu
template=${1:-$(dirname "$0")/qmd-triton.conf.template}
token=${QMD_API_TOKEN:-}
if [ -z "$token" ]; then
    echo "render.sh: QMD_API_TOKEN is not set; refusing to start nginx without a token (make one with: openssl rand -hex 32)" >&2
    exit 1
fi
case $token in
    *[!A-Za-z0-9._~+/=-]*)
        echo "render.sh: QMD_API_TOKEN may hold only letters, digits and . _ ~ + / = - (openssl rand -hex 32)" >&2
        exit 1 ;;
esac
if [ "${#token}" -lt 16 ]; then
    echo "render.sh: QMD_API_TOKEN is ${#token} characters; use at least 16 (openssl rand -hex 32)" >&2
    exit 1
fi
exec sed \
    -e "s|@QMD_API_TOKEN@|$token|g" \
    -e "s|@QMD_TRITON_HTTP@|${QMD_TRITON_HTTP:-127.0.0.1:8000}|g" \
    -e "s|@QMD_TRITON_GRPC@|${QMD_TRITON_GRPC:-127.0.0.1:8001}|g" \
    -e "s|@QMD_GATEWAY@|${QMD_GATEWAY:-127.0.0.1:18765}|g" \
    -e "s|@QMD_MCP@|${QMD_MCP:-127.0.0.1:8181}|g" \
    -e "s|@QMD_NGINX_LISTEN@|${QMD_NGINX_LISTEN:-443}|g" \
    -e "s|@QMD_SERVER_NAME@|${QMD_SERVER_NAME:-_}|g" \
    -e "s|@QMD_TLS_CERT@|${QMD_TLS_CERT:-/etc/ssl/qmd/fullchain.pem}|g" \
    -e "s|@QMD_TLS_KEY@|${QMD_TLS_KEY:-/etc/ssl/qmd/privkey.pem}|g" \
    "$template"
