#!/usr/bin/env bash
# Cloud TPU VM slice: run the same command on every worker at once.
#   bash launch/tpu_vm.sh TPU_NAME ZONE configs/my_config.py /mnt/shared/runs/my_run [--config.key=value ...]
# Assumes jaxcls is checked out in ~/jaxcls on every worker with `pip install -e ".[tf]"` and `jax[tpu]`
# installed, and that the workdir is a filesystem all workers share.
set -euo pipefail
tpu=${1:?TPU name}; zone=${2:?zone}; config=${3:?config file}; workdir=${4:?shared workdir}; shift 4
gcloud compute tpus tpu-vm ssh "$tpu" --zone "$zone" --worker=all --command \
  "cd ~/jaxcls && python -m jaxcls.main --config $config --workdir $workdir --distributed=on $*"
