package pipeline

import (
	"strings"
	"testing"
)

// TestOnlyRefProject: an only/except ref may end in @project/path (GitLab's
// only:refs, "@project" suffix), a /regex/flags ref too. GitLab splits the ref at its
// first @ into pattern and project; the local run is taken as that project, so only
// the pattern decides.
func TestOnlyRefProject(t *testing.T) {
	branch := vars("CI_COMMIT_BRANCH=feature/x", "CI_COMMIT_REF_NAME=feature/x", "CI_PIPELINE_SOURCE=push")
	tag := vars("CI_COMMIT_TAG=v1.2", "CI_COMMIT_REF_NAME=v1.2", "CI_PIPELINE_SOURCE=push")
	tests := []struct {
		name   string
		filter string
		env    Env
		added  bool
	}{
		{"regex@project matches", "only: ['/.*/@gitlab-org/gitlab-runner']", Env{Predefined: branch}, true},
		{"regex@project misses", "only: ['/^release/@gitlab-org/gitlab-runner']", Env{Predefined: branch}, false},
		{"regex with flags@project", "only: ['/^FEATURE/i@group/proj']", Env{Predefined: branch}, true},
		// The project's last path element is made of regex flag letters: still a project.
		{"regex@project ending in flag letters", "only: ['/^feature/@group/sUmi']", Env{Predefined: branch}, true},
		{"regex@project under refs", "only:\n    refs: ['/^v\\d/@group/proj']", Env{Predefined: tag}, true},
		{"except regex@project", "except: ['/^feature\\//@group/proj']", Env{Predefined: branch}, false},
		{"except regex@project misses", "except: ['/^v\\d/@group/proj']", Env{Predefined: branch}, true},
		{"branches@project", "only: [branches@group/proj]", Env{Predefined: branch}, true},
		{"tags@project on a branch", "only: [tags@group/proj]", Env{Predefined: branch}, false},
		{"regex without a project", "only: ['/^feature/']", Env{Predefined: branch}, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ev := evaluate(t, "j:\n  script: [x]\n  "+tt.filter+"\n", tt.env)
			if d := ev.Decision("j"); d.Added != tt.added {
				t.Errorf("added = %v (%s), want %v", d.Added, d.Reason, tt.added)
			}
		})
	}
}

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
