#!/usr/bin/env bash
# Reproduce the TimeDP benchmark end to end: prepare the bundled data, train, sample, score, report.
#
#   launch/reproduce_timedp.sh [CONFIG] [WORKDIR] [EXTRA BENCHMARK FLAGS...]
#
# CONFIG defaults to configs/timedp_cpu.py of this repository and WORKDIR to runs/<config name>.
# Relative paths are taken from the current directory. Prepared windows go to $DATA_ROOT (default:
# data/). Extra flags go to `python -m timecraft_jax.benchmark`, for example --seeds 0,1,2 or
# --config.training.num_steps=500. Running the script again resumes an interrupted run.
set -euo pipefail

repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
config="${1:-$repo_root/configs/timedp_cpu.py}"
workdir="${2:-runs/$(basename "$config" .py)}"
shift $(( $# < 2 ? $# : 2 ))
data_root="${DATA_ROOT:-data}"
python="${PYTHON:-python}"
export PYTHONPATH="$repo_root${PYTHONPATH:+:$PYTHONPATH}"

if [[ ! -f "$config" ]]; then
    echo "error: config file $config not found; pass a file from $repo_root/configs, e.g. configs/timedp_cpu.py" >&2
    exit 2
fi

seq_len="$("$python" -c 'import sys; from timecraft_jax.config_lib import load_config_file; print(load_config_file(sys.argv[1]).data.seq_len)' "$config")"

echo "== preparing the bundled domains at L=$seq_len in $data_root"
"$python" -m data_prep.prepare --data_root "$data_root" --seq_len "$seq_len"

echo "== running the benchmark ($config) in $workdir"
"$python" -m timecraft_jax.benchmark --config "$config" --workdir "$workdir" \
    --config.data.data_root="$data_root" "$@"

echo "== results (unless --results_dir was given): $workdir/results/timedp_L${seq_len}.md, .csv and timedp_L${seq_len}_*.png"
