# Sourced first by the scripts in image/ that take options: where they are (here: image/,
# repo: the repository), their messages under their own name (die, say), their --help
# (usage prints the comment at the top of the script, up to `set -euo pipefail`), and
# pk_require (require.sh).

# shellcheck disable=SC2034 # here and repo are for the sourcing script
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck disable=SC2034
repo=$(dirname "$here")
me=$(basename "$0")
die() { echo "$me: error: $*" >&2; exit 1; }
say() { echo "$me: $*" >&2; }
usage() { sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; }
# shellcheck source=require.sh
source "$here/require.sh"
