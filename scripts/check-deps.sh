#!/usr/bin/env bash
# Enforces the package boundaries of ARCHITECTURE.md:
#   - sdk/ imports no other package of this module;
#   - host/ never imports plugins/<cloud>, and the runner binary links no cloud SDK;
#   - a plugin never imports host/.
set -euo pipefail
mod=github.com/flotilla-ci/flotilla
fail=0
while read -r pkg imports; do
  for imp in $imports; do
    case "$pkg" in
      $mod/sdk|$mod/sdk/*)
        [[ $imp == $mod/* && $imp != $mod/sdk/* ]] && { echo "boundary: $pkg imports $imp (sdk/ must import nothing else of the repo)"; fail=1; } ;;
      $mod/host/*)
        [[ $imp =~ ^$mod/plugins/(aws|googlecloud|azure|nesting)(/|$) ]] && { echo "boundary: $pkg imports $imp (host/ must not link a cloud plugin)"; fail=1; } ;;
      $mod/plugins/*)
        [[ $imp == $mod/host/* ]] && { echo "boundary: $pkg imports $imp (a plugin must not import host/)"; fail=1; } ;;
    esac
  done
done < <(go list -f '{{.ImportPath}} {{join .Imports " "}} {{join .TestImports " "}}' ./...)
if go list ./host/cmd/runner >/dev/null 2>&1; then
  clouds=$(go list -deps ./host/cmd/runner | grep -E '^(github.com/aws/aws-sdk-go-v2|cloud.google.com/go|github.com/Azure/azure-sdk-for-go)' || true)
  [ -z "$clouds" ] || { echo "boundary: the runner binary links cloud SDKs:"; echo "$clouds"; fail=1; }
fi
[ $fail -eq 0 ] && echo "check-deps: boundaries hold"
exit $fail
