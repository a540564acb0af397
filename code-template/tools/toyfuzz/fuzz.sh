#!/bin/sh
# toyfuzz: a toy coverage-guided mutational fuzzer, the example tool of the Talus code repository.
#
# The Talus contract (DESIGN.md section 8) every tool follows:
#   TALUS_PARAMS      JSON file with the parameters (the manifest's defaults merged with the job's)
#   TALUS_OUTPUT      directory for files to send back (crash samples, results)
#   TALUS_EVENTS      file to append JSON lines to: progress, result, crash
#   TALUS_COMPONENTS  directory holding the components listed in the manifest
# The entry command runs in the tool's directory. Try it before pushing:
#   talus tool run-local tools/toyfuzz --param iterations=20 --param seed=7
#
# POSIX sh only (busybox in the guest; dash or bash elsewhere): sed, awk, grep, cp, mkdir.
set -u

params=${TALUS_PARAMS:?not set: run me with talus tool run-local}
events=${TALUS_EVENTS:?not set}
output=${TALUS_OUTPUT:?not set}
components=${TALUS_COMPONENTS:?not set}

# int_param NAME DEFAULT / string_param NAME DEFAULT: a parameter from the params JSON.
int_param() {
  v=$(sed -n 's/.*"'"$1"'"[[:space:]]*:[[:space:]]*\(-\{0,1\}[0-9][0-9]*\).*/\1/p' "$params" | head -n 1)
  echo "${v:-$2}"
}
string_param() {
  v=$(sed -n 's/.*"'"$1"'"[[:space:]]*:[[:space:]]*"\([^"]*\)".*/\1/p' "$params" | head -n 1)
  echo "${v:-$2}"
}
# json_string: stdin as the contents of a JSON string (quotes, backslashes, newlines escaped).
json_string() {
  awk 'BEGIN { ORS = "" } { gsub(/\\/, "\\\\"); gsub(/"/, "\\\""); gsub(/\t/, "\\t"); if (NR > 1) print "\\n"; print }'
}
event() { printf '%s\n' "$1" >> "$events"; }

iterations=$(int_param iterations 8)
seed=$(int_param seed 1)
target_name=$(string_param target toytarget)
target="$components/$target_name/target.sh"
[ -r "$target" ] || { echo "toyfuzz: no target at $target (is $target_name in the manifest's components?)" >&2; exit 2; }

# A linear congruential generator: the same seed gives the same run on every shell.
state=$(( seed < 0 ? -seed : seed ))
rand() {   # rand N: sets r to a number in [0, N)
  state=$(( (state * 1103515245 + 12345) % 2147483648 ))
  r=$(( (state / 65536) % $1 ))
}
pick() {   # pick WORD...: sets w to one of the words
  rand $#
  shift "$r"
  w=$1
}

work=$(mktemp -d "${TMPDIR:-/tmp}/toyfuzz.XXXXXX")
trap 'rm -rf "$work"' EXIT
mkdir "$work/corpus"
echo "cov:(none)" > "$work/seen"   # grep -f needs one pattern at least (busybox)
: > "$work/signatures"
n=0
for s in seeds/*; do
  [ -f "$s" ] || continue
  cp "$s" "$work/corpus/$n"
  n=$((n + 1))
done
[ "$n" -gt 0 ] || { printf 'name=seed\n' > "$work/corpus/0"; n=1; }

crashes=0
unique=0
i=0
while [ "$i" -lt "$iterations" ]; do
  i=$((i + 1))
  # Half the time build on the newest input (what found something new last), and change its
  # last line (what it added); otherwise anything.
  rand 2
  if [ "$r" -eq 0 ]; then parent=$((n - 1)); else rand "$n"; parent=$r; fi
  lines=$(awk 'END { print NR }' "$work/corpus/$parent")
  [ "$lines" -gt 0 ] || lines=1
  rand 2
  if [ "$r" -eq 0 ]; then line=$lines; else rand "$lines"; line=$((r + 1)); fi
  rand 4; mutation=$r
  rand 10; digit=$r
  pick 0 1 7 8 16 64 127 255; value=$w   # "interesting" values, as AFL uses
  pick name id mode len; key=$w
  case $mutation in
    0) what="key of line $line := $key"
       awk -v n="$line" -v k="$key" 'NR == n { sub(/^[^=]*/, k) } { print }' "$work/corpus/$parent" > "$work/input" ;;
    1) what="value of line $line := $value"
       awk -v n="$line" -v v="$value" 'NR == n { sub(/=.*/, "=" v) } { print }' "$work/corpus/$parent" > "$work/input" ;;
    2) what="value of line $line += $digit"
       awk -v n="$line" -v d="$digit" 'NR == n { $0 = $0 d } { print }' "$work/corpus/$parent" > "$work/input" ;;
    *) what="new line $key=$value"
       { cat "$work/corpus/$parent"; printf '%s=%s\n' "$key" "$value"; } > "$work/input" ;;
  esac

  sh "$target" "$work/input" > "$work/features" 2> "$work/stderr"
  status=$?
  if [ "$status" -ge 128 ]; then
    crashes=$((crashes + 1))
    frame=$(sed -n 's/^ *#0 *\([A-Za-z_][A-Za-z0-9_]*\).*/\1/p' "$work/stderr" | head -n 1)
    kind=$(sed -n 's/.*ERROR: *\([A-Za-z-]*\).*/\1/p' "$work/stderr" | head -n 1)
    signature="$target_name: ${kind:-crash} in ${frame:-unknown}"
    echo "iteration $i: input $parent, $what: CRASH ($signature, status $status)"
    if ! grep -qxF "$signature" "$work/signatures"; then
      echo "$signature" >> "$work/signatures"
      unique=$((unique + 1))
      sample="crash-$i.txt"
      cp "$work/input" "$output/$sample"
      report=$(json_string < "$work/stderr")
      event "{\"type\":\"crash\",\"signature\":\"$signature\",\"file\":\"$sample\",\"data\":{\"iteration\":$i,\"exit_status\":$status,\"report\":\"$report\"}}"
    fi
  else
    new=$(grep -vxF -f "$work/seen" "$work/features" | sort -u)
    if [ -n "$new" ]; then
      printf '%s\n' "$new" >> "$work/seen"
      cp "$work/input" "$work/corpus/$n"
      n=$((n + 1))
      echo "iteration $i: input $parent, $what: new features $(echo $new | tr '\n' ' ')(corpus $n)"
    else
      echo "iteration $i: input $parent, $what: nothing new"
    fi
  fi
  event '{"type":"progress","amount":1}'
done

features=$(( $(awk 'END { print NR }' "$work/seen") - 1 ))
event "{\"type\":\"result\",\"kind\":\"stats\",\"data\":{\"iterations\":$iterations,\"seed\":$seed,\"corpus\":$n,\"features\":$features,\"crashes\":$crashes,\"unique_crashes\":$unique}}"
echo "toyfuzz: $iterations iterations, corpus $n, $features features, $crashes crashes ($unique unique)"
