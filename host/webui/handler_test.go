package webui

import (
	"bufio"
	"crypto/sha256"
	"encoding/base64"
	"encoding/json"
	"github.com/flotilla-ci/flotilla/host/taskscaler"
	"io"
	"net/http"
	"net/http/httptest"
	"regexp"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/flotilla-ci/flotilla/host/taskscaler/clock"
)

func serve(t *testing.T, o Options) *httptest.Server {
	t.Helper()
	if o.Loopback == nil {
		o.Loopback = func() bool { return true }
	}
	srv := httptest.NewServer(Handler(o))
	t.Cleanup(srv.Close)
	return srv
}

// noRedirect is a client that shows redirects instead of following them.
// Its timeout ends a stream served where an error was due.
var noRedirect = &http.Client{Timeout: 10 * time.Second, CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}

func fetch(t *testing.T, req *http.Request) (*http.Response, string) {
	t.Helper()
	resp, err := noRedirect.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return resp, string(b)
}

func getPage(t *testing.T, url string) string {
	t.Helper()
	req, _ := http.NewRequest("GET", url, nil)
	resp, body := fetch(t, req)
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("GET %s: %d\n%s", url, resp.StatusCode, body)
	}
	return body
}

// TestPageShowsTheSections renders the fixture's runner entry and finds every section
// the operator needs, with the values of the fixed status.
func TestPageShowsTheSections(t *testing.T) {
	body := getPage(t, serve(t, Options{Snapshot: fixture}).URL+"/")
	tests := []struct {
		what string
		want []string
	}{
		{"document", []string{`<meta name="viewport" content="width=device-width, initial-scale=1">`, `<noscript><meta http-equiv="refresh"`}},
		{"header", []string{"s_0123456789ab", "updated 14:30:00 UTC", "version v1.2.3"}},
		{"runner", []string{`<section class="runner" id="r0" data-runner="e2e">`, "runner FixtureSe · instance · https://gitlab.example.com/"}},
		{"policy", []string{"policy 2 of 2", "* 8-17 * * mon-fri (Europe/Berlin)", "forecast", "3 idle slots (2 instances): <span class=\"why\">forecast: 2.4 jobs expected",
			"1m30s (boot 2m00s from measured p90 of 14 boots", "3.00 jobs/min (last 30m)", "40, 3 later than the target", "2 jobs per instance, max 4 instances (8 jobs)",
			"2 running, 1 waiting, 1 reserved, 0 idle slots"}},
		{"breaker", []string{`class="card breaker" data-state="open"`, "3 consecutive failed creations; open until 14:30:40",
			"last failure at 14:29:40: Increase: quota exceeded for instances", "3 updates failed in a row"}},
		{"pool", []string{`<tr class="instance" data-instance-id="inst-ready-1" data-phase="ready">`, "42m00s", "2 of 2", "3 of 10", "healthy",
			`data-instance-id="inst-booting-2" data-phase="booting"`, "+1 reserved", "2 readiness check failures: ssh: handshake failed: connection refused; next check 14:30:05",
			`data-phase="removing"`, "removing: max_use_count 10 reached", "10 of 10",
			"<b>created</b> requesting 1 instances: 1 required, 0 present"}},
		{"gone", []string{"Recently removed (1)", `<tr class="gone-instance" data-instance-id="inst-gone-0">`, "idle for 5m0s beyond the idle target"}},
		{"charts", []string{`id="r0-chart-instances"`, `id="r0-chart-demand"`, `id="r0-chart-wait"`, "Instances by state", "Job wait for a slot",
			`<path class="area s-ready"`, `<path class="line s-deleting"`, "jobs waiting for a slot <b>1</b>", "last 6h00m, times in UTC", ">09:00</text>"}},
		{"jobs", []string{`<tr class="job" data-job-id="1004" data-state="waiting">`, `data-job-id="1003" data-state="running"`,
			`data-job-id="1002" data-state="failed"`, `data-job-id="1001" data-state="passed"`, "script_failure",
			`<td data-label="wait" class="wait">4.0s</td><td data-label="run time" class="run">1m06s</td>`,
			`<td data-label="wait" class="wait">6.0s</td><td data-label="run time" class="run">–</td>`}},
		{"decisions", []string{`<li class="decision shortfall">13:45:00`, "requested 1 of 2 wanted, 1 accepted", "max_instances 4 reached",
			"update ×3 until 14:29:55", "no new instance"}},
	}
	for _, tt := range tests {
		t.Run(tt.what, func(t *testing.T) {
			for _, w := range tt.want {
				if !strings.Contains(body, w) {
					t.Errorf("page lacks %q", w)
				}
			}
		})
	}
	// The newest decision comes first.
	if i, j := strings.Index(body, "no new instance"), strings.Index(body, "requested 1 of 2"); i > j {
		t.Errorf("decisions not newest first")
	}
}

