package pipeline

import (
	"testing"
)

func TestParseJobKeywords(t *testing.T) {
	p, err := Parse(".gitlab-ci.yml", []byte(`unit:
  resource_group: production
  interruptible: true
  coverage: '/total: \d+\.\d+%/'
  script: x
`))
	if err != nil {
		t.Fatal(err)
	}
	j := p.Job("unit")
	if j.ResourceGroup != "production" {
		t.Errorf("resource_group = %q", j.ResourceGroup)
	}
	if j.Coverage == nil || j.Coverage.FindString("total: 81.3%") != "total: 81.3%" {
		t.Errorf("coverage = %v", j.Coverage)
	}
	if len(p.Warnings) != 0 {
		t.Errorf("warnings for supported keywords: %v", p.Warnings)
	}
}

func TestParseJobKeywordErrors(t *testing.T) {
	tests := []struct{ name, yaml, want string }{
		{"coverage without slashes", "j:\n  coverage: 'total: \\d+'\n  script: x\n", `2:13: j.coverage: coverage "total: \\d+" is not a /regular expression/`},
		{"coverage not RE2", "j:\n  coverage: '/(?<=total)\\d+/'\n  script: x\n", `2:13: j.coverage: coverage: error parsing regexp`},
		{"resource_group not a string", "j:\n  resource_group: [a]\n  script: x\n", `2:19: j.resource_group: expected a string, got a list`},
		{"interruptible not a boolean", "j:\n  interruptible: maybe\n  script: x\n", `2:18: j.interruptible: expected true or false`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			wantParseError(t, tt.yaml, tt.want)
		})
	}
}
