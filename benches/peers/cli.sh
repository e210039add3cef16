#!/usr/bin/env bash
# Command jobs through the CLI, side by side: N submits of `true`, P at a
# time (one CLI call each), until every job has finished; opsd against
# task-spooler (installed if missing) and pueue (when `pueue` and `pueued`
# are on PATH: `cargo install pueue`; a private pueued is started with its
# own config and state under the bench's temporary folder). Pairs are
# interleaved; the table gives each run and the median, and the machine's
# busy CPU per job (all processes: CLI, daemon, the jobs, xargs), which
# is steadier than the rate on a shared machine, and the part of it the
# opsd daemon spent itself (its own threads, not the jobs it reaped).
# A third column runs `floor.c` beside this script (built with gcc): the
# least a queue that keeps every acknowledged submit, start and end on
# disk must do (one thread, a journal, one fdatasync per loop round), to
# tell what durability itself costs on this machine from what opsd adds.
#
#   cargo build --release && benches/peers/cli.sh [N] [P,P,...] [PAIRS]
#   benches/peers/cli.sh 200 1,4,16 3
set -euo pipefail
N=${1:-200}
PARS=${2:-4}
PAIRS=${3:-3}
here="$(cd "$(dirname "$0")" && pwd)"
OPSD=${OPSD:-$here/../../target/release/opsd}
[ -x "$OPSD" ] || { echo "build opsd first: cargo build --release" >&2; exit 1; }
if ! command -v tsp >/dev/null 2>&1; then
  apt-get install -y -qq task-spooler >/dev/null 2>&1 || { apt-get update -qq && apt-get install -y -qq task-spooler; }
fi
work=$(mktemp -d "${TMPDIR:-/tmp}/opsd-cli-bench.XXXXXX")
PUEUE=()
if command -v pueue >/dev/null 2>&1 && command -v pueued >/dev/null 2>&1; then
  mkdir -p "$work/pueue/run" "$work/pueue/data"
  printf 'shared:\n  pueue_directory: %s\n  runtime_directory: %s\n  use_unix_socket: true\n' \
    "$work/pueue/data" "$work/pueue/run" > "$work/pueue/pueue.yml"
  pueued -c "$work/pueue/pueue.yml" >/dev/null 2>&1 &
  PUEUE=(pueue -c "$work/pueue/pueue.yml")
  for _ in $(seq 100); do "${PUEUE[@]}" status >/dev/null 2>&1 && break; sleep 0.05; done
fi
FLOOR=""
if gcc -O2 -static "$here/floor.c" -o "$work/floor" 2>/dev/null || gcc -O2 "$here/floor.c" -o "$work/floor" 2>/dev/null; then
  FLOOR="$work/floor"
fi
trap '[ ${#PUEUE[@]} -gt 0 ] && "${PUEUE[@]}" shutdown >/dev/null 2>&1; kill $(jobs -p) 2>/dev/null || true; tsp -K >/dev/null 2>&1 || true; rm -rf "$work"' EXIT
now() { date +%s.%N; }
# Busy jiffies of the whole machine (user, nice, system, irq, softirq).
busy() { awk '/^cpu /{print $2+$3+$4+$7+$8}' /proc/stat; }
# CPU jiffies a process has used itself (utime + stime; not its children).
own_cpu() { awk '{print $14+$15}' "/proc/$1/stat"; }
# "RATE CPU_MS_PER_JOB" from N, t0, t1, busy0, busy1.
rate() { python3 -c "print(f'{$1/($3-$2):.0f} {($5-$4)*1000/$(getconf CLK_TCK)/$1:.2f}')" ; }

opsd_run() { # $1 = parallelism
  local st="$work/opsd.$RANDOM"; mkdir -p "$st"
  printf 'workers = 64\n[concurrency]\ncommand = %s\n' "$1" > "$st/cfg.toml"
  "$OPSD" serve --state-dir "$st" --socket "$st/s.sock" --config "$st/cfg.toml" 2>/dev/null &
  local pid=$!
  while ! "$OPSD" health --socket "$st/s.sock" >/dev/null 2>&1; do sleep 0.05; done
  local t0 b0 d0; t0=$(now); b0=$(busy); d0=$(own_cpu "$pid")
  seq "$N" | xargs -P "$1" -I{} "$OPSD" submit command --socket "$st/s.sock" \
      --params '{"argv":["true"]}' >/dev/null
  # A check as cheap as tsp's below (no Python start per look).
  while ! "$OPSD" list --socket "$st/s.sock" --active --json | grep -q '"active": 0'; do sleep 0.01; done
  local t1 b1 d1; t1=$(now); b1=$(busy); d1=$(own_cpu "$pid")
  kill "$pid"; wait "$pid" 2>/dev/null || true
  echo "$(rate "$N" "$t0" "$t1" "$b0" "$b1") $(python3 -c "print(f'{($d1-$d0)*1000/$(getconf CLK_TCK)/$N:.2f}')")"
}