// TestPageWithoutRunners says so instead of showing an empty page.
func TestPageWithoutRunners(t *testing.T) {
	body := getPage(t, serve(t, Options{Snapshot: func() Snapshot { return Snapshot{Time: t0, Draining: true} }}).URL+"/")
	for _, w := range []string{`id="no-runners"`, `id="draining"`} {
		if !strings.Contains(body, w) {
			t.Errorf("page lacks %q", w)
		}
	}
}

// TestPageLeaksNoSecret renders a state with secrets around it — the runner token, a
// URL with a password and a private token, markup in names and errors — and finds
// none of them on the page or in its updates, and the markup escaped.
func TestPageLeaksNoSecret(t *testing.T) {
	snap := func() Snapshot {
		s := fixture()
		r := &s.Runners[0]
		r.URL = "https://deploy:hunter2-password@gitlab.example.com/?private_token=glpat-query-secret#frag-secret"
		r.Jobs[0].Name = `<script>alert("job")</script>`
		r.Status.InstanceList[1].HealthError = `<img src=x onerror=alert(1)>`
		r.Decisions[0].Reason = `"><svg onload=alert(2)>`
		return s
	}
	srv := serve(t, Options{Snapshot: snap})
	body := getPage(t, srv.URL+"/")
	first := openEvents(t, srv.URL+"/events").message(t)
	for name, text := range map[string]string{"page": body, "first update": strings.Join(mapValues(first), "\n")} {
		for _, secret := range []string{fixtureToken, strings.TrimPrefix(fixtureToken, "glrt-"), "hunter2-password", "deploy:", "glpat-query-secret", "frag-secret",
			`<script>alert`, `<img src=x`, `<svg onload`} {
			if strings.Contains(text, secret) {
				t.Errorf("%s shows %q", name, secret)
			}
		}
		for _, escaped := range []string{`&lt;script&gt;alert(&#34;job&#34;)&lt;/script&gt;`, `&lt;img src=x onerror=alert(1)&gt;`} {
			if !strings.Contains(text, escaped) {
				t.Errorf("%s lacks the escaped %q", name, escaped)
			}
		}
	}
	if !strings.Contains(body, "runner FixtureSe ") {
		t.Errorf("page lacks the short token")
	}
}

func mapValues(m map[string]string) []string {
	var out []string
	for _, v := range m {
		out = append(out, v)
	}
	return out
}

