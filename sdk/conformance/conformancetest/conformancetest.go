// Package conformancetest runs the conformance kit (sdk/conformance) from `go test`:
// Run makes each clause a subtest named by its ID, and Build compiles a plugin for the
// kit's binary mode. It is the only part of the kit that imports testing, as
// net/http/httptest is for net/http, so that the runner, which checks plugins on the
// command line, links no test code.
package conformancetest

import (
	"testing"
	"time"

	"github.com/flotilla-ci/flotilla/sdk/conformance"
)

// Run checks the plugin cfg names as part of a Go test: each clause is a subtest named
// by its ID, failing, skipped (with the reason) or passing as conformance.Check found
// it.
func Run(t *testing.T, cfg conformance.Config) {
	t.Helper()
	rep, err := conformance.Check(t.Context(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	for _, res := range rep.Results {
		t.Run(res.Clause, func(t *testing.T) {
			switch res.Status {
			case conformance.Fail:
				c, _ := conformance.Lookup(res.Clause)
				t.Errorf("%s: %s\n%s", res.Clause, c.Summary, res.Detail)
			case conformance.Skip:
				t.Skip(res.Detail)
			default:
				t.Logf("%s (%s)", res.Detail, res.Elapsed.Round(time.Millisecond))
			}
		})
	}
}
