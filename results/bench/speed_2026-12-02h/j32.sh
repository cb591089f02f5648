# R4, started by hand (setsid) right after P3: the whole run with regions of 10, warm from P3's
# cache (P3's short runs had compiled the regions), info-level cache logs
cd /root/job
export PYTHONPATH=/tmp/site:$PWD/src PYTHONUNBUFFERED=1 SCHEMABANK_DATA_DIR=/root/data SCHEMABANK="python3 -m schemabank"
export MERGE=true SHRINK=true COMPILE=true EVAL_BATCH=1319 REGION=10 TORCHINDUCTOR_CACHE_DIR=/root/icG
export TORCH_LOGS=torch._inductor.codecache,torch._functorch._aot_autograd.autograd_cache
mkdir -p /root/r32
s=$(date +%s); bash scripts/speed_study.sh run-warm /root/r32; echo "R4 start=$s end=$(date +%s) rc=$?" >> /root/r32/stamps.txt
echo done > /root/r32/done
