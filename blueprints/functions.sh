# shellcheck shell=bash
# Shared helpers for AiKore blueprints. A blueprint sources this file:
#
#   source "$AIKORE_BLUEPRINTS_DIR/functions.sh"
#
# (launch.sh is a copy living in the instance dir, so it cannot find this file
# next to itself; aikore sets AIKORE_BLUEPRINTS_DIR to the stock blueprints dir.)
#
# Every helper is safe under `set -euo pipefail`, quotes its arguments, logs
# what it does, and calls `die` (exit 1) when it cannot do its job.

# Timestamped line on stdout (aikore captures it into the instance's log).
log() {
    printf '%s [%s] %s\n' "$(date -u +%Y-%m-%dT%H:%M:%SZ)" "${INSTANCE_NAME:-blueprint}" "$*"
}

# Log an error (on stderr) and stop the launch with status 1.
die() {
    log "ERROR: $*" >&2
    exit 1
}

# Absolute form of a path that exists (no symlink resolution).
_aikore_abspath() {
    (cd -- "$1" && pwd)
}

# Physical (symlinks resolved) form of a directory that exists.
_aikore_realdir() {
    (cd -- "$1" && pwd -P)
}

# pick_python [VERSION...]: prints the first `pythonVERSION` on PATH, else
# `python3`. AIKORE_PYTHON overrides the choice.
pick_python() {
    if [[ -n "${AIKORE_PYTHON:-}" ]]; then
        printf '%s\n' "$AIKORE_PYTHON"
        return 0
    fi
    local v
    for v in "$@"; do
        if command -v "python$v" >/dev/null 2>&1; then
            printf '%s\n' "python$v"
            return 0
        fi
    done
    printf '%s\n' python3
}

# --------------------------------------------------------------------------
# git
# --------------------------------------------------------------------------

# Resolves REF (tag, remote branch, commit) to a commit id in DIR, or fails.
_aikore_resolve_ref() {
    local dir=$1 ref=$2 candidate
    for candidate in "refs/tags/$ref" "refs/remotes/origin/$ref" "$ref"; do
        if git -C "$dir" rev-parse --verify --quiet "$candidate^{commit}" 2>/dev/null; then
            return 0
        fi
    done
    return 1
}

