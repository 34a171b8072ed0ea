#!/usr/bin/env bash
# The store benchmark with its raw baselines, all measured in this run on the same disk:
#   1. a synthetic V4.1-format checkpoint at --scale (default 0.01: ~1.9 GiB of rows)
#   2. sequential write baseline: fio writing the same number of bytes (O_DIRECT, fsync at the end)
#   3. engram ingest of the checkpoint (page cache dropped first when this user may), rate vs the baseline
#      and vs fio reading a checkpoint shard and writing a file at the same time (the ingest's own pattern
#      on a disk that holds both: what the disk moves in total when it reads and writes at once)
#   4. bench_store: random row reads through the store on real-trace batches vs a flat file at the same QD
#   5. fio random 4 KiB reads (io_uring, O_DIRECT) of that flat file at each queue depth, and the ratio
#
#   bench/run_store_bench.sh [--scale 0.01] [--dir /tmp/engram-bench] [--seconds 3] [--configs 1x32,8x4,...]
#                            [--repeats 1] [--reuse]
# --reuse keeps the checkpoint and store a previous run left in --dir and goes straight to the reads.
# With --repeats N, steps 4 and 5 run N times back to back (store, then fio, per round) and the summary gives,
# per queue depth, the median over rounds of the store/fio ratio taken within each round (shared virtual
# disks drift by 20-40% within minutes; a ratio of two numbers from the same round is what holds).
# A config TxK reads with T threads and K keys per MultiGet (queue depth T x K); dQ reads with
# ReadPath::kDirectBlocks at queue depth Q. The fio comparison takes, per queue depth, the best store
# config with that depth.
# Environment: BUILD (default build), FIO (default fio on PATH).
set -euo pipefail
cd "$(dirname "$0")/.."
scale=0.01 dir=/tmp/engram-bench seconds=3 configs=1x32,8x4,2x32,16x4,4x32,16x8,8x32 repeats=1 reuse=0
while [ $# -gt 0 ]; do
  case $1 in
    --scale) scale=$2; shift 2 ;;
    --dir) dir=$2; shift 2 ;;
    --seconds) seconds=$2; shift 2 ;;
    --configs) configs=$2; shift 2 ;;
    --repeats) repeats=$2; shift 2 ;;
    --reuse) reuse=1; shift ;;
    *) echo "unknown option $1" >&2; exit 2 ;;
  esac
done
build=${BUILD:-build}
fio=${FIO:-fio}
E=$build/tools/engram
if [ "$reuse" = 1 ]; then
  [ -d "$dir/store" ] || { echo "--reuse: no store in $dir (run once without --reuse)" >&2; exit 1; }
  echo "== machine: $(nproc) cores, $(uname -r); reusing the store in $dir"
