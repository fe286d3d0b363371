#!/usr/bin/env bash
# Steps of a GPU session on the lent machine (see docs/GPU.md). Binaries are built on a
# development machine and carried in .carry/bin; the real model travels in 62 MiB pieces
# (.carry/m0 .. m7). Everything lands in /tmp/w on the GPU machine; logs go to $OUT.
#   bash scripts/gpu/session.sh stage        # move carried binaries + golden files to /tmp/w
#   bash scripts/gpu/session.sh piece N      # move model piece N to /tmp/w/parts
#   bash scripts/gpu/session.sh assemble     # join the pieces, check the sha256
#   bash scripts/gpu/session.sh spiece N     # move SmolLM2 piece N (.carry/sN, N = 0, 1)
#   bash scripts/gpu/session.sh sassemble    # join SmolLM2, check its sha256
#   bash scripts/gpu/session.sh smollm2      # SmolLM2 (llama) on the CUDA backend vs HF
#   bash scripts/gpu/session.sh kernels      # kernel tests (cuda-sys smoke + worker-core cuda_kernels)
#   bash scripts/gpu/session.sh model        # whole-model CUDA tests on the real model
#   bash scripts/gpu/session.sh sanitize     # compute-sanitizer memcheck on a short generation
#   bash scripts/gpu/session.sh serve        # the worker on cuda:0, a greedy request over HTTP
#   bash scripts/gpu/session.sh parity       # checkpoint log of the golden prompts on cuda:0 -> $OUT
#   bash scripts/gpu/session.sh llama-build  # start building llama-bench from .carry/llama (background)
#   bash scripts/gpu/session.sh llama-bench  # wait for it; llama-bench beside worker-http bench
#   bash scripts/gpu/session.sh bench ARGS   # worker-http bench --device cuda:0 ARGS
set -uo pipefail
W=/tmp/w
OUT=${OUT:-/tmp/out}
mkdir -p "$W" "$OUT"
export LD_LIBRARY_PATH=/usr/local/cuda/lib64:${LD_LIBRARY_PATH:-}
export WORKER_ORCD_CACHE=$W/cache
export WORKER_ORCD_MODEL=$W/cache/models/qwen2.5-coder-0.5b-instruct-q4_k_m.gguf
export WORKER_ORCD_GOLDEN=$W/golden
SHA=1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32
SMOL=$W/cache/models/SmolLM2-135M-Instruct.Q4_1.gguf
SMOL_SHA=b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53

log() { tee -a "$OUT/$1.log"; }