# Symlinks that link_shared_models / link_outputs put where the app's repo
# tracks files (ComfyUI tracks models/checkpoints/put_checkpoints_here) make
# git see those files as deleted, and git stash/checkout refuse paths "beyond
# a symbolic link". Before moving to another ref, such links are removed and
# the tracked files restored; the blueprint links them again right after.
# Only links standing on a tracked path are touched: they hold no data.
_aikore_unlink_over_tracked() {
    local dir=$1 path p
    while IFS= read -r -d '' path; do
        p=$path
        while [[ "$p" == */* ]]; do
            p=${p%/*}
            if [[ -L "$dir/$p" ]]; then
                log "$dir: removing symlink $p (stands on tracked files; linked again after checkout)"
                rm -f -- "${dir:?}/$p"
                git -C "$dir" checkout -- "$p" || die "$dir: cannot restore tracked $p"
                break
            fi
        done
    done < <(git -C "$dir" diff --diff-filter=D --name-only -z)
}

# Moves the checkout in DIR to REF. FRESH=1 after a --no-checkout clone (an
# empty index must not be mistaken for local edits).
_aikore_checkout_ref() {
    local url=$1 dir=$2 ref=$3 from=$4 fresh=$5 sha
    log "$dir: fetching from $url"
    git -C "$dir" fetch --tags --force origin || die "$dir: git fetch from $url failed"
    if ! sha=$(_aikore_resolve_ref "$dir" "$ref"); then
        # A commit that no branch or tag advertises can still be fetched by id.
        if git -C "$dir" fetch origin "$ref" 2>/dev/null; then
            sha=$(git -C "$dir" rev-parse --verify "FETCH_HEAD^{commit}")
        else
            die "$dir: ref '$ref' not found in $url (is the tag or commit right?)"
        fi
    fi
    [[ "$fresh" == 1 ]] || _aikore_unlink_over_tracked "$dir"
    if [[ "$fresh" != 1 ]] && [[ -n "$(git -C "$dir" status --porcelain --untracked-files=no)" ]]; then
        local msg
        msg="aikore: local edits before moving from $from to $ref ($(date -u +%Y-%m-%dT%H:%M:%SZ))"
        log "$dir: local edits found; stashing them as \"$msg\" (see: git -C $dir stash list)"
        git -C "$dir" stash push --message "$msg" || die "$dir: git stash failed; resolve by hand"
    fi
    log "$dir: checking out $ref (${sha:0:12})"
    git -C "$dir" -c advice.detachedHead=false checkout --detach "$sha" \
        || die "$dir: git checkout $ref failed (untracked files in the way?)"
    if [[ -f "$dir/.gitmodules" ]]; then
        log "$dir: updating submodules"
        git -C "$dir" submodule update --init --recursive || die "$dir: submodule update failed"
    fi
    printf '%s\n' "$ref" >"$(git -C "$dir" rev-parse --absolute-git-dir)/aikore-pinned-ref"
}

# clone_or_update REPO_URL DIR REF
#   Missing DIR: clone REPO_URL and check out REF (a tag or commit; a branch
#   name works but is frozen at whatever it pointed to when first fetched).
#   Present and already pinned to REF: nothing is fetched or changed, local
#   edits and hand-made checkouts are left alone.
#   REF changed (the blueprint was edited): fetch, stash local edits with a
#   message, check out the new REF. Never resets to upstream's newest.
clone_or_update() {
    local url=${1:-} dir=${2:-} ref=${3:-}
    [[ -n "$url" && -n "$dir" && -n "$ref" ]] || die "usage: clone_or_update REPO_URL DIR REF"
    command -v git >/dev/null 2>&1 || die "git is not installed"

    if [[ ! -e "$dir/.git" ]]; then
        if [[ -e "$dir" ]] && [[ -n "$(ls -A -- "$dir")" ]]; then
            die "$dir exists, is not a git checkout and is not empty; move it away to reinstall"
        fi
        log "cloning $url into $dir (ref $ref)"
        git clone --no-checkout -- "$url" "$dir" || die "git clone $url failed"
        _aikore_checkout_ref "$url" "$dir" "$ref" "nothing" 1
        return 0
    fi

    local gitdir pinned="" head target
    gitdir=$(git -C "$dir" rev-parse --absolute-git-dir) || die "$dir: not a usable git checkout"
    if [[ -f "$gitdir/aikore-pinned-ref" ]]; then
        pinned=$(<"$gitdir/aikore-pinned-ref")
    fi
    head=$(git -C "$dir" rev-parse --verify --quiet 'HEAD^{commit}' || true)

    if [[ "$pinned" == "$ref" ]]; then
        log "$dir: pinned to $ref (HEAD ${head:0:12}); not updating"
        if [[ -f "$dir/.gitmodules" ]] && git -C "$dir" submodule status --recursive | grep -q '^-'; then
            log "$dir: initialising missing submodules"
            git -C "$dir" submodule update --init --recursive || die "$dir: submodule update failed"
        fi
        return 0
    fi
    if [[ -z "$pinned" ]] && target=$(_aikore_resolve_ref "$dir" "$ref") && [[ "$target" == "$head" ]]; then
        log "$dir: already at $ref (${head:0:12}); recording it as pinned"
        printf '%s\n' "$ref" >"$gitdir/aikore-pinned-ref"
        return 0
    fi
    log "$dir: ref changed from ${pinned:-unknown} to $ref"
    _aikore_checkout_ref "$url" "$dir" "$ref" "${pinned:-unknown}" 0
}

# --------------------------------------------------------------------------
# Python environments
# --------------------------------------------------------------------------

# ensure_venv DIR [PYTHON]
#   Creates a venv at DIR (relative to the instance dir) when missing or
#   broken, and activates it. `.rebuild-env` in the instance dir asks for a
#   rebuild: the env and the trigger are deleted, then the env is created anew.
ensure_venv() {
    local dir=${1:-} python=${2:-python3}
    [[ -n "$dir" ]] || die "usage: ensure_venv DIR [PYTHON]"
    local instance_dir=${INSTANCE_CONF_DIR:-$PWD}
    local trigger="$instance_dir/.rebuild-env"

    if [[ -e "$dir" ]]; then
        local real_env real_inst
        real_env=$(_aikore_realdir "$dir")
        real_inst=$(_aikore_realdir "$instance_dir")
        if [[ "$real_env" == / || "$real_env" == "$real_inst" ]]; then
            die "refusing to use $dir as a venv: it is / or the instance dir itself"
        fi
    fi

    if [[ -e "$trigger" ]]; then
        log "rebuild requested ($trigger): deleting $dir"
        rm -rf -- "$dir"
        rm -f -- "$trigger"
    fi

    if [[ -x "$dir/bin/python" ]] && "$dir/bin/python" -c '' >/dev/null 2>&1; then
        :
    else
        if [[ -e "$dir" ]]; then
            log "venv $dir is broken (no working bin/python); recreating it"
            rm -rf -- "$dir"
        fi
        command -v "$python" >/dev/null 2>&1 || die "$python not found; cannot create $dir"
        log "creating venv $dir with $("$python" --version 2>&1)"
        "$python" -m venv "$dir" || die "creating venv $dir failed"
    fi

    # What bin/activate does, without its prompt handling (unset PS1 and
    # `set -u` do not mix in every Python's activate script).
    VIRTUAL_ENV=$(_aikore_abspath "$dir")
    export VIRTUAL_ENV
    export PATH="$VIRTUAL_ENV/bin:$PATH"
    unset PYTHONHOME
    hash -r
    log "using venv $VIRTUAL_ENV ($(python --version 2>&1))"
}

# True when the torch family is what NAME (a requirement's project name) is.
_aikore_is_torch_family() {
    local name=${1,,}
    name=${name//_/-}
    name=${name//./-}
    case "$name" in
        torch | torchvision | torchaudio | xformers) return 0 ;;
        *) return 1 ;;
    esac
}

_AIKORE_REQ_N=0
_AIKORE_REQ_SOURCES=()

# _aikore_filter_requirements SRC OUT TMPDIR: copies SRC to OUT without the
# torch-family lines. `-r` includes are filtered too (into TMPDIR) and every
# included path becomes absolute, so OUT can live anywhere.
_aikore_filter_requirements() {
    local src=$1 out=$2 tmp=$3 srcdir base line inc nested
    srcdir=$(_aikore_abspath "$(dirname -- "$src")")
    base=$(basename -- "$src")
    _AIKORE_REQ_SOURCES+=("$src")
    : >"$out"
    while IFS= read -r line || [[ -n "$line" ]]; do
        line=${line%$'\r'}
        if [[ "$line" =~ ^[[:space:]]*(-r|--requirement)[[:space:]=]+([^[:space:]]+) ]]; then
            inc=${BASH_REMATCH[2]}
            [[ "$inc" == /* ]] || inc="$srcdir/$inc"
            [[ -f "$inc" ]] || die "$src includes $inc, which does not exist"
            _AIKORE_REQ_N=$((_AIKORE_REQ_N + 1))
            nested="$tmp/included-$_AIKORE_REQ_N.txt"
            _aikore_filter_requirements "$inc" "$nested" "$tmp"
            printf -- '-r %s\n' "$nested" >>"$out"
            continue
        fi
        if [[ "$line" =~ ^[[:space:]]*(-c|--constraint)[[:space:]=]+([^[:space:]]+) ]]; then
            inc=${BASH_REMATCH[2]}
            [[ "$inc" == /* ]] || inc="$srcdir/$inc"
            _AIKORE_REQ_SOURCES+=("$inc")
            printf -- '-c %s\n' "$inc" >>"$out"
            continue
        fi
        if [[ "$line" =~ ^[[:space:]]*([A-Za-z0-9][A-Za-z0-9._-]*) ]] \
            && _aikore_is_torch_family "${BASH_REMATCH[1]}"; then
            log "  skipping '$line' from $base: the installed torch build is kept"
            continue
        fi
        printf '%s\n' "$line" >>"$out"
    done <"$src"
}

# pip_install_requirements FILE
#   Installs FILE into the active venv without replacing its torch build:
#   torch/torchvision/torchaudio/xformers lines are dropped and the versions
#   installed now become constraints (from `pip list --format=freeze`), so no
#   dependency can pull in another torch. pip runs in FILE's directory, so
#   `-e .` and relative paths mean what the app's authors meant. Skipped when
#   FILE (and its includes and the constraints) did not change since the last
#   successful install into this venv.
pip_install_requirements() {
    local file=${1:-}
    [[ -n "$file" ]] || die "usage: pip_install_requirements FILE"
    [[ -f "$file" ]] || die "requirements file $file not found"
    command -v python >/dev/null 2>&1 || die "no python on PATH: call ensure_venv first"

    local dir tmp constraints filtered stamp_dir stamp hash rc=0
    dir=$(_aikore_abspath "$(dirname -- "$file")")
    file="$dir/$(basename -- "$file")"
    tmp=$(mktemp -d "${TMPDIR:-/tmp}/aikore-req.XXXXXX")
    constraints="$tmp/torch-constraints.txt"
    filtered="$tmp/requirements.txt"

    python -m pip list --format=freeze 2>/dev/null \
        | grep -iE '^(torch|torchvision|torchaudio|xformers)==' >"$constraints" || true
    if [[ -s "$constraints" ]]; then
        log "keeping the installed torch build: $(tr '\n' ' ' <"$constraints")"
    else
        log "note: no torch installed in this env; requirements may pull in a default build"
    fi

    _AIKORE_REQ_N=0
    _AIKORE_REQ_SOURCES=()
    _aikore_filter_requirements "$file" "$filtered" "$tmp"

    hash=$(cat -- "${_AIKORE_REQ_SOURCES[@]}" "$constraints" | sha256sum | cut -d' ' -f1)
    stamp_dir="$(python -c 'import sys; print(sys.prefix)')/.aikore-requirements"
    stamp="$stamp_dir/$(printf '%s' "$file" | sha256sum | cut -d' ' -f1)"
    if [[ -f "$stamp" && "$(<"$stamp")" == "$hash" ]]; then
        log "requirements $file unchanged since the last install; skipping pip"
        rm -rf -- "$tmp"
        return 0
    fi

    log "installing requirements from $file"
    (cd -- "$dir" && python -m pip install -r "$filtered" -c "$constraints") || rc=$?
    rm -rf -- "$tmp"
    ((rc == 0)) || die "pip install -r $file failed (status $rc)"
    mkdir -p -- "$stamp_dir"
    printf '%s\n' "$hash" >"$stamp"
}

# ensure_torch [INDEX_URL] [PACKAGE...]
#   Installs torch once, from a PyTorch wheel index, when the active env has
#   none. Index: $TORCH_INDEX_URL, else INDEX_URL, else cu124. Packages:
#   $TORCH_PACKAGES (space separated), else PACKAGE..., else torch torchvision
#   torchaudio. An installed torch is never touched (rebuild the env to change
#   it: touch .rebuild-env in the instance dir).
ensure_torch() {
    local index=${TORCH_INDEX_URL:-${1:-https://download.pytorch.org/whl/cu124}}
    (($# > 0)) && shift
    local -a pkgs
    if [[ -n "${TORCH_PACKAGES:-}" ]]; then
        read -r -a pkgs <<<"$TORCH_PACKAGES"
    elif (($# > 0)); then
        pkgs=("$@")
    else
        pkgs=(torch torchvision torchaudio)
    fi
    command -v python >/dev/null 2>&1 || die "no python on PATH: call ensure_venv first"

    local version
    if version=$(python -c 'import importlib.util, importlib.metadata as m, sys
if importlib.util.find_spec("torch") is None: sys.exit(1)
try: print(m.version("torch"))
except m.PackageNotFoundError: print("unknown version")' 2>/dev/null); then
        log "torch $version already installed; leaving it alone"
        return 0
    fi
    log "installing ${pkgs[*]} from $index"
    python -m pip install --index-url "$index" "${pkgs[@]}" || die "installing torch from $index failed"
}

# --------------------------------------------------------------------------
# Shared folders
# --------------------------------------------------------------------------

# _aikore_link_dir TARGET LINK: makes LINK a symlink to the directory TARGET
# (created when missing). A real directory at LINK is emptied into TARGET
# first; an entry that exists in both with different contents is not
# overwritten: LINK is then kept as LINK.aikore-backup-<time>.
_aikore_link_dir() {
    local target=$1 link=$2
    mkdir -p -- "$target" || die "cannot create $target"
    target=$(_aikore_abspath "$target")

    if [[ -L "$link" ]]; then
        if [[ -d "$link" ]] && [[ "$(_aikore_realdir "$link")" == "$(_aikore_realdir "$target")" ]]; then
            log "$link -> $target (already linked)"
            return 0
        fi
        log "$link pointed to $(readlink -- "$link"); relinking"
        rm -f -- "$link"
    elif [[ -d "$link" ]]; then
        if [[ "$(_aikore_realdir "$link")" == "$(_aikore_realdir "$target")" ]]; then
            log "$link is $target itself; nothing to link"
            return 0
        fi
        local entry name dest moved=0 kept=0
        while IFS= read -r -d '' entry; do
            name=$(basename -- "$entry")
            dest="$target/$name"
            if [[ -e "$dest" || -L "$dest" ]]; then
                if [[ -f "$entry" && ! -L "$entry" && -f "$dest" ]] && cmp -s -- "$entry" "$dest"; then
                    rm -f -- "$entry"
                else
                    log "WARNING: $name exists in both $link and $target; not overwriting"
                    kept=$((kept + 1))
                fi
            else
                mv -- "$entry" "$dest" || die "moving $entry to $target failed"
                moved=$((moved + 1))
            fi
        done < <(find "$link" -mindepth 1 -maxdepth 1 -print0)
        if ((kept > 0)); then
            local backup
            backup="$link.aikore-backup-$(date +%Y%m%d-%H%M%S)"
            mv -- "$link" "$backup" || die "cannot move $link aside"
            log "moved $moved entries into $target; $kept left in $backup"
        else
            rmdir -- "$link" || die "cannot remove emptied $link"
            log "moved $moved entries from $link into $target"
        fi
    elif [[ -e "$link" ]]; then
        local backup
        backup="$link.aikore-backup-$(date +%Y%m%d-%H%M%S)"
        mv -- "$link" "$backup" || die "cannot move $link aside"
        log "$link was a file; kept as $backup"
    fi

    mkdir -p -- "$(dirname -- "$link")"
    ln -s -- "$target" "$link" || die "cannot link $link -> $target"
    log "linked $link -> $target"
}

# link_shared_models DIR SUBDIR...
#   Links DIR/<app> to $AIKORE_DATA_DIR/models/<shared> for each SUBDIR,
#   written `name` (same name on both sides) or `app:shared` (e.g.
#   `Stable-diffusion:checkpoints`, so Forge and ComfyUI share one folder).
#   Files already in the app's folder move into the shared one first.
link_shared_models() {
    local dir=${1:-}
    if (($# < 2)) || [[ -z "$dir" ]]; then
        die "usage: link_shared_models DIR SUBDIR[:SHARED]..."
    fi
    [[ -n "${AIKORE_DATA_DIR:-}" ]] || die "AIKORE_DATA_DIR is not set; cannot find the shared models dir"
    shift
    mkdir -p -- "$dir"
    local spec app shared
    for spec in "$@"; do
        app=${spec%%:*}
        shared=${spec#*:}
        [[ -n "$app" && -n "$shared" && "$app" != */* && "$shared" != */* ]] \
            || die "bad model dir spec '$spec' (want name or app:shared)"
        _aikore_link_dir "$AIKORE_DATA_DIR/models/$shared" "$dir/$app"
    done
}

# link_outputs APP_OUTPUT_DIR
#   Makes the app's output dir a symlink to $INSTANCE_OUTPUT_DIR (existing
#   outputs move there first).
link_outputs() {
    local app_dir=${1:-}
    [[ -n "$app_dir" ]] || die "usage: link_outputs APP_OUTPUT_DIR"
    [[ -n "${INSTANCE_OUTPUT_DIR:-}" ]] || die "INSTANCE_OUTPUT_DIR is not set"
    _aikore_link_dir "$INSTANCE_OUTPUT_DIR" "$app_dir"
}

# Extra command-line arguments for the app, from $EXTRA_ARGS (set it with
# Environment=EXTRA_ARGS=... in the instance's unit file), into the array
# named by $1.
read_extra_args() {
    local -n _aikore_out=$1
    _aikore_out=()
    if [[ -n "${EXTRA_ARGS:-}" ]]; then
        read -r -a _aikore_out <<<"$EXTRA_ARGS"
        log "extra arguments from EXTRA_ARGS: ${_aikore_out[*]}"
    fi
}

# Checks the variables aikore provides to every blueprint.
require_instance_env() {
    local var
    for var in INSTANCE_NAME INSTANCE_CONF_DIR INSTANCE_OUTPUT_DIR WEBUI_PORT AIKORE_DATA_DIR; do
        [[ -n "${!var:-}" ]] || die "$var is not set (aikore sets it; run this through aikore)"
    done
    mkdir -p -- "$INSTANCE_OUTPUT_DIR"
}

# --------------------------------------------------------------------------
# Install as a job (docs/operations.md, "Install as a job")
# --------------------------------------------------------------------------
# A blueprint puts its install (clone, venv, torch, requirements) in a
# function named `install`, calls `install_step NAME` before each step, and
# runs it with `run_install STEPS VERSION KEY...` before it execs the app.
# aikore follows the `[aikore-install]` lines: the instance shows
# `installing` with "step i of n" and pip's/git's progress, and a failure
# there ends the instance `failed` with the failure class of the install.

# release_ref REPO REF
#   The ref to install: REF itself when pinned; for `latest`, the release
#   recorded by the last install (.aikore-version), or the newest release tag
#   (vX.Y.Z) of REPO at the first install and when an Update asked
#   (.aikore-update, written by aikore's "update" action).
release_ref() {
    local repo=${1:-} ref=${2:-}
    [[ -n "$repo" && -n "$ref" ]] || die "usage: release_ref REPO REF"
    if [[ "$ref" != latest ]]; then
        printf '%s\n' "$ref"
        return 0
    fi
    if [[ -s .aikore-version && ! -e .aikore-update ]]; then
        head -n1 .aikore-version
        return 0
    fi
    local newest
    newest=$(git ls-remote --tags --refs -- "$repo" | sed 's#.*refs/tags/##' \
        | grep -E '^v?[0-9]+(\.[0-9]+)*$' | sort -V | tail -n1) || true
    [[ -n "$newest" ]] || die "no release tag (vX.Y.Z) found in $repo"
    log "newest release of $repo: $newest" >&2
    printf '%s\n' "$newest"
}

# install_step NAME: the next step of `install` (its number is counted).
install_step() {
    _AIKORE_STEP=$((${_AIKORE_STEP:-0} + 1))
    echo "[aikore-install] step ${_AIKORE_STEP}/${_AIKORE_STEPS:-?}: $*"
}

# run_install STEPS VERSION KEY...
#   Runs `install` unless the stamp (VERSION, the KEYs and this launch.sh)
#   matches the last install that succeeded; .aikore-reinstall (aikore's
#   "reinstall" action) forces it. Its output also goes to install.log.
#   VERSION is recorded in .aikore-version and shown by aikore.
run_install() {
    local steps=${1:-} version=${2:-}
    [[ -n "$steps" && -n "$version" ]] || die "usage: run_install STEPS VERSION [KEY...]"
    shift 2
    declare -F install >/dev/null || die "run_install: the blueprint defines no install function"
    local stamp script=${BASH_SOURCE[1]:-$0}
    stamp=$(printf '%s\n' "$version" "$@" "$(sha256sum <"$script" | cut -d' ' -f1)" | sha256sum | cut -d' ' -f1)
    if [[ -e .aikore-reinstall ]]; then
        log "reinstall requested: installing again"
        rm -f -- .aikore-reinstall .aikore-install.stamp
    fi
    if [[ ! -e .aikore-update && -f .aikore-install.stamp && "$(<.aikore-install.stamp)" == "$stamp" ]]; then
        echo "[aikore-install] skipped: $version installed, nothing changed"
        return 0
    fi
    echo "[aikore-install] begin $steps steps: $version"
    _AIKORE_STEP=0
    _AIKORE_STEPS=$steps
    # In this shell (not a subshell): `set -e` ends the script at a failed
    # step, and what a step exports (the venv) stays for the app.
    install > >(tee install.log) 2>&1
    # tee's last lines reach the log before the `done` line.
    wait "$!" 2>/dev/null || true
    printf '%s\n' "$version" >.aikore-version
    printf '%s\n' "$stamp" >.aikore-install.stamp
    rm -f -- .aikore-update
    echo "[aikore-install] done: $version"
}
