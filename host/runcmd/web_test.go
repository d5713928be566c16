package runcmd

import (
	"bufio"
	"fmt"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/flotilla-ci/flotilla/host/jobs/gitlab"
	"github.com/flotilla-ci/flotilla/host/jobs/gitlab/gitlabtest"
	"github.com/flotilla-ci/flotilla/sdk/eventually"
)

// TestOperatorPageShowsAJob runs a job with a masked variable on the real service and
// reads the operator's page: the runner entry, its instance, its policy and decisions,
// the job passed with its wait and run time; no token and no masked value on the page
// or in its update stream.
func TestOperatorPageShowsAJob(t *testing.T) {
	e := start(t, 2, "")
	id := e.enqueue("page-job", []string{"echo secret is $PAGE_SECRET", "sleep 0.5"}, nil,
		gitlab.JobVariable{Key: "PAGE_SECRET", Value: "masked-page-s3cret", Masked: true})
	if j := e.wait(t, id); j.State != gitlabtest.Success {
		t.Fatalf("job: %s\n%s", j.State, j.Trace)
	}
	base := "http://" + e.svc.Addr()
	var body string
	// Decisions are taken from the pool each second.
	eventually.NoError(t, "the page to show the job passed and a decision", 30*time.Second, func() error {
		code, b := get(t, base+"/")
		if body = b; code != http.StatusOK || !strings.Contains(body, fmt.Sprintf(`data-job-id="%d" data-state="passed"`, id)) ||
			!strings.Contains(body, `<li class="decision`) {
			return fmt.Errorf("%d:\n%s", code, body)
		}
		return nil
	})
	for _, w := range []string{`data-runner="e2e"`, "runner e2e-token · instance", `<tr class="instance" data-instance-id="`, "policy 1 of 1",
		"2 jobs per instance, max 2 instances (4 jobs)", `class="card breaker" data-state="closed"`, "page-job",
		`id="r0-chart-instances"`} {
		if !strings.Contains(body, w) {
			t.Errorf("page lacks %q", w)
		}
	}
	// The update stream's first message.
	resp, err := http.Get(base + "/events")
	if err != nil {
		t.Fatal(err)
	}
	var first string
	r := bufio.NewReader(resp.Body)
	for first == "" {
		line, err := r.ReadString('\n')
		if err != nil {
			t.Fatalf("events: %v", err)
		}
		first, _ = strings.CutPrefix(strings.TrimSpace(line), "data: ")
		if strings.HasPrefix(line, "retry:") {
			first = ""
		}
	}
	resp.Body.Close()
	if !strings.Contains(first, fmt.Sprintf(`data-job-id=\"%d\"`, id)) {
		t.Errorf("first update lacks the job:\n%s", first)
	}
	for name, text := range map[string]string{"page": body, "update": first} {
		for _, secret := range []string{runnerToken, "glcbt-job-", "masked-page-s3cret", "gitlab-ci-token"} {
			if strings.Contains(text, secret) {
				t.Errorf("%s shows %q", name, secret)
			}
		}
	}
}

// TestOperatorPageAccess: the page is served without a token on a loopback
// listen_address only, needs web_token when it is set, and answers 403 on another
// address without one, while /metrics, /healthz and /status answer as before.
func TestOperatorPageAccess(t *testing.T) {
	const token = "page-token-0123456789"
	tests := []struct {
		name   string
		listen string
		token  string
		want   map[string]int // path → status, without credentials
	}{
		{"loopback", "127.0.0.1:0", "", map[string]int{"/": 200, "/metrics": 200, "/healthz": 200, "/status": 200, "/nothing": 404}},
		{"any address, no token", "0.0.0.0:0", "", map[string]int{"/": 403, "/events": 403, "/metrics": 200, "/healthz": 200, "/status": 200}},
		{"any address, token", "0.0.0.0:0", token, map[string]int{"/": 401, "/events": 401, "/metrics": 200, "/healthz": 200, "/status": 200}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			e := startWith(t, func(url, root string) string {
				c := strings.Replace(configText(url, root, 1, ""), `listen_address = "127.0.0.1:0"`, fmt.Sprintf("listen_address = %q", tt.listen), 1)
				if tt.token != "" {
					c = strings.Replace(c, "\n[[runners]]", fmt.Sprintf("web_token = %q\n\n[[runners]]", tt.token), 1)
				}
				return c
			})
			_, port, err := net.SplitHostPort(e.svc.Addr())
			if err != nil {
				t.Fatal(err)
			}
			base := "http://127.0.0.1:" + port // only ever reached on loopback
			// The client's timeout ends an event stream served where an error was due.
			client := &http.Client{Timeout: 10 * time.Second}
			for path, want := range tt.want {
				resp, err := client.Get(base + path)
				if err != nil {
					t.Errorf("GET %s: %v, want %d", path, err, want)
					continue
				}
				resp.Body.Close()
				if resp.StatusCode != want {
					t.Errorf("GET %s: %d, want %d", path, resp.StatusCode, want)
				}
			}
			if tt.token == "" {
				return
			}
			req, _ := http.NewRequest("GET", base+"/", nil)
			req.Header.Set("Authorization", "Bearer "+token)
			resp, err := client.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			resp.Body.Close()
			if resp.StatusCode != 200 {
				t.Errorf("GET / with the token: %d", resp.StatusCode)
			}
		})
	}
}
