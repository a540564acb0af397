#!/bin/sh
# toytarget: a toy "config parser" with a planted bug; the example component of the Talus code
# repository, fuzzed by tools/toyfuzz.
#
#   sh target.sh FILE
#
# FILE holds `key=value` lines. The parser prints the features it reached (`cov:<feature>`), so a
# fuzzer can tell inputs that do something new from inputs that do not. Exit status 0: parsed;
# 1: rejected; 139 (what a shell reports for SIGSEGV): "crashed", with a sanitizer-like report on
# stderr. The planted bug: the length check of `len=` is off by one, so any length of 8 or more
# "writes past" the 8-byte buffer.
#
# POSIX sh only: it runs under busybox in the guest and under dash or bash elsewhere.

buf=8
n=0
[ -r "${1:-}" ] || { echo "usage: target.sh FILE" >&2; exit 2; }
while IFS= read -r line || [ -n "$line" ]; do
  n=$((n + 1))
  case $line in
    *=*) key=${line%%=*}; value=${line#*=} ;;
    *) echo "cov:reject"; exit 1 ;;
  esac
  echo "cov:record"
  case $key in
    name) echo "cov:name" ;;
    id) echo "cov:id" ;;
    mode) echo "cov:mode" ;;
    len)
      echo "cov:len"
      case $value in
        '' | *[!0-9]*) echo "cov:len_not_a_number"; continue ;;
      esac
      if [ "${#value}" -gt 4 ] || [ "$value" -ge "$buf" ]; then   # BUG: should be -gt
        cat >&2 <<REPORT
==toytarget== ERROR: stack-buffer-overflow: writing $value bytes into buf[$buf]
    #0 copy_field   target.sh (key len)
    #1 parse_record target.sh (line $n)
    #2 main         target.sh
REPORT
        exit 139
      fi
      echo "cov:len_ok" ;;
    *) echo "cov:unknown_key" ;;
  esac
done < "$1"
echo "cov:done"
exit 0
