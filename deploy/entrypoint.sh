#!/bin/sh
# One entry point for the native path (`make serve`) and the container image.
#
#   entrypoint.sh [all|train|serve]
#     all   (default) build the default bundle if $BUNDLE_DIR has none, then serve it
#     train build the default bundle if missing, then exit 0 (the compose `trainer` job)
#     serve serve $BUNDLE_DIR only (the compose `recall` service)
#
# Environment (all optional):
#   RUN_DIR          run directory for `mind train`          (default runs/default)
#   BUNDLE_DIR       bundle directory (or bundle root) for `mind export/serve`
#                    (default $MIND_BUNDLE or bundles/default)
#   HOST, PORT       listen address (default $MIND_HOST or 127.0.0.1, $MIND_PORT or 8000;
#                    the image sets HOST=0.0.0.0)
#   MIND_DATA        training data: a path, "ml-100k" or "synthetic"
#                    (default: ../shared/data/ml-100k/ml-100k.inter when present, else synthetic)
#   MIND_TRAIN_ARGS  extra `mind train` options, replacing the short default budget
#   MIND_SERVE_ARGS  extra `mind serve` options; every other MIND_* variable is a service
#                    setting read by `mind serve` itself (docs/service.md)
#   PYTHON           interpreter that has the package installed (default python)
set -eu

MODE=${1:-all}
DEPLOY_DIR=$(cd "$(dirname "$0")" && pwd)
: "${RUN_DIR:=runs/default}"
: "${BUNDLE_DIR:=${MIND_BUNDLE:-bundles/default}}"
# The service's own settings (MIND_BUNDLE, MIND_HOST, MIND_PORT) are honoured when
# BUNDLE_DIR/HOST/PORT are unset, with the service's defaults.
: "${HOST:=${MIND_HOST:-127.0.0.1}}"
: "${PORT:=${MIND_PORT:-8000}}"
: "${PYTHON:=python}"
export RUN_DIR BUNDLE_DIR

build_bundle() {
    # build_default.py skips whatever already exists (run, bundle), so reruns are cheap.
    "$PYTHON" "$DEPLOY_DIR/build_default.py" build
}

serve_bundle() {
    # Prints a curl example for the bundle, or fails with a message when there is none.
    "$PYTHON" "$DEPLOY_DIR/build_default.py" example --port "$PORT"
    # exec: the server becomes this process, so SIGTERM from make/docker reaches it directly.
    # shellcheck disable=SC2086  # MIND_SERVE_ARGS is a list of options, split on purpose
    exec "$PYTHON" -m mind_recall.cli serve --bundle "$BUNDLE_DIR" --host "$HOST" --port "$PORT" \
        ${MIND_SERVE_ARGS:-}
}

case "$MODE" in
    all) build_bundle; serve_bundle ;;
    train) build_bundle ;;
    serve) serve_bundle ;;
    *) echo "usage: entrypoint.sh [all|train|serve]  (got '$MODE')" >&2; exit 2 ;;
esac
