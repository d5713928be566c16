#!/usr/bin/env bash
# Enforces the package boundaries of docs/architecture.md, for every package there is
# now or will be (no plugin is named here, so a new one is covered):
#   - sdk/ imports no other package of this module;
#   - host/ imports, of plugins/, only the embedded default plugins/local;
#   - host/jobs/ (a job's model and its sources) imports, of host/, only host/jobs/,
#     host/version and host/internal/: executors and the pool build on jobs, not the
#     other way round;
#   - a plugin (plugins/<name>) never imports host/ nor another plugin; what plugins
#     share lives in plugins/internal/;
#   - nesting/ (the VM daemon, run on VM hosts) imports of host/ only host/version, and
#     nothing of plugins/: the runner and plugins use it, not the other way round;
#   - the runner binary links no cloud compute SDK (instances are the plugins' business;
#     only the object-storage clients of the shared cache are linked), and no package
#     of this module in it imports
#     testing (test helpers live in *test packages, as net/http/httptest does).
set -euo pipefail
mod=github.com/flotilla-ci/flotilla
fail=0
say() { echo "boundary: $*"; fail=1; }

# plugin_of prints the plugin a package belongs to (plugins/<name>), or nothing.
plugin_of() {
  local rest=${1#"$mod/plugins/"}
  [ "$rest" != "$1" ] || return 0
  local name=${rest%%/*}
  [ "$name" = internal ] || echo "$name"
}

while read -r pkg imports; do
  own=$(plugin_of "$pkg")
  for imp in $imports; do
    [[ $imp == $mod/* ]] || continue
    case "$pkg" in
      $mod/sdk|$mod/sdk/*)
        [[ $imp != $mod/sdk/* ]] && say "$pkg imports $imp (sdk/ must import nothing else of the repo)" ;;
      $mod/host/*)
        if [[ $imp == $mod/plugins/* && $imp != $mod/plugins/local && $imp != $mod/plugins/local/* ]]; then
          say "$pkg imports $imp (host/ links only the embedded plugins/local)"
        fi
        if [[ $pkg == $mod/host/jobs || $pkg == $mod/host/jobs/* ]] && [[ $imp == $mod/host/* ]] &&
          [[ $imp != $mod/host/jobs && $imp != $mod/host/jobs/* && $imp != $mod/host/version && $imp != $mod/host/internal/* ]]; then
          say "$pkg imports $imp (host/jobs/ must not import what builds on it)"
        fi ;;
      $mod/nesting|$mod/nesting/*)
        if [[ $imp == $mod/plugins/* ]] || { [[ $imp == $mod/host/* ]] && [[ $imp != $mod/host/version ]]; }; then
          say "$pkg imports $imp (nesting/ stands alone: of host/ only host/version, nothing of plugins/)"
        fi ;;
      $mod/plugins/*)
        [[ $imp == $mod/host/* ]] && say "$pkg imports $imp (a plugin must not import host/)"
        other=$(plugin_of "$imp")
        if [ -n "$own" ] && [ -n "$other" ] && [ "$other" != "$own" ]; then
          say "$pkg imports $imp (a plugin must not import another plugin; share code in plugins/internal/)"
        fi ;;
    esac
  done
done < <(go list -f '{{.ImportPath}} {{join .Imports " "}} {{join .TestImports " "}}' ./...)

if go list ./host/cmd/runner >/dev/null 2>&1; then
  clouds=$(go list -deps ./host/cmd/runner |
    grep -E '^(github.com/aws/aws-sdk-go-v2/service/(ec2|autoscaling|ssm)|cloud.google.com/go/compute/apiv|github.com/Azure/azure-sdk-for-go/sdk/resourcemanager)' || true)
  [ -z "$clouds" ] || say "the runner binary links cloud compute SDKs (plugins' business):
$clouds"
  # Third-party packages may import testing (go-plugin does, for its own test
  # helpers, which the linker drops); ours must not.
  testers=$(go list -deps -f '{{.ImportPath}} {{join .Imports " "}}' ./host/cmd/runner |
    awk -v mod="$mod/" 'index($1, mod) == 1 { for (i = 2; i <= NF; i++) if ($i == "testing") print $1 }')
  [ -z "$testers" ] || say "the runner binary links test code: these packages import testing (move it to a *test package):
$testers"
fi
[ $fail -eq 0 ] && echo "check-deps: boundaries hold"
exit $fail
