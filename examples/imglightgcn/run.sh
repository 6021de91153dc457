#!/usr/bin/env bash
# The worked example of docs/extending.md, end to end on a tiny synthetic set (about a minute on one thread):
# a model in its own file → check-model → benchmark against BPR and LightGCN with significance tests →
# tune → train the best setting → recommend → serve, one query, stop. CI runs it (tests/test_examples.py).
#
#   examples/imglightgcn/run.sh OUT        # OUT: a new folder for the data, reports and runs
set -euo pipefail
[ $# -eq 1 ] || { echo "usage: $0 OUT" >&2; exit 2; }
mkdir -p "$1"
OUT=$(cd "$1" && pwd)
cd "$(dirname "$0")/../.."   # the repository root: the spec below is the path a user types from there
MODEL=examples/imglightgcn/imglightgcn.py:ImgLightGCN
DATA=$OUT/data
# every training below: 20 epochs at most and a larger step than the default — a demonstration, not a result

echo "== data, and the model's own settings"
modalrec data synth "$DATA" --users 300 --items 250 --modalities image:32,text:16 --seed 7
modalrec models --details "$MODEL"

echo "== the contract checks every built-in model passes"
modalrec check-model "$MODEL" | tee "$OUT/check-model.txt"

echo "== benchmark against BPR and LightGCN, 2 seeds, paired t-tests"
modalrec benchmark --models "BPR,LightGCN,$MODEL" --data "$DATA" --seeds 1,2 --epochs 20 --set learning_rate=0.01 \
  --out "$OUT/benchmark"
echo "== the same command again: every run is reused (the model's source is unchanged)"
modalrec benchmark --models "BPR,LightGCN,$MODEL" --data "$DATA" --seeds 1,2 --epochs 20 --set learning_rate=0.01 \
  --out "$OUT/benchmark" | tee "$OUT/benchmark-again.txt"

echo "== cold items: 20 % of the items never seen in training, scored from their image features"
modalrec benchmark --protocol cold-items --models "LightGCN,$MODEL" --data "$DATA" --seeds 1 --epochs 20 \
  --set learning_rate=0.01 --out "$OUT/cold"

echo "== its own key in a sweep, and tune over its search_ranges"
modalrec sweep "$MODEL" --data "$DATA" --param proj_scale=0.0,0.5,1.0 --epochs 20 --set learning_rate=0.01 \
  --out "$OUT/sweep"
modalrec tune "$MODEL" --data "$DATA" --trials 3 --epochs 20 --set learning_rate=0.01 --out "$OUT/tune"

echo "== train the best setting, ask it for a top-5"
modalrec train --model "$MODEL" --data "$DATA" --config "$OUT/tune/best_config.yaml" --out "$OUT/run" -q
modalrec recommend "$OUT/run" --user 0 -k 5 > "$OUT/recommend.json"

echo "== the Python API"
python examples/imglightgcn/python_api.py "$DATA" "$OUT/api"

echo "== serve the run on a free local port, one query, stop"
PORT=$(python -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
modalrec serve "$OUT/run" --host 127.0.0.1 --port "$PORT" > "$OUT/serve.log" 2>&1 &
SERVER=$!
trap 'kill "$SERVER" 2>/dev/null || true' EXIT
get() {  # print the body of GET URL (Python's urllib: no curl needed)
  python -c 'import sys, urllib.request as u; print(u.urlopen(sys.argv[1], timeout=10).read().decode())' "$1"
}
for _ in $(seq 120); do   # up to a minute for the server to load the run
  get "http://127.0.0.1:$PORT/health" > /dev/null 2>&1 && break
  kill -0 "$SERVER" 2>/dev/null || { cat "$OUT/serve.log" >&2; exit 1; }
  sleep 0.5
done
get "http://127.0.0.1:$PORT/users/0/recommendations?k=5" | tee "$OUT/served.json"
kill "$SERVER" && wait "$SERVER" || true
echo "done: $OUT"
