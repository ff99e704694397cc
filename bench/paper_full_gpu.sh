#!/usr/bin/env bash
# The paper's protocol at full scale on one GPU: both Table I rows at once, each in its own process.
#
#   bash bench/paper_full_gpu.sh DATA_ROOT OUT_DIR [SECONDS]
#
# DATA_ROOT holds MNIST/raw and FashionMNIST/raw (torchvision layout; *.gz files are unpacked in place).
# Each run stops cleanly (SIGTERM: a checkpoint, then exit) after SECONDS (default: no limit), so a
# run cut short still leaves its history.jsonl: the epochs and FLOPs it got through are then a lower
# bound on the protocol's cost. OUT_DIR receives each run's log, odn.json and history.jsonl.
set -u
data=$1 out=$2 seconds=${3:-0}
find "$data" -name '*.gz' -exec gunzip -f {} +
export PYTHONUNBUFFERED=1
limit() { if [ "$seconds" -gt 0 ]; then timeout -s TERM -k 30 "$seconds" "$@"; else "$@"; fi; }
run() {  # name, then odn.py's options
    local name=$1; shift
    mkdir -p "$out/$name"
    limit python3 odn.py --strategy paper --data-dir "$data" --out "/tmp/odn-$name" --force "$@" \
        > "$out/$name/log" 2>&1
    echo "exit $?" >> "$out/$name/log"
    cp /tmp/odn-"$name"/odn.json /tmp/odn-"$name"/history.jsonl "$out/$name/" 2>/dev/null
}
run mnist --arch resnet18 --data mnist --target 0.99 &
run fashion --arch resnet34 --data fashion_mnist --target 0.935 &
wait
for name in mnist fashion; do echo "== $name"; tail -n 25 "$out/$name/log"; done
