#!/bin/bash
# usage: run.sh SRC_ROOT CACHE OUT  -- a short CPU run of sb_b32_split50 through the CLI, compiled layers, cache logging
ROOT=$1; CACHE=$2; OUT=$3
cd $ROOT
export SCHEMABANK_DATA_DIR=/work/shared/data HF_HUB_OFFLINE=1 TORCHINDUCTOR_CACHE_DIR=$CACHE PYTHONPATH=${EXTRA_PATH:+$EXTRA_PATH:}$ROOT/src
export TORCH_LOGS=torch._inductor.codecache,torch._functorch._aot_autograd.autograd_cache
s=$(date +%s)
/work/main/.venv/bin/python -m schemabank train --config configs/gsm8k/sb_b32_split50.yaml \
  --set training.compile=true --set training.compile_scope=layers ${REGION:+--set training.compile_region_layers=$REGION} \
  --set training.batch_size=2 --set training.total_steps=12 \
  --set training.stages.stage1_router_pretrain.steps=4 --set training.stages.stage2_schema_train.steps=4 \
  --set training.stages.stage3_joint_finetune.steps=4 --set training.checkpoint_every=0 --set training.warmup_steps=0 \
  --set eval.limit=4 --set eval.max_new_tokens=8 --set eval.ppl_max_tokens=512 \
  --output-dir $OUT --overwrite > $OUT.log 2>&1
echo "rc=$? $(( $(date +%s) - s )) s" >> $OUT.log
