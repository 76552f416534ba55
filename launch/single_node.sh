#!/usr/bin/env bash
# One machine, all of its GPUs (or its CPU): one process drives every local device.
#   bash launch/single_node.sh configs/default.py runs/digits [--config.key=value ...]
set -euo pipefail
config=${1:?config file}; workdir=${2:?workdir}; shift 2
exec python -m jaxcls.main --config "$config" --workdir "$workdir" "$@"
