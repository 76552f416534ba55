#!/usr/bin/env bash
# Cloud TPU VM or queued resource: create it, install jaxcls on every worker, train into gs://, delete it.
# A shim for launch/tpu_vm.py (see its --help); for example:
#   bash launch/tpu_vm.sh --name my-tpu --zone us-central2-b --accelerator-type v4-32 \
#     --version tpu-ubuntu2204-base --spot --config configs/my_config.py --workdir gs://my-bucket/runs/a --dry-run
set -euo pipefail
exec "${PYTHON:-python3}" "$(dirname "$0")/tpu_vm.py" "$@"