tsp_run() { # $1 = parallelism
  export TS_SOCKET="$work/tsp.$RANDOM.sock"
  tsp -S "$1" >/dev/null
  local t0 b0; t0=$(now); b0=$(busy)
  seq "$N" | xargs -P "$1" -I{} tsp true >/dev/null
  tsp -w >/dev/null 2>&1 || true
  # -w waits for the last job; make sure nothing is queued or running.
  while tsp | awk 'NR>1 && ($2=="running" || $2=="queued")' | grep -q .; do sleep 0.01; done
  local t1 b1; t1=$(now); b1=$(busy)
  tsp -K >/dev/null 2>&1 || true
  rate "$N" "$t0" "$t1" "$b0" "$b1"
}

floor_run() { # $1 = parallelism
  [ -n "$FLOOR" ] || { echo "-"; return; }
  local d="$work/floor.$RANDOM"; mkdir -p "$d"
  "$FLOOR" serve "$d/journal" "$d/s.sock" "$1" & local pid=$!
  while ! "$FLOOR" active "$d/s.sock" >/dev/null 2>&1; do sleep 0.01; done
  local t0 b0; t0=$(now); b0=$(busy)
  seq "$N" | xargs -P "$1" -I{} "$FLOOR" submit "$d/s.sock" true >/dev/null
  while [ "$("$FLOOR" active "$d/s.sock")" != "0" ]; do sleep 0.01; done
  local t1 b1; t1=$(now); b1=$(busy)
  kill "$pid"; wait "$pid" 2>/dev/null || true
  rate "$N" "$t0" "$t1" "$b0" "$b1" | cut -d' ' -f1
}

pueue_run() { # $1 = parallelism
  [ ${#PUEUE[@]} -gt 0 ] || { echo "-"; return; }
  "${PUEUE[@]}" parallel "$1" >/dev/null 2>&1 || { echo "-"; return; }
  "${PUEUE[@]}" clean >/dev/null 2>&1 || true
  local t0 b0; t0=$(now); b0=$(busy)
  seq "$N" | xargs -P "$1" -I{} "${PUEUE[@]}" add -- true >/dev/null
  "${PUEUE[@]}" wait >/dev/null 2>&1 || true
  local t1 b1; t1=$(now); b1=$(busy)
  rate "$N" "$t0" "$t1" "$b0" "$b1" | cut -d' ' -f1
}

median() { tr " " "\n" | { grep -v "^-$" || true; } | sort -n | awk '{a[NR]=$1} END {if (NR==0) print "-"; else print a[int((NR+1)/2)]}'; }

echo "| parallel | opsd jobs/s (runs) | tsp jobs/s (runs) | durable floor jobs/s | pueue jobs/s | opsd / tsp | floor / tsp | CPU ms/job opsd / tsp (medians) | of which the opsd daemon |"
echo "|---:|---|---|---|---|---:|---:|---|---:|"
IFS=, read -ra plist <<< "$PARS"
for p in "${plist[@]}"; do
  o=(); t=(); f=(); q=(); oc=(); tc=(); od=()
  for _ in $(seq "$PAIRS"); do
    read -r r c dc <<< "$(opsd_run "$p")"; o+=("$r"); oc+=("$c"); od+=("$dc")
    read -r r c <<< "$(tsp_run "$p")"; t+=("$r"); tc+=("$c")
    f+=("$(floor_run "$p")")
    q+=("$(pueue_run "$p")")
    echo "  P=$p: opsd ${o[-1]}/s (${oc[-1]} ms CPU/job, daemon ${od[-1]}), tsp ${t[-1]}/s (${tc[-1]} ms), floor ${f[-1]}/s, pueue ${q[-1]}" >&2
  done
  om=$(echo "${o[*]}" | median); tm=$(echo "${t[*]}" | median); qm=$(echo "${q[*]}" | median)
  fm=$(echo "${f[*]}" | median)
  fratio=$( [ "$fm" = "-" ] && echo "-" || python3 -c "print(f'{$fm/$tm:.2f}×')")
  ocm=$(echo "${oc[*]}" | median); tcm=$(echo "${tc[*]}" | median); odm=$(echo "${od[*]}" | median)
  ratio=$(python3 -c "print(f'{$om/$tm:.2f}')")
  echo "| $p | $om (${o[*]}) | $tm (${t[*]}) | $fm (${f[*]}) | $qm | **${ratio}×** | $fratio | $ocm / $tcm | $odm |"
done
