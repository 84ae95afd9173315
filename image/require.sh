# Sourced by the scripts in image/ and .ci/: checks, before a script does any work, that
# every program (or file) it will use is there, and names the Debian package to install
# for each one that is not. A missing package then fails a run in seconds, not after the
# forty minutes it takes to reach the step that needs it.
#
#   pk_require WHO SPEC...
#     WHO   the script's name, for the message
#     SPEC  PROGRAM=PACKAGE (found on PATH) or /ABSOLUTE/FILE=PACKAGE (must exist)
# Returns 1 after listing everything that is missing (all of it, not just the first).

pk_require() {
    local who=$1 spec what pkg
    shift
    local missing=() packages=()
    for spec in "$@"; do
        what=${spec%%=*} pkg=${spec#*=}
        if [[ $what == /* ]]; then
            [[ -e $what ]] && continue
        else
            command -v "$what" >/dev/null 2>&1 && continue
        fi
        missing+=("  $what (Debian package $pkg)")
        [[ " ${packages[*]} " == *" $pkg "* ]] || packages+=("$pkg")
    done
    [[ ${#missing[@]} -eq 0 ]] && return 0
    {
        echo "$who: error: missing what this script needs:"
        printf '%s\n' "${missing[@]}"
        echo "$who: install them with: apt-get install --no-install-recommends ${packages[*]}"
    } >&2
    return 1
}
