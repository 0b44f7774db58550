#!/usr/bin/env bash
# count_instructions.sh: the per-op overhead of the Go binding and of PyTorch
# above a bare C++ at::add loop, in instructions counted by valgrind's
# callgrind, which no other load on the machine can change (cmd/torchbench
# gives the same comparison in CPU time, which a shared machine makes noisy).
#
#   scripts/count_instructions.sh            # needs valgrind and /usr/bin/python3 with torch
#
# Each case runs twice, with N1 and N2 ops, and the per-op figure is the
# difference of the two counts over N2-N1, so that start-up and set-up
# cancel. A Go case (torch's BenchmarkBareAdd, BenchmarkAddSmallClose,
# BenchmarkAddSmall) counts what its benchmark function runs, callees
# included, on its own thread: the runtime's other threads (a scheduler
# spinning while a cgo call is long under valgrind) stay out, and the
# garbage collector is off so that no collection lands in one run and not
# the other (its amortised cost per op is in cmd/torchbench's CPU times).
# The Python case is the whole process, `x + y` in a loop (PYTHONHASHSEED=0;
# two runs of it differ by a few hundred thousand instructions, under 100
# per op at the defaults). Both with one OpenMP thread.
# Takes about five minutes: libtorch starts slowly under valgrind.
set -euo pipefail
cd "$(dirname "$0")/.."
N1=${N1:-2000}
N2=${N2:-6000}
PY=${PYTHON:-/usr/bin/python3}
command -v valgrind >/dev/null || { echo "count_instructions: valgrind is not installed (apt-get install valgrind)" >&2; exit 2; }
make -s shim
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
go test -c -o "$tmp/torch.test" ./torch

# collected NAME N [BENCH]: the instruction count of case NAME run with N
# ops: the whole process for Python, the inclusive count of Go benchmark
# function BENCH (callgrind_annotate prints it on the line naming the
# function in the test binary).
collected() {
  if [ -z "${3:-}" ]; then
    sed -n 's/.*Collected : \([0-9]*\).*/\1/p' "$tmp/$1.$2.log"
  else
    callgrind_annotate --threshold=100 --inclusive=yes "$tmp/$1.$2.out" 2>/dev/null |
      sed -n "s/^ *\([0-9,]*\) .*:github.com\/dp2osr\/dp2o\/torch_test\.$3 \[.*/\1/p" | head -1 | tr -d ,
  fi
}

go_case() { # name bench n
  (cd torch && OMP_NUM_THREADS=1 GOGC=off GODEBUG=asyncpreemptoff=1 valgrind --tool=callgrind --callgrind-out-file="$tmp/$1.$3.out" \
    "$tmp/torch.test" -test.run '^$' -test.bench "^$2\$" -test.benchtime "${3}x" \
    >"$tmp/$1.$3.log" 2>&1)
}
cat >"$tmp/loop.py" <<'PYEOF'
import sys
import torch
torch.set_num_threads(1)
x, y = torch.ones(1, 1), torch.ones(1, 1)
def run(n):
    for _ in range(n):
        x + y
run(int(sys.argv[1]))
PYEOF
py_case() { # n
  OMP_NUM_THREADS=1 PYTHONHASHSEED=0 valgrind --tool=callgrind --callgrind-out-file=/dev/null "$PY" "$tmp/loop.py" "$1" >"$tmp/py.$1.log" 2>&1
}

# Two at a time (callgrind runs one thread of the program at a time).
go_case bare BenchmarkBareAdd "$N1" & go_case bare BenchmarkBareAdd "$N2" & wait
go_case close BenchmarkAddSmallClose "$N1" & go_case close BenchmarkAddSmallClose "$N2" & wait
go_case scoped BenchmarkAddSmall "$N1" & go_case scoped BenchmarkAddSmall "$N2" & wait
py_case "$N1" & py_case "$N2" & wait

per_op() { # name [bench]
  local a b
  a=$(collected "$1" "$N1" "${2:-}")
  b=$(collected "$1" "$N2" "${2:-}")
  if [ -z "$a" ] || [ -z "$b" ]; then
    echo "count_instructions: no count for $1 (see valgrind's output below)" >&2
    cat "$tmp/$1.$N2.log" >&2 || true
    exit 1
  fi
  echo $(( (b - a) / (N2 - N1) ))
}
bare=$(per_op bare BenchmarkBareAdd)
close=$(per_op close BenchmarkAddSmallClose)
scoped=$(per_op scoped BenchmarkAddSmall)
py=$(per_op py)
printf 'instructions per 1x1 add: bare C++ %d; Go closed at once %d; Go in scopes of 1000 %d; PyTorch %d\n' "$bare" "$close" "$scoped" "$py"
awk -v b="$bare" -v c="$close" -v s="$scoped" -v p="$py" 'BEGIN {
  printf "overhead above bare C++: Python %d; Go closed at once %d, Go/Python %.2f; Go in scopes %d, Go/Python %.2f\n",
    p - b, c - b, (c - b) / (p - b), s - b, (s - b) / (p - b) }'
