#!/usr/bin/env bash
# Every run's params carry the sizes MAD compares at (info.num_params,
# info.mixer_params_per_layer, info.mixer_state_per_layer), checked against
# the layer formulas for softmax attention and Mamba.
set -u
P=${PLAB:-./plab}
d=$(mktemp -d); trap 'rm -rf "$d"' EXIT
cat > "$d/s.yaml" <<'YAML'
name: sizes
method: grid
base: {task.vocab_size: 8, task.seq_len: 8, task.num_train: 16, task.num_test: 8, model.d_model: 16,
       model.heads: 2, epochs: 1, progress: false}
parameters:
  model.mixer: {values: [softmax, mamba]}
YAML
"$P" sweep "$d/s.yaml" --db "$d/r.db" > "$d/log" 2>&1 || { echo "FAIL: sweep"; cat "$d/log"; exit 1; }
got=$("$P" query --db "$d/r.db" --format csv "SELECT m.value || ':' || p.key || '=' || p.value FROM params p
      JOIN params m ON m.run_id = p.run_id AND m.key = 'model.mixer'
      WHERE p.key LIKE 'info.mixer_%' ORDER BY 1" | tail -n +2 | tr '\n' ' ')
# softmax: 4 d^2 weights + 4 d biases = 1088, no fixed state. mamba (d 16, d_inner 32, N 4, dt_rank 1,
# conv 4): in_proj 1024 + conv 128+32 + x_proj 32*9 + dt_proj 32+32 + A_log 128 + D 32 + out_proj 512
# = 2208; state d_inner*N = 128
want="mamba:info.mixer_params_per_layer=2208 mamba:info.mixer_state_per_layer=128 softmax:info.mixer_params_per_layer=1088 softmax:info.mixer_state_per_layer=0 "
if [ "$got" != "$want" ]; then echo "FAIL: got '$got'"; echo "     want '$want'"; exit 1; fi
n=$("$P" query --db "$d/r.db" --format csv "SELECT count(*) FROM params WHERE key = 'info.num_params' AND CAST(value AS INTEGER) > 0" | tail -1)
[ "$n" = "2" ] || { echo "FAIL: info.num_params rows: $n"; exit 1; }
echo "e2e_sizes: ok"
