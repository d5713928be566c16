package gitlab_test

import (
	"encoding/json"
	"reflect"
	"strings"
	"testing"

	"github.com/flotilla-ci/flotilla/host/jobs"
	"github.com/flotilla-ci/flotilla/host/jobs/gitlab"
)

// TestToJobCaches: the cache entries of a job payload, as GitLab's
// /api/v4/jobs/request sends them (key resolved and suffixed by the server), become
// the job's caches: fallback keys, untracked, paths, when, and a policy given as a
// variable expanded with the job's variables, as GitLab Runner expands it.
func TestToJobCaches(t *testing.T) {
	tests := []struct {
		name    string
		vars    string // the payload's variables, JSON
		cache   string // the payload's cache entries, JSON
		want    []jobs.Cache
		wantErr string
	}{
		{name: "every field", cache: `[{"key": "gems-main-protected", "untracked": true, "policy": "pull",
			"paths": ["vendor/ruby"], "when": "always", "fallback_keys": ["gems-$CI_DEFAULT_BRANCH", "gems"]}]`,
			want: []jobs.Cache{{Key: "gems-main-protected", FallbackKeys: []string{"gems-$CI_DEFAULT_BRANCH", "gems"},
				Paths: []string{"vendor/ruby"}, Untracked: true, Policy: "pull", When: "always"}}},
		{name: "several caches, defaults", cache: `[{"key": "0_Gemfile-1f2e-non_protected", "untracked": false, "policy": "pull-push",
			"paths": ["a"], "when": "on_success", "fallback_keys": []}, {"key": "b", "paths": ["b"]}]`,
			want: []jobs.Cache{{Key: "0_Gemfile-1f2e-non_protected", FallbackKeys: []string{}, Paths: []string{"a"}, Policy: "pull-push", When: "on_success"},
				{Key: "b", Paths: []string{"b"}, Policy: "pull-push"}}},
		{name: "policy variable", vars: `[{"key": "MODE", "value": "push"}, {"key": "POLICY", "value": "$MODE"}]`,
			cache: `[{"key": "k", "policy": "$POLICY", "paths": ["x"]}]`,
			want:  []jobs.Cache{{Key: "k", Paths: []string{"x"}, Policy: "push"}}},
		{name: "policy variable unset", cache: `[{"key": "k", "policy": "${POLICY}", "paths": ["x"]}]`,
			want: []jobs.Cache{{Key: "k", Paths: []string{"x"}, Policy: "pull-push"}}},
		{name: "policy variable with another value", vars: `[{"key": "POLICY", "value": "sometimes"}]`,
			cache:   `[{"key": "k", "policy": "$POLICY", "paths": ["x"]}]`,
			wantErr: `job 7: cache 0 (key "k"): cache policy $POLICY: unknown cache policy "sometimes" (GitLab Runner takes pull, push or pull-push)`},
		{name: "a masked value is not repeated", vars: `[{"key": "POLICY", "value": "hunter2-secret", "masked": true}]`,
			cache:   `[{"key": "k", "policy": "$POLICY", "paths": ["x"]}]`,
			wantErr: `job 7: cache 0 (key "k"): cache policy $POLICY: unknown cache policy "[MASKED]"`},
		{name: "unknown literal policy", cache: `[{"key": "k", "policy": "sometimes", "paths": ["x"]}]`,
			wantErr: `unknown cache policy "sometimes"`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if tt.vars == "" {
				tt.vars = "[]"
			}
			body := `{"id": 7, "token": "glcbt-x", "job_info": {"name": "rspec"}, "variables": ` + tt.vars + `, "cache": ` + tt.cache +
				`, "steps": [{"name": "script", "script": ["true"]}]}`
			var r gitlab.JobResponse
			if err := json.Unmarshal([]byte(body), &r); err != nil {
				t.Fatal(err)
			}
			j, err := r.ToJob("")
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("err = %v, want %q", err, tt.wantErr)
				}
				if strings.Contains(err.Error(), "hunter2") {
					t.Errorf("the error shows a masked value: %v", err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if !reflect.DeepEqual(j.Caches, tt.want) {
				t.Errorf("caches:\n got %+v\nwant %+v", j.Caches, tt.want)
			}
		})
	}
}

// TestToJobImageOptions: the image's and services' pull_policy and image:docker:user,
// which GitLab sends as the YAML held it (a bare uid arrives as a number).
func TestToJobImageOptions(t *testing.T) {
	tests := []struct {
		name, image string
		want        jobs.Image
	}{
		{"user and policies", `{"name": "alpine:3", "pull_policy": ["if-not-present", "always"], "executor_opts": {"docker": {"user": "dave", "platform": "amd64"}}}`,
			jobs.Image{Name: "alpine:3", PullPolicy: []string{"if-not-present", "always"}, User: "dave"}},
		{"numeric user", `{"name": "alpine:3", "executor_opts": {"docker": {"user": 1000}}}`, jobs.Image{Name: "alpine:3", User: "1000"}},
		{"uid:gid", `{"name": "alpine:3", "executor_opts": {"docker": {"user": "1000:1000"}}}`, jobs.Image{Name: "alpine:3", User: "1000:1000"}},
		{"none", `{"name": "alpine:3"}`, jobs.Image{Name: "alpine:3"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			body := `{"id": 7, "job_info": {"name": "j"}, "image": ` + tt.image +
				`, "services": [{"name": "redis:7", "pull_policy": ["never"]}], "steps": [{"name": "script", "script": ["true"]}]}`
			var r gitlab.JobResponse
			if err := json.Unmarshal([]byte(body), &r); err != nil {
				t.Fatal(err)
			}
			j, err := r.ToJob("")
			if err != nil {
				t.Fatal(err)
			}
			if !reflect.DeepEqual(j.Image, tt.want) {
				t.Errorf("image:\n got %+v\nwant %+v", j.Image, tt.want)
			}
			if len(j.Services) != 1 || !reflect.DeepEqual(j.Services[0].PullPolicy, []string{"never"}) {
				t.Errorf("services = %+v", j.Services)
			}
		})
	}
}