// TestPageHeaders: nothing but the page's own inline script and style may run or load.
func TestPageHeaders(t *testing.T) {
	req, _ := http.NewRequest("GET", serve(t, Options{Snapshot: fixture}).URL+"/", nil)
	resp, body := fetch(t, req)
	csp := resp.Header.Get("Content-Security-Policy")
	for _, w := range []string{"default-src 'none'", "script-src " + scriptHash, "style-src " + styleHash, "connect-src 'self'", "frame-ancestors 'none'"} {
		if !strings.Contains(csp, w) {
			t.Errorf("CSP %q lacks %q", csp, w)
		}
	}
	// The hashes are those of the inline script and style the page carries (and
	// there is one of each).
	for _, tag := range []string{"script", "style"} {
		parts := regexp.MustCompile(`(?s)<`+tag+`>(.*?)</`+tag+`>`).FindAllStringSubmatch(body, -1)
		if len(parts) != 1 {
			t.Fatalf("page has %d <%s> elements, want 1", len(parts), tag)
		}
		sum := sha256.Sum256([]byte(parts[0][1]))
		if h := "'sha256-" + base64.StdEncoding.EncodeToString(sum[:]) + "'"; !strings.Contains(csp, tag+"-src "+h) {
			t.Errorf("CSP %q does not allow the page's %s (%s)", csp, tag, h)
		}
	}
	if h := resp.Header.Get("Cache-Control"); h != "no-store" {
		t.Errorf("Cache-Control %q", h)
	}
	// No external asset: every src and href is data: or relative to the page.
	for _, m := range regexp.MustCompile(`(?:src|href)="([^"]*)"`).FindAllStringSubmatch(body, -1) {
		if !strings.HasPrefix(m[1], "data:") {
			t.Errorf("page loads %q", m[1])
		}
	}
	if strings.Contains(body, "http://") || strings.Contains(body, "//cdn") {
		t.Errorf("page names another origin")
	}
}

// TestAccess is who may see the page and its events: anyone on a loopback
// listen_address without web_token; with web_token only who shows it; nobody on
// another address without one.
func TestAccess(t *testing.T) {
	const token = "0123456789abcdef-web-token"
	tests := []struct {
		name       string
		loopback   bool
		token      string
		path       string
		bearer     string
		cookie     string
		wantCode   int
		wantCookie bool
		wantLoc    string
		wantBody   string
	}{
		{name: "loopback, no token set", loopback: true, path: "/", wantCode: 200},
		{name: "loopback, no token set, events", loopback: true, path: "/events", wantCode: 200},
		{name: "any address, no token set", path: "/", wantCode: 403, wantBody: "Set web_token in config.toml"},
		{name: "any address, no token set, events", path: "/events", wantCode: 403, wantBody: "web_token"},
		{name: "any address, no token set, even with one offered", path: "/?token=guess", wantCode: 403},
		{name: "token set, none shown", token: token, path: "/", wantCode: 401, wantBody: "open /?token=<web_token> once"},
		{name: "token set, loopback too", loopback: true, token: token, path: "/", wantCode: 401},
		{name: "wrong token in the address", token: token, path: "/?token=nope", wantCode: 401, wantBody: "not web_token"},
		{name: "token in the address: cookie, then off the address", token: token, path: "/?token=" + token, wantCode: 303, wantCookie: true, wantLoc: "./"},
		{name: "other query kept", token: token, path: "/?a=1&token=" + token, wantCode: 303, wantCookie: true, wantLoc: "./?a=1"},
		{name: "token in the events address", token: token, path: "/events?token=" + token, wantCode: 200, wantCookie: true},
		{name: "cookie", token: token, path: "/", cookie: cookieValue(token), wantCode: 200},
		{name: "cookie, events", token: token, path: "/events", cookie: cookieValue(token), wantCode: 200},
		{name: "cookie of an older token", token: token, path: "/", cookie: cookieValue("an-older-web-token"), wantCode: 401},
		{name: "cookie holding the token itself", token: token, path: "/", cookie: token, wantCode: 401},
		{name: "bearer", token: token, path: "/", bearer: token, wantCode: 200},
		{name: "wrong bearer", token: token, path: "/", bearer: "nope", wantCode: 401},
		{name: "other paths", loopback: true, path: "/nothing-here", wantCode: 404},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			srv := serve(t, Options{Snapshot: fixture, Token: func() string { return tt.token }, Loopback: func() bool { return tt.loopback }})
			req, _ := http.NewRequest("GET", srv.URL+tt.path, nil)
			if tt.bearer != "" {
				req.Header.Set("Authorization", "Bearer "+tt.bearer)
			}
			if tt.cookie != "" {
				req.AddCookie(&http.Cookie{Name: CookieName, Value: tt.cookie})
			}
			var resp *http.Response
			var body string
			if strings.HasPrefix(tt.path, "/events") && tt.wantCode == 200 {
				// A stream: its status and the first message are enough.
				var err error
				if resp, err = noRedirect.Do(req); err != nil {
					t.Fatal(err)
				}
				resp.Body.Close()
			} else {
				resp, body = fetch(t, req)
			}
			if resp.StatusCode != tt.wantCode {
				t.Fatalf("status %d, want %d\n%s", resp.StatusCode, tt.wantCode, body)
			}
			if !strings.Contains(body, tt.wantBody) {
				t.Errorf("body lacks %q:\n%s", tt.wantBody, body)
			}
			if tt.wantCode == 200 && !strings.HasPrefix(tt.path, "/events") && !strings.Contains(body, `data-runner="e2e"`) {
				t.Errorf("page not served:\n%s", body)
			}
			var got *http.Cookie
			for _, c := range resp.Cookies() {
				if c.Name == CookieName {
					got = c
				}
			}
			if tt.wantCookie != (got != nil) {
				t.Fatalf("cookie %v, want one: %v", got, tt.wantCookie)
			}
			if got != nil {
				if got.Value != cookieValue(tt.token) || !got.HttpOnly || got.SameSite != http.SameSiteStrictMode || got.Path != "/" {
					t.Errorf("cookie %+v", got)
				}
				if strings.Contains(got.Value, tt.token) {
					t.Errorf("cookie holds the token")
				}
			}
			if loc := resp.Header.Get("Location"); loc != tt.wantLoc {
				t.Errorf("Location %q, want %q", loc, tt.wantLoc)
			}
		})
	}
}

