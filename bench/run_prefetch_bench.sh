#!/usr/bin/env bash
# The prefetcher benchmark with its raw baselines, all in this run on one disk:
#   1. a synthetic V4.1-format checkpoint at --scale and its store (skipped with --reuse DIR/store present)
#   2. bench_prefetch: resident load vs a sequential O_DIRECT read of the table files; resident steps vs a
#      plain memcpy gather of the same rows with the same threads; disk-backed steps through a host cache
#   3. fio 4 KiB random reads (io_uring, O_DIRECT) of the store's largest table file at the store's queue
#      depth (read threads x 32 keys), and the ratio of the disk-backed steps' disk reads/s to it; for shapes
#      whose reads per step cannot fill that queue, also fio in lockstep with the step (its reads submitted
#      together, all awaited, repeated) and the ratio to that
#
#   bench/run_prefetch_bench.sh [--scale 0.01] [--dir /tmp/engram-prefetch-bench] [--seconds 2] [--threads 4]
#                               [--read-threads 8] [--host-cache BYTES] [--read-path multiget|direct]
#                               [--modes resident,disk] [--reuse]
# With --read-path direct the fio queue depth is the direct path's (128).
# Environment: BUILD (default build), FIO (default fio on PATH).
set -euo pipefail
cd "$(dirname "$0")/.."
scale=0.01 dir=/tmp/engram-prefetch-bench seconds=2 threads=4 read_threads=8 host_cache=$((64 << 20)) reuse=0 read_path=multiget modes=resident,disk
while [ $# -gt 0 ]; do
  case $1 in
    --scale) scale=$2; shift 2 ;;
    --dir) dir=$2; shift 2 ;;
    --seconds) seconds=$2; shift 2 ;;
    --threads) threads=$2; shift 2 ;;
    --read-threads) read_threads=$2; shift 2 ;;
    --host-cache) host_cache=$2; shift 2 ;;
    --read-path) read_path=$2; shift 2 ;;
    --modes) modes=$2; shift 2 ;;
    --reuse) reuse=1; shift ;;
    *) echo "unknown option $1" >&2; exit 2 ;;
  esac
done
build=${BUILD:-build}
fio=${FIO:-fio}
E=$build/tools/engram
echo "== machine: $(nproc) cores, $(uname -r), $(free -g | awk 'NR==2 {print $2}') GiB RAM"
if [ "$reuse" = 1 ] && [ -d "$dir/store" ]; then
  echo "(reusing $dir/store)"
else
  rm -rf "$dir" && mkdir -p "$dir"
  $E synth --layout deepseek-v4.1-flash --scale "$scale" --out "$dir/ck" --quiet
  $E ingest --layout "$dir/ck/layout.json" --checkpoint "$dir/ck" --store "$dir/store" --quiet
  rm -rf "$dir/ck"
fi
sync
echo 3 >/proc/sys/vm/drop_caches 2>/dev/null && echo "(page cache dropped)" || echo "(page cache NOT dropped: not permitted)"

echo "== bench_prefetch"
$build/bench/bench_prefetch --store "$dir/store" --threads "$threads" --read-threads "$read_threads" \
  --seconds "$seconds" --host-cache "$host_cache" --read-path "$read_path" --modes "$modes" --csv "$dir/prefetch.csv"

qd=$((read_threads * 32))
[ "$read_path" = direct ] && qd=128
sst=$(ls -S "$dir"/store/*.sst | head -1)
echo "== fio 4 KiB random reads of $sst (io_uring, O_DIRECT, QD $qd)"
$fio --name=rr --filename="$sst" --rw=randread --bs=4k --direct=1 --ioengine=io_uring --iodepth=$qd \
  --time_based --runtime="$(python3 -c "print(max(1, round($seconds * 1000)))")ms" --output-format=json >"$dir/fio-rr.json"
# A step whose disk reads cannot fill the queue (decode B=1: ~40 reads) is a round trip of the disk per
# layer (layers are served in deadline order). fio "in lockstep" reads 4 KiB blocks the same way: submits N
# at once, waits for all of them, and repeats (iodepth = iodepth_batch_submit = iodepth_batch_complete_min),
# with N = the step's reads (one round trip a step) and N = one layer's share of them (one a layer).
python3 - "$dir" "$fio" "$sst" "$qd" "$seconds" <<'PY'
import csv, json, math, subprocess, sys
d, fio, sst, qd, seconds = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]), sys.argv[5]
iops = json.load(open(f"{d}/fio-rr.json"))["jobs"][0]["read"]["iops"]
print(f"fio: {iops:.0f} IOPS")
print(f"{'disk-backed shape':<18} {'disk rd/s':>10} {'/ fio':>7} {'distinct rows/s':>16} {'/ fio':>7} "
      f"{'reads/step':>11} {'lockstep/step':>14} {'rd / it':>8} {'lockstep/layer':>15} {'rd / it':>8}  "
      "(target: disk rows/s >= 75% of fio)")
for r in csv.DictReader(open(f"{d}/prefetch.csv")):
    if r["mode"] != "disk":
        continue
    rd, dr, per = float(r["reads_per_s"]), float(r["distinct_per_s"]), float(r["reads_per_step"])
    lock = ""
    if 0 < per < qd:
        for n in (max(1, math.ceil(per)), max(1, math.ceil(per / int(r["layers"])))):
            out = subprocess.run([fio, "--name=lockstep", f"--filename={sst}", "--rw=randread", "--bs=4k",
                                  "--direct=1", "--ioengine=io_uring", f"--iodepth={n}", f"--iodepth_batch_submit={n}",
                                  f"--iodepth_batch_complete_min={n}", "--time_based",
                                  f"--runtime={max(1, round(float(seconds) * 1000))}ms", "--output-format=json"],
                                 check=True, capture_output=True, text=True).stdout
            li = json.loads(out)["jobs"][0]["read"]["iops"]
            lock += f" {li:14.0f} {rd / li:8.0%}"
    print(f"{r['shape']:<18} {rd:10.0f} {rd / iops:6.0%} {dr:16.0f} {dr / iops:6.0%} {per:11.1f}{lock}")
PY
