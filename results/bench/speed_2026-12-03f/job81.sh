#!/bin/bash
# Started during job80.sh (whose K32 failed: torch 2.11's inductor has no
# combo_kernel_max_num_nodes, so its K32L would fail too): waits for job80's W43 to end, stops
# job80 (its K32L and W44), then batch 192 as K8 with cuBLASLt for the matmuls (KL).
while ! grep -q "^W43 start=" /root/r80/stamps.txt 2>/dev/null; do sleep 0.5; done
pkill -f "[j]ob80.sh"; sleep 0.5; pkill -f "[s]peed_study.sh bench-b192"; pkill -f "[i]nductor_patch.py"; sleep 2
source scripts/device_job.sh start /root/r80 "$1"
O=$R/out
SCHEMABANK="python3 -m schemabank" STEP_GRAPH=true PAD=8 SDPA=cudnn COMBO=true TORCH_BLAS_PREFER_CUBLASLT=1 TORCHINDUCTOR_CACHE_DIR=/root/icL step KL bash scripts/speed_study.sh bench-b192 $O/kl
echo done > $R/done
