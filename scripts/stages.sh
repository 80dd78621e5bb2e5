# Sourced by scripts/demo.sh and scripts/demo_lm.sh (from the repository root).
declare -a timings=()
stage() {  # stage NAME DONE_MARKER COMMAND...: run COMMAND unless DONE_MARKER exists; time it
  local name="$1" marker="$2"; shift 2
  if [ -e "$marker" ]; then
    echo "== $name: done before, skipped"
    timings+=("$name: skipped")
    return
  fi
  echo "== $name"
  local t0=$SECONDS
  "$@"
  timings+=("$name: $((SECONDS - t0)) s")
}