case "${1:-}" in
stage)
  rm -rf "$W/bin" "$W/golden"
  mkdir -p "$W/bin"
  cp -r .carry/bin/* "$W/bin/" && chmod +x "$W"/bin/*
  cp -r .carry/golden "$W/golden"
  nvidia-smi --query-gpu=name,memory.total,memory.used,driver_version,clocks.sm --format=csv | log stage
  ls -la "$W/bin" | log stage ;;
piece)
  mkdir -p "$W/parts" && mv ".carry/m$2/q.$2" "$W/parts/" && ls -la "$W/parts" ;;
assemble)
  mkdir -p "$W/cache/models"
  cat "$W"/parts/q.* > "$WORKER_ORCD_MODEL" && rm -rf "$W/parts"
  echo "$SHA  $WORKER_ORCD_MODEL" | sha256sum -c - | log assemble ;;
spiece)
  mkdir -p "$W/sparts" && mv ".carry/s$2/s.$2" "$W/sparts/" && ls -la "$W/sparts" ;;
sassemble)
  mkdir -p "$W/cache/models"
  cat "$W"/sparts/s.* > "$SMOL" && rm -rf "$W/sparts"
  echo "$SMOL_SHA  $SMOL" | sha256sum -c - | log assemble ;;
smollm2)
  "$W/bin/cuda_smollm2" --test-threads=1 --nocapture 2>&1 | log smollm2 ;;
kernels)
  "$W/bin/smoke" --test-threads=1 2>&1 | log kernels
  "$W/bin/cuda_kernels" --test-threads=1 --nocapture 2>&1 | log kernels ;;
model)
  "$W/bin/cuda_model" --test-threads=1 --nocapture 2>&1 | log model ;;
sanitize)
  compute-sanitizer --tool memcheck --leak-check full --error-exitcode 3 \
    "$W/bin/worker-http" bench --device cuda:0 -p 32 -n 8 -r 1 2>&1 | tail -40 | log sanitize ;;
serve)
  "$W/bin/worker-http" --device cuda:0 --port 18080 > "$OUT/serve.log" 2>&1 &
  pid=$!
  for _ in $(seq 1 100); do curl -sf localhost:18080/health > /dev/null && break; sleep 0.1; done
  curl -s localhost:18080/health | log serve; echo | log serve
  curl -sN localhost:18080/execute -H 'content-type: application/json' \
    -d '{"job_id":"gpu-1","prompt":"The capital of France is","max_tokens":12,"temperature":0}' | log serve
  curl -s localhost:18080/v1/chat/completions -H 'content-type: application/json' \
    -d '{"messages":[{"role":"user","content":"Write a haiku about GPU memory."}],"max_tokens":40,"temperature":0}' | log serve
  echo | log serve
  kill -TERM $pid; wait $pid; echo "serve exit: $?" | log serve ;;
parity)
  ORCH_LOG_FILE=$OUT/cuda_parity.jsonl "$W/bin/worker-http" --device cuda:0 --port 18081 > "$OUT/parity_serve.log" 2>&1 &
  pid=$!
  for _ in $(seq 1 100); do curl -sf localhost:18081/health > /dev/null && break; sleep 0.1; done
  python3 scripts/gpu/parity_requests.py "$W/golden" 18081 | log parity
  kill -TERM $pid; wait $pid; echo "serve exit: $?" | log parity
  wc -l "$OUT/cuda_parity.jsonl" | log parity ;;
llama-build)
  # llama.cpp source (trimmed, never committed) travels as .carry/llama/llama.tgz.
  rm -rf "$W/llama" && mkdir -p "$W/llama" && tar xzf .carry/llama/llama.tgz -C "$W/llama"
  cd "$W/llama/llama.cpp" && setsid nohup bash -c 'cmake -B build -G Ninja -DGGML_CUDA=ON \
    -DCMAKE_CUDA_ARCHITECTURES=90 -DLLAMA_BUILD_SERVER=OFF -DLLAMA_BUILD_TESTS=OFF \
    -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_CURL=OFF -DCMAKE_BUILD_TYPE=Release > build.log 2>&1 \
    && cmake --build build --target llama-bench -j 16 >> build.log 2>&1; echo "done $?" >> build.log' \
    > /dev/null 2>&1 < /dev/null &
  echo started ;;
llama-bench)
  B=$W/llama/llama.cpp
  for _ in $(seq 1 240); do grep -q "^done" "$B/build.log" 2>/dev/null && break; sleep 2; done
  tail -3 "$B/build.log" | log llama
  "$B/build/bin/llama-bench" -m "$WORKER_ORCD_MODEL" -ngl 99 -fa 1 -p 512 -n 128 -r 3 2>&1 | log llama
  "$B/build/bin/llama-bench" -m "$WORKER_ORCD_MODEL" -ngl 99 -fa 1 -p 0 -n 128 -d 4096,16384 -r 3 2>&1 | log llama
  "$W/bin/worker-http" bench --device cuda:0 -p 512 -n 128 -d 0,4096,16384 -r 3 --json "$OUT/ours_same_machine.json" 2>&1 | log llama ;;
bench)
  shift
  "$W/bin/worker-http" bench --device cuda:0 "$@" 2>&1 | log bench ;;
*) sed -n 2,18p "$0"; exit 2 ;;
esac
