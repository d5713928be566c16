package pipeline

import (
	"strings"
	"testing"
)

// TestOnlyRefProjectErrors: a regex ref is still checked, the part before the first
// @ being the pattern; the error names the whole ref and the pattern GitLab would use.
func TestOnlyRefProjectErrors(t *testing.T) {
	tests := []struct{ y, want string }{
		{"j:\n  script: [x]\n  only: ['/[/@group/proj']\n", `j.only: ref pattern /[/@group/proj: the pattern before the first @ (which starts the project) is /[/: error parsing regexp`},
		{"j:\n  script: [x]\n  only: ['/^a/x@group/proj']\n", `j.only: ref pattern /^a/x@group/proj: the pattern before the first @ (which starts the project) is /^a/x: unknown flag 'x'`},
		// An @ inside the regex ends the pattern, as in GitLab.
		{"j:\n  script: [x]\n  only: ['/^user@host$/']\n", `j.only: ref pattern /^user@host$/: the pattern before the first @ (which starts the project) is /^user: expected /regex/ with a closing slash`},
	}
	for _, tt := range tests {
		_, err := Parse(".gitlab-ci.yml", []byte(tt.y))
		if err == nil || !strings.Contains(err.Error(), tt.want) {
			t.Errorf("%q:\n got %v\nwant %s", tt.y, err, tt.want)
		}
	}
}
