package doctor

import (
	"bytes"
	"errors"
	"strings"
	"testing"

	"github.com/hashicorp/go-hclog"

	"github.com/flotilla-ci/flotilla/sdk/provider"
)

var findings = []Finding{
	{Check: "scale-in-protection", Severity: OK, Message: "on"},
	{Check: "az-rebalance", Severity: Warning, Message: "active", Fix: "suspend AZRebalance"},
	{Check: "scaling-policies", Severity: Error, Message: "2 policies", Fix: "delete them"},
}

func TestApply(t *testing.T) {
	var log bytes.Buffer
	err := Apply(hclog.New(&hclog.LoggerOptions{Output: &log}), findings)
	if !errors.Is(err, provider.ErrInvalidConfig) || !strings.Contains(err.Error(), "doctor scaling-policies: 2 policies (fix: delete them)") {
		t.Fatalf("Apply = %v", err)
	}
	if strings.Contains(err.Error(), "az-rebalance") || !strings.Contains(log.String(), "az-rebalance") {
		t.Fatalf("warning not logged (or returned): err=%v log=%s", err, log.String())
	}
	if err := Apply(nil, findings[:2]); err != nil {
		t.Fatalf("no errors, got %v", err)
	}
}

func TestReport(t *testing.T) {
	var out bytes.Buffer
	err := Report(&out, findings, false, nil)
	if err == nil || err.Error() != "1 check(s) failed: scaling-policies" {
		t.Fatalf("Report = %v", err)
	}
	for _, want := range []string{"OK      scale-in-protection", "WARNING az-rebalance", "fix: suspend AZRebalance", "ERROR   scaling-policies"} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("output lacks %q:\n%s", want, out.String())
		}
	}
	out.Reset()
	runErr := errors.New("describe failed")
	if err := Report(&out, findings[:1], true, runErr); err != runErr || !strings.Contains(out.String(), `"check": "scale-in-protection"`) {
		t.Fatalf("Report json = %v\n%s", err, out.String())
	}
}
