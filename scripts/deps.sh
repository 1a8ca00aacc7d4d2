#!/usr/bin/env bash
# Installs what the test suite needs and is not a Cargo dependency:
#   - the tansu Kafka-protocol broker (crates.io), for the end-to-end tests;
#   - the Prometheus server and promtool (Debian's prometheus package), to check the exported
#     metrics, the alert rules and the dashboards' queries;
#   - Alertmanager (Debian's prometheus-alertmanager package), the target of the alert push test;
#   - a Python virtualenv with kafka-python, the foreign Kafka client of the end-to-end tests, and
#     opentelemetry-proto, the official OTLP classes the protobuf decoder is checked against, and
#     kubernetes-validate, which checks the Kubernetes manifests against the API schemas.
# Each step is skipped when its result is already present, so repeated runs are cheap.
set -euo pipefail
cd "$(dirname "$0")/.."

TANSU_VERSION=0.6.0

log() { printf 'deps: %s\n' "$*" >&2; }

if ! command -v cargo >/dev/null; then
  log "cargo is required"; exit 1
fi

if command -v tansu >/dev/null && tansu --version 2>/dev/null | grep -q "$TANSU_VERSION"; then
  log "tansu $TANSU_VERSION present"
else
  log "installing tansu $TANSU_VERSION (about 12 minutes on 2 cores)"
  cargo install tansu --version "$TANSU_VERSION" --locked --features dynostore,libsql
fi

if command -v promtool >/dev/null && command -v prometheus >/dev/null; then
  log "prometheus and promtool present"
else
  log "installing prometheus and promtool (Debian package prometheus)"
  export DEBIAN_FRONTEND=noninteractive
  SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO=sudo
  $SUDO apt-get update -qq
  $SUDO apt-get install -y -qq --no-install-recommends prometheus >/dev/null
fi

if command -v prometheus-alertmanager >/dev/null; then
  log "prometheus-alertmanager present"
else
  log "installing Alertmanager (Debian package prometheus-alertmanager)"
  export DEBIAN_FRONTEND=noninteractive
  SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO=sudo
  $SUDO apt-get update -qq
  $SUDO apt-get install -y -qq --no-install-recommends prometheus-alertmanager >/dev/null
fi

VENV=.venv
if [ -x "$VENV/bin/python" ] && "$VENV/bin/python" -c 'import kafka, opentelemetry.proto' 2>/dev/null; then
  log "python venv with kafka-python and opentelemetry-proto present"
else
  log "creating $VENV with kafka-python and opentelemetry-proto"
  [ -x "$VENV/bin/python" ] || python3 -m venv "$VENV"
  "$VENV/bin/pip" install --quiet --disable-pip-version-check 'kafka-python==2.2.*' 'opentelemetry-proto==1.*'
fi

if "$VENV/bin/python" -c 'import kubernetes_validate' 2>/dev/null; then
  log "kubernetes-validate present"
else
  log "installing kubernetes-validate into $VENV (Kubernetes schemas for the manifest test)"
  "$VENV/bin/pip" install --quiet --disable-pip-version-check 'kubernetes-validate==1.37.*'
fi
