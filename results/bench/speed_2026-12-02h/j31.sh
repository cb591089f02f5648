# P3, started by hand (setsid) on the same machine after job30.sh ended: the short run's cache
# check with the layers compiled in regions of 10, its own empty cache
cd /root/job
export PYTHONPATH=/tmp/site:$PWD/src PYTHONUNBUFFERED=1 SCHEMABANK_DATA_DIR=/root/data SCHEMABANK="python3 -m schemabank"
export MERGE=true SHRINK=true COMPILE=true EVAL_BATCH=1319 REGION=10 TORCHINDUCTOR_CACHE_DIR=/root/icG
export EXTRA="--set training.total_steps=60 --set training.stages.stage1_router_pretrain.steps=10 --set training.stages.stage2_schema_train.steps=25 --set training.stages.stage3_joint_finetune.steps=25 --set eval.limit=64"
mkdir -p /root/r30/out/region10
s=$(date +%s); bash scripts/speed_study.sh cache-check /root/r30/out/region10; echo "P3 start=$s end=$(date +%s) rc=$?" >> /root/r30/stamps.txt
echo done > /root/r30/done3