// eventStream reads the messages of an event stream.
type eventStream struct {
	next     chan eventResult
	comments chan string // the comments (a tick that changed nothing)
}

type eventResult struct {
	msg map[string]string
	err error
}

func openEvents(t *testing.T, url string) *eventStream {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { resp.Body.Close() })
	if ct := resp.Header.Get("Content-Type"); resp.StatusCode != 200 || ct != "text/event-stream" {
		t.Fatalf("GET %s: %d, Content-Type %q", url, resp.StatusCode, ct)
	}
	s := &eventStream{next: make(chan eventResult), comments: make(chan string, 100)}
	go func() {
		r := bufio.NewReader(resp.Body)
		var data string
		for {
			line, err := r.ReadString('\n')
			if err != nil {
				s.next <- eventResult{err: err}
				return
			}
			line = strings.TrimRight(line, "\n")
			switch {
			case strings.HasPrefix(line, ":"):
				s.comments <- line
			case strings.HasPrefix(line, "data: "):
				data += strings.TrimPrefix(line, "data: ")
			case line == "" && data != "":
				var m map[string]string
				err := json.Unmarshal([]byte(data), &m)
				data = ""
				s.next <- eventResult{m, err}
			}
		}
	}()
	return s
}

// message waits for the next message.
func (s *eventStream) message(t *testing.T) map[string]string {
	t.Helper()
	select {
	case r := <-s.next:
		if r.err != nil {
			t.Fatalf("event stream: %v", r.err)
		}
		return r.msg
	case <-time.After(20 * time.Second):
		t.Fatal("no event")
		return nil
	}
}

func keys(m map[string]string) []string {
	var out []string
	for k := range m {
		out = append(out, k)
	}
	slices.Sort(out)
	return out
}

