# Shared by the ExpertSim job scripts: environment, signal forwarding, requeue on pre-emption.
# Sourced, not run. Environment it reads:
#   EXPERTSIM_ROOT    repository checkout (default: the submit directory)
#   EXPERTSIM_PYTHON  Python with expertsim installed (default: $EXPERTSIM_ROOT/.venv/bin/python,
#                     else python3 on PATH)

EXPERTSIM_ROOT=${EXPERTSIM_ROOT:-${SLURM_SUBMIT_DIR:-$PWD}}
if [[ -z "${EXPERTSIM_PYTHON:-}" ]]; then
    if [[ -x "$EXPERTSIM_ROOT/.venv/bin/python" ]]; then
        EXPERTSIM_PYTHON="$EXPERTSIM_ROOT/.venv/bin/python"
    else
        EXPERTSIM_PYTHON=python3
    fi
fi
EXIT_PREEMPTED=75  # expertsim train: checkpoint saved after SIGTERM/SIGUSR1, run again

# run_with_requeue CMD...: run CMD in the background, forward SIGUSR1/SIGTERM to it as
# $EXPERTSIM_FORWARD_SIGNAL (default USR1; torchrun needs TERM) - SLURM signals the batch shell,
# and bash defers traps during a foreground command - and requeue this job when CMD stopped
# for pre-emption (exit 75 = checkpoint saved) or a signal arrived.
run_with_requeue() {
    "$@" &
    local child=$!
    local signalled=0
    trap 'signalled=1; echo "[expertsim] signal received: asking the trainer to checkpoint"; kill -"${EXPERTSIM_FORWARD_SIGNAL:-USR1}" $child 2>/dev/null' USR1 TERM
    local status=0
    while true; do
        wait "$child"
        status=$?
        # wait returns early (> 128) when a trapped signal arrives while the child still runs
        kill -0 "$child" 2>/dev/null || break
    done
    trap - USR1 TERM
    if [[ $status -eq $EXIT_PREEMPTED || $signalled -eq 1 ]]; then
        echo "[expertsim] stopped for pre-emption (status $status); requeueing job ${SLURM_JOB_ID:-?}"
        scontrol requeue "$SLURM_JOB_ID"
        exit 0
    fi
    return $status
}