else
  rm -rf "$dir" && mkdir -p "$dir"
  echo "== machine: $(nproc) cores, $(uname -r), disk of $dir: $(df -h "$dir" | awk 'NR==2 {print $1, $2}')"

  $E synth --layout deepseek-v4.1-flash --scale "$scale" --out "$dir/ck" --quiet
  bytes=$(du -cb "$dir"/ck/*.safetensors | tail -1 | cut -f1)
  mib=$((bytes / 1048576))

  echo "== sequential write baseline: fio, ${mib} MiB, 1 MiB blocks, O_DIRECT, QD 8, fsync at end"
  $fio --name=seqw --filename="$dir/seqw.bin" --rw=write --bs=1M --size="${mib}M" --direct=1 --ioengine=io_uring \
    --iodepth=8 --end_fsync=1 --output-format=json >"$dir/fio-seqw.json"
  seqw=$(python3 -c "import json; j=json.load(open('$dir/fio-seqw.json')); print(j['jobs'][0]['write']['bw_bytes']/1048576)")
  rm -f "$dir/seqw.bin"
  printf 'fio sequential write: %.0f MiB/s\n' "$seqw"

  sync
  if echo 3 >/proc/sys/vm/drop_caches 2>/dev/null; then echo "(page cache dropped)"; else echo "(page cache NOT dropped: not permitted)"; fi
  echo "== engram ingest"
  out=$($E ingest --layout "$dir/ck/layout.json" --checkpoint "$dir/ck" --store "$dir/store" --quiet)
  echo "$out"
  rate=$(echo "$out" | sed -n 's/.*(\([0-9.]*\) MiB\/s).*/\1/p')
  python3 -c "print(f'ingest / sequential write = {$rate / $seqw:.2f} (target >= 0.50)')"
  shard=$(ls -S "$dir"/ck/*.safetensors | head -1)
  echo "== read and write at once: fio reading $(basename "$shard") and writing a file, 1 MiB blocks, O_DIRECT, QD 8 each, 5 s"
  $fio --output-format=json --direct=1 --ioengine=io_uring --bs=1M --iodepth=8 --time_based --runtime=5 \
    --name=r --filename="$shard" --rw=read --name=w --filename="$dir/seqw.bin" --rw=write --size="${mib}M" \
    >"$dir/fio-rw.json"
  rm -f "$dir/seqw.bin"
  python3 - "$dir/fio-rw.json" "$rate" <<'PY'
import json, sys
j = json.load(open(sys.argv[1]))["jobs"]
r = j[0]["read"]["bw_bytes"] / 1048576
w = j[1]["write"]["bw_bytes"] / 1048576
rate = float(sys.argv[2])
print(f"fio at once: read {r:.0f} MiB/s + write {w:.0f} MiB/s = {r + w:.0f} MiB/s moved")
print(f"ingest moves {2 * rate:.0f} MiB/s (reads and writes each byte once) = {2 * rate / (r + w):.0%} of that")
PY
fi

qds=$(python3 -c "
cs = '$configs'.split(',')
print(' '.join(sorted({c[1:] if c.startswith('d') else str(eval(c.replace('x', '*'))) for c in cs}, key=int)))")
# Each store config is followed at once by fio at the same queue depth (the virtual disks here drift, and
# some slow down as a run goes on: only a ratio of two back-to-back measurements holds).
for round in $(seq 1 "$repeats"); do
  echo "== round $round of $repeats: each store config (bench_store), then fio 4 KiB random reads of the flat file at its QD"
  for c in ${configs//,/ }; do
    $build/bench/bench_store --store "$dir/store" --flat "$dir/flat.bin" --seconds "$seconds" --configs "$c" \
      --csv "$dir/store-$round-$c.csv" | grep -v '^ \|^(' | grep -v '^batches' || true
    if [[ $c == d* ]]; then qd=${c#d}; else qd=$((${c%x*} * ${c#*x})); fi
    $fio --name=rr --filename="$dir/flat.bin" --rw=randread --bs=4k --direct=1 --ioengine=io_uring --iodepth=$qd \
      --time_based --runtime="$(python3 -c "print(max(1, round($seconds * 1000)))")ms" --output-format=json >"$dir/fio-rr-$round-$c.json"
    python3 - "$dir/store-$round-$c.csv" "$dir/fio-rr-$round-$c.json" "$c" "$qd" <<'PY'
import csv, json, sys
row = next(x for x in csv.DictReader(open(sys.argv[1])) if x["source"].startswith("decode"))
iops = json.load(open(sys.argv[2]))["jobs"][0]["read"]["iops"]
pg = float(row["pages_per_s"])
print(f"   {sys.argv[3]:>6} (QD {sys.argv[4]}): store {pg:.0f} pages/s, fio right after {iops:.0f} IOPS: {pg / iops:.0%}")
PY
  done
done

echo "== summary: store pages/s against fio IOPS at the same queue depth (decode batches; target >= 80%)"
python3 - "$dir" "$repeats" "$qds" "$configs" <<'PY'
import csv, json, statistics, sys
d, repeats, qds, configs = sys.argv[1], int(sys.argv[2]), [int(q) for q in sys.argv[3].split()], sys.argv[4].split(",")
def qd_of(c):
    return int(c[1:]) if c.startswith("d") else eval(c.replace("x", "*"))
print(f"{'QD':<5} {'fio IOPS':>10} {'store pg/s':>12} {'ratio':>6}  per round (best store config at that QD, "
      "each against the fio run right after it)")
for qd in qds:
    per = []
    for r in range(1, repeats + 1):
        best = None
        for c in (c for c in configs if qd_of(c) == qd):
            iops = json.load(open(f"{d}/fio-rr-{r}-{c}.json"))["jobs"][0]["read"]["iops"]
            row = next(x for x in csv.DictReader(open(f"{d}/store-{r}-{c}.csv")) if x["source"].startswith("decode"))
            pg = float(row["pages_per_s"])
            if best is None or pg / iops > best[0]:
                best = (pg / iops, iops, pg, c)
        per.append(best)
    ratio = statistics.median(p[0] for p in per)
    iops = statistics.median(p[1] for p in per)
    pg = statistics.median(p[2] for p in per)
    rounds = ", ".join(f"{p[0]:.0%} {p[3]}" for p in per)
    print(f"{qd:<5} {iops:10.0f} {pg:12.0f} {ratio:6.0%}  {rounds}")
PY
