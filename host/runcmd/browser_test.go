package runcmd

import (
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/flotilla-ci/flotilla/host/internal/browsertest"
	"github.com/flotilla-ci/flotilla/host/jobs/gitlab/gitlabtest"
	"github.com/flotilla-ci/flotilla/host/webui"
)

// TestBrowserOperatorPage opens the operator's page of a running `runner run` (local
// plugin, test GitLab) in headless Chromium and watches it without reloading while
// jobs come and go: an instance appears, a job shows running and then passed, another
// failed with its reason, and the instance that ran the first job goes (max_use_count
// 1). It saves operator-page.png (1280 wide) and operator-page-phone.png (390 wide),
// checks that the page without JavaScript shows the same sections, and that no
// request left 127.0.0.1.
func TestBrowserOperatorPage(t *testing.T) {
	b := browsertest.Start(t)
	e := startWith(t, func(url, root string) string {
		c := configText(url, root, 2, "")
		c = strings.Replace(c, "capacity_per_instance = 2", "capacity_per_instance = 1\n    max_use_count = 1", 1)
		return strings.Replace(c, `idle_time = "5m"`, `idle_time = "2s"`, 1)
	}, func(o *Options) {
		// A sample each second, so that the charts have a few by the screenshots.
		o.WebRecorder = webui.RecorderOptions{Every: time.Second}
		o.WebInterval = 300 * time.Millisecond
	})
	base := "http://" + e.svc.Addr()
	const wait = 60 * time.Second

	p := b.Open(t, base+"/", 1280, 900)
	p.Eval(t, "window.notReloaded = true", nil)
	p.WaitGone(t, `body[data-live="off"]`, wait) // the event stream is open
	// The request loop's reservation brings up the first instance.
	p.WaitText(t, "#r0-pool .pool-size", "1 instance", wait)
	p.WaitText(t, `#r0-pool tr.instance[data-phase="ready"]`, "ready", wait)

	buildID := e.enqueue("build", []string{"echo building", "sleep 2", "echo built"}, nil)
	job := fmt.Sprintf(`#r0-jobs tr.job[data-job-id="%d"]`, buildID)
	p.WaitText(t, job, "running", wait)
	instance := p.Text(t, job+" td.id")
	if instance == "" {
		t.Fatalf("the running job names no instance: %q", p.Text(t, job))
	}
	row := fmt.Sprintf(`#r0-pool tr.instance[data-instance-id=%q]`, instance)
	if got := p.Text(t, row+" td.slots"); !strings.HasPrefix(got, "1 of 1") {
		t.Errorf("the job's instance shows slots %q, want 1 of 1 in use", got)
	}
	lintID := e.enqueue("lint", []string{"echo linting", "exit 1"}, nil)
	p.WaitText(t, job, "passed", wait)
	if got := p.Text(t, job+" td.run"); got == "" || got == "–" {
		t.Errorf("passed job shows run time %q", got)
	}
	// Its one use done (max_use_count 1), the instance is removed and leaves the pool
	// for the list of removed ones.
	p.WaitGone(t, row, wait)
	if n := p.Count(t, fmt.Sprintf(`#r0-pool tr.gone-instance[data-instance-id=%q]`, instance)); n != 1 {
		t.Errorf("the removed instance is %d times in the removed list, want once", n)
	}
	lint := fmt.Sprintf(`#r0-jobs tr.job[data-job-id="%d"]`, lintID)
	p.WaitText(t, lint, "failed", wait)
	if got := p.Text(t, lint+" td.why"); got != "script_failure" {
		t.Errorf("failed job shows reason %q, want script_failure", got)
	}
	for _, id := range []int64{buildID, lintID} {
		if j := e.wait(t, id); (id == buildID) != (j.State == gitlabtest.Success) {
			t.Errorf("job %d on GitLab: %s", id, j.State)
		}
	}
	// Scaling decisions with their reasons, and in each instance's history why it was
	// created.
	p.WaitGone(t, "#r0-decisions p.empty", wait)
	if got := p.Text(t, "#r0-decisions li.decision"); !strings.Contains(got, ": ") {
		t.Errorf("decision without a reason: %q", got)
	}
	var history string
	p.Eval(t, `document.querySelector("#r0-pool tr.instance ol.history").textContent`, &history)
	if !strings.Contains(history, "created") || !strings.Contains(history, "required") {
		t.Errorf("instance history %q lacks why it was created", history)
	}
	// A second wave, more than the two instances take at once: jobs wait for new
	// instances (max_use_count 1), which the charts and the waits show.
	var wave []int64
	for i := 1; i <= 3; i++ {
		wave = append(wave, e.enqueue(fmt.Sprintf("test-%d", i), []string{"echo testing", fmt.Sprintf("sleep %d", i)}, nil))
	}
	for _, id := range wave {
		p.WaitText(t, fmt.Sprintf(`#r0-jobs tr.job[data-job-id="%d"]`, id), "passed", wait)
	}
	// Charts have samples; the page was never reloaded; its style applied (the CSP
	// lets its own inline stylesheet through).
	p.WaitGone(t, "#r0-charts p.empty", wait)
	var state struct {
		NotReloaded bool   `json:"notReloaded"`
		Radius      string `json:"radius"`
		Live        string `json:"live"`
	}
	p.Eval(t, `({notReloaded: window.notReloaded === true, radius: getComputedStyle(document.querySelector(".card")).borderTopLeftRadius,
		live: document.body.getAttribute("data-live")})`, &state)
	if !state.NotReloaded || state.Radius != "8px" || state.Live != "on" {
		t.Errorf("page state %+v: want not reloaded, styled and live", state)
	}
	p.Screenshot(t, "operator-page.png")

	phone := b.Open(t, base+"/", 390, 844)
	var overflow int
	phone.Eval(t, "document.documentElement.scrollWidth - document.documentElement.clientWidth", &overflow)
	if overflow > 0 {
		t.Errorf("on a phone the page is %dpx wider than the screen", overflow)
	}
	phone.Screenshot(t, "operator-page-phone.png")

	// Without JavaScript: the same sections, server-rendered, and not live.
	plain := b.OpenNoJS(t, base+"/", 1280, 900)
	for _, sel := range []string{"#r0-overview .policy", "#r0-overview .breaker", "#r0-pool tr.instance", "#r0-charts figure.chart",
		"#r0-jobs " + job[len("#r0-jobs "):], "#r0-decisions li.decision", ".live-off"} {
		if plain.Count(t, sel) == 0 {
			t.Errorf("page without JavaScript lacks %s", sel)
		}
	}
	if got := plain.Text(t, job); !strings.Contains(got, "passed") {
		t.Errorf("page without JavaScript shows the job as %q", got)
	}
	if n := plain.Count(t, `body[data-live="off"]`); n != 1 {
		t.Errorf("page without JavaScript went live")
	}

	for _, page := range []*browsertest.Page{p, phone, plain} {
		for _, u := range page.Requests() {
			if !strings.HasPrefix(u, base+"/") && !strings.HasPrefix(u, "data:") {
				t.Errorf("the page requested %s, outside %s", u, base)
			}
		}
	}
}