// TestEventsSendWhatChanged follows the stream as the state changes: first every
// section, then only those that changed, nothing when nothing did, and all of them
// again when the runner entries change (a reload).
func TestEventsSendWhatChanged(t *testing.T) {
	clk := clock.NewFake(t0)
	var mu sync.Mutex
	snap := fixture()
	srv := serve(t, Options{Interval: 2 * time.Second, Clock: clk, Snapshot: func() Snapshot {
		mu.Lock()
		defer mu.Unlock()
		return snap
	}})
	change := func(f func(s *Snapshot)) {
		mu.Lock()
		f(&snap)
		mu.Unlock()
	}
	// tick waits until the stream waits for its next update, then lets it come.
	tick := func() {
		clk.BlockUntil(1)
		clk.Advance(2 * time.Second)
	}
	s := openEvents(t, srv.URL+"/events")

	if m := s.message(t); m["runners"] == "" || !strings.Contains(m["updated"], "14:30:00") || !strings.Contains(m["runners"], `data-job-id="1003" data-state="running"`) {
		t.Errorf("first message %v, want the runners and the header", keys(m))
	}

	change(func(s *Snapshot) {
		j := &s.Runners[0].Jobs[1]
		j.State, j.Finished = JobPassed, s.Time
	})
	tick()
	if m := s.message(t); !slices.Equal(keys(m), []string{"r0-jobs"}) || !strings.Contains(m["r0-jobs"], `data-job-id="1003" data-state="passed"`) {
		t.Errorf("after a job finished: %v, want r0-jobs alone, with the job passed", keys(m))
	}

	tick()
	select {
	case <-s.comments:
	case m := <-s.next:
		t.Errorf("a tick that changed nothing sent %v, want a comment", keys(m.msg))
	case <-time.After(20 * time.Second):
		t.Errorf("a tick that changed nothing sent no keep-alive comment")
	}

	change(func(s *Snapshot) { s.Time = s.Time.Add(4 * time.Second) })
	tick()
	if m := s.message(t); !strings.Contains(m["updated"], "14:30:04") || m["runners"] != "" || !strings.Contains(m["r0-pool"], "42m04s") {
		t.Errorf("after time moved: %v, want the header and the ages, not the whole page", keys(m))
	}

	change(func(s *Snapshot) {
		r := s.Runners[0]
		r.Name = "second"
		s.Runners = append(s.Runners, r)
	})
	tick()
	if m := s.message(t); !strings.Contains(m["runners"], `data-runner="second"`) || !strings.Contains(m["runners"], `id="r1-jobs"`) {
		t.Errorf("after a runner was added: %v, want the runners", keys(m))
	}
}

// TestEventsStopWithTheClient: the stream ends when its client goes.
func TestEventsStopWithTheClient(t *testing.T) {
	clk := clock.NewFake(t0)
	done := make(chan struct{})
	h := Handler(Options{Snapshot: fixture, Clock: clk, Loopback: func() bool { return true }})
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		h.ServeHTTP(w, r)
		close(done)
	}))
	defer srv.Close()
	resp, err := http.Get(srv.URL + "/events")
	if err != nil {
		t.Fatal(err)
	}
	clk.BlockUntil(1) // the first message is out and the stream waits
	resp.Body.Close()
	select {
	case <-done:
	case <-time.After(20 * time.Second):
		t.Fatal("the events handler did not return after the client left")
	}
}

// TestPageShowsASharedPool: a pool several runner managers share says who they are,
// which leads, and warns when this manager is cut off.
func TestPageShowsASharedPool(t *testing.T) {
	tests := []struct {
		name string
		co   taskscaler.Coordination
		want []string
	}{
		{"led here", taskscaler.Coordination{Backend: "etcd", Self: "s_a", Leader: "s_a", Connected: true,
			Managers: []taskscaler.ManagerEntry{{ID: "s_a", Jobs: 2}, {ID: "s_b", Jobs: 1}}},
			[]string{`<p class="sub shared">Shared through etcd by 2 managers; leader s_a (this manager); slots held: s_a 2, s_b 1</p>`}},
		{"cut off", taskscaler.Coordination{Backend: "etcd", Self: "s_b", Error: "read the coordination state from etcd: context deadline exceeded"},
			[]string{"leader none elected", "this manager is not connected to etcd: it takes no jobs until it is", "context deadline exceeded"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			snap := func() Snapshot {
				s := fixture()
				co := tt.co
				s.Runners[0].Status.Coordination = &co
				return s
			}
			body := getPage(t, serve(t, Options{Snapshot: snap}).URL+"/")
			for _, w := range tt.want {
				if !strings.Contains(body, w) {
					t.Errorf("page lacks %q", w)
				}
			}
		})
	}
}
