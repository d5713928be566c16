// Package browsertest drives a real headless Chromium (Debian's chromium) for tests of
// the pages the runner serves and the reports it writes: a test starts a browser, opens
// a page in a tab of a given size, reads what it shows, waits for live updates, lists
// what it requested and saves screenshots. It is a test helper (it imports testing), so
// no binary links it.
//
// A test that needs a browser skips where Chromium is missing, and fails there instead
// under FLOTILLA_REQUIRE_BROWSER=1 (as .ci/run sets). Screenshots go to the directory
// FLOTILLA_SCREENSHOTS names (`make screenshots` sets it to docs/img), else into the
// test's temporary directory.
package browsertest

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/chromedp/cdproto/cdp"
	"github.com/chromedp/cdproto/emulation"
	"github.com/chromedp/cdproto/log"
	"github.com/chromedp/cdproto/network"
	"github.com/chromedp/cdproto/runtime"
	"github.com/chromedp/chromedp"
)

// RequireEnv ("FLOTILLA_REQUIRE_BROWSER"), when set to 1 (as .ci/run does), turns a
// missing Chromium into a test failure instead of a skip, so CI cannot pass without
// running the browser tests.
const RequireEnv = "FLOTILLA_REQUIRE_BROWSER"

// ScreenshotsEnv ("FLOTILLA_SCREENSHOTS") names an absolute directory: when set,
// Page.Screenshot writes its PNGs there (`make screenshots` sets it to docs/img), else
// into the test's t.TempDir().
const ScreenshotsEnv = "FLOTILLA_SCREENSHOTS"

// Executables are the names Chromium goes by, in the order Start looks them up in PATH:
// Debian's package first.
var Executables = []string{"chromium", "chromium-browser", "google-chrome-stable", "google-chrome"}

const (
	// startTimeout bounds the browser's start; a cold start on a loaded 2-core
	// machine takes a few seconds.
	startTimeout = 60 * time.Second
	// loadTimeout bounds one page load (until its load event).
	loadTimeout = 60 * time.Second
	// callTimeout bounds one evaluation or screenshot, so that a hung browser fails
	// the test instead of holding it until go test's own timeout.
	callTimeout = 30 * time.Second
	// pollInterval is how often WaitText and WaitGone look at the page again.
	pollInterval = 50 * time.Millisecond
)

// Browser is one headless Chromium process, stopped when its test ends. Its pages are
// tabs of that process.
type Browser struct {
	ctx context.Context // the browser's first tab: its parent for every new tab
}

// Start launches headless Chromium for the test and stops it at the test's cleanup. It
// skips the test when no Chromium is installed (apt-get install chromium), or fails it
// under RequireEnv=1.
func Start(t testing.TB) *Browser {
	t.Helper()
	path := ""
	for _, name := range Executables {
		if p, err := exec.LookPath(name); err == nil {
			path = p
			break
		}
	}
	if path == "" {
		if os.Getenv(RequireEnv) == "1" {
			t.Fatalf("Chromium required (%s=1) but none of %s is in PATH: apt-get install chromium",
				RequireEnv, strings.Join(Executables, ", "))
		}
		t.Skipf("no Chromium in PATH (apt-get install chromium; .ci/run does)")
	}
	// The profile lives in the test's temporary directory: nothing of a previous run
	// or of the machine's user leaks into the test.
	profile := filepath.Join(t.TempDir(), "chromium-profile")
	opts := append(chromedp.DefaultExecAllocatorOptions[:],
		chromedp.ExecPath(path),
		chromedp.UserDataDir(profile),
		// As root (here and in CI) Chromium refuses to start with its sandbox.
		chromedp.NoSandbox,
		chromedp.DisableGPU,
		// Chromium's own connections (component updates, QUIC probes, sync) fail
		// noisily on a closed network, and tests must not reach out anyway.
		chromedp.Flag("disable-quic", true),
		chromedp.Flag("disable-component-update", true),
		chromedp.Flag("disable-background-networking", true),
		chromedp.Flag("disable-sync", true),
	)
	allocCtx, allocCancel := chromedp.NewExecAllocator(context.Background(), opts...)
	ctx, cancel := chromedp.NewContext(allocCtx)
	// Registered after t.TempDir, so it runs before the directory is removed: the
	// browser is gone by then (allocCancel waits for its process).
	t.Cleanup(func() {
		cancel()
		allocCancel()
		removeProfile(t, profile)
	})
	if err := firstRun(ctx, cancel, startTimeout); err != nil {
		t.Fatalf("start Chromium (%s): %v", path, err)
	}
	return &Browser{ctx: ctx}
}

// firstRun runs the first (empty) Do on a chromedp context, which starts the browser or
// opens the tab and binds its life to ctx: so it cannot run under a derived timeout
// (that would close the tab when the call returns), and is bounded here instead, by
// cancelling ctx.
func firstRun(ctx context.Context, cancel context.CancelFunc, timeout time.Duration) error {
	done := make(chan error, 1)
	go func() { done <- chromedp.Do(ctx) }()
	timer := time.NewTimer(timeout)
	defer timer.Stop()
	select {
	case err := <-done:
		return err
	case <-timer.C:
		cancel()
		return fmt.Errorf("not ready after %v", timeout)
	}
}

// removeProfile deletes the browser's profile directory. Chromium's helper processes can
// still be writing to it for a moment after the main process exited, and t.TempDir's
// own cleanup would fail the test on "directory not empty"; so this retries briefly.
func removeProfile(t testing.TB, dir string) {
	deadline := time.Now().Add(5 * time.Second)
	for {
		err := os.RemoveAll(dir)
		if err == nil || time.Now().After(deadline) {
			if err != nil {
				t.Logf("remove Chromium profile %s: %v", dir, err)
			}
			return
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// Page is one tab of a Browser with a page loaded. Its methods fail the test on any
// error of the browser; a Page is for one goroutine at a time.
type Page struct {
	ctx context.Context // the tab
	url string

	mu       sync.Mutex
	requests []string // every URL the tab requested, in order
	console  []string // uncaught exceptions and console errors, logged when the test fails
}

// Open loads url in a new tab whose viewport is width x height CSS pixels, and returns
// once the page's load event fired. The tab closes at the test's cleanup.
func (b *Browser) Open(t testing.TB, url string, width, height int) *Page {
	t.Helper()
	return b.open(t, url, width, height, false)
}

// OpenNoJS is Open with JavaScript turned off in the tab before the page loads: the
// page must then work as plain server-rendered HTML, and its <noscript> content shows.
// Page's methods still work on it (DevTools evaluates outside the page's scripts).
func (b *Browser) OpenNoJS(t testing.TB, url string, width, height int) *Page {
	t.Helper()
	return b.open(t, url, width, height, true)
}

func (b *Browser) open(t testing.TB, url string, width, height int, noJS bool) *Page {
	t.Helper()
	if width <= 0 || height <= 0 {
		t.Fatalf("open %s: viewport %dx%d: width and height must be positive", url, width, height)
	}
	p := &Page{url: url}
	// WithListener sees every event of the tab from its first command on, so the
	// request list starts with the page itself.
	ctx, cancel := chromedp.NewContext(b.ctx, chromedp.WithListener(p.listen))
	t.Cleanup(func() {
		p.logConsoleIfFailed(t)
		cancel()
	})
	p.ctx = ctx
	steps := []chromedp.Action[chromedp.Void]{
		chromedp.EmulateViewport(int64(width), int64(height)),
	}
	if noJS {
		steps = append(steps, chromedp.Func(func(ctx context.Context, tg *chromedp.Target) error {
			_, err := cdp.Call(ctx, tg, emulation.SetScriptExecutionDisabled,
				emulation.SetScriptExecutionDisabledParams{Value: true})
			return err
		}))
	}
	steps = append(steps, chromedp.Navigate(url))
	if err := firstRun(ctx, cancel, callTimeout); err != nil {
		t.Fatalf("open a tab for %s in Chromium: %v", url, err)
	}
	lctx, lcancel := context.WithTimeout(ctx, loadTimeout)
	defer lcancel()
	if err := chromedp.Do(lctx, steps...); err != nil {
		t.Fatalf("open %s in Chromium (%dx%d, javascript=%v): %v", url, width, height, !noJS, err)
	}
	return p
}

// listen records the tab's requests and its script errors. It runs in the tab's event
// loop, so it only appends.
func (p *Page) listen(ev any) {
	p.mu.Lock()
	defer p.mu.Unlock()
	switch ev := ev.(type) {
	case *network.EventRequestWillBeSent:
		if ev.Request != nil {
			p.requests = append(p.requests, ev.Request.URL)
		}
	case *runtime.EventExceptionThrown:
		if d := ev.ExceptionDetails; d != nil {
			text := d.Text
			if d.Exception != nil && d.Exception.Description != "" {
				text = d.Exception.Description
			}
			p.console = append(p.console, fmt.Sprintf("exception at %s:%d: %s", d.URL, d.LineNumber+1, text))
		}
	case *runtime.EventConsoleAPICalled:
		if ev.Type == runtime.ConsoleAPICalledTypeError || ev.Type == runtime.ConsoleAPICalledTypeAssert {
			args := make([]string, 0, len(ev.Args))
			for _, a := range ev.Args {
				if len(a.Value) > 0 {
					args = append(args, string(a.Value))
				} else {
					args = append(args, a.Description)
				}
			}
			p.console = append(p.console, "console."+string(ev.Type)+": "+strings.Join(args, " "))
		}
	case *log.EventEntryAdded:
		if e := ev.Entry; e != nil && e.Level == log.EntryLevelError {
			p.console = append(p.console, fmt.Sprintf("%s error: %s %s", e.Source, e.Text, e.URL))
		}
	}
}

// logConsoleIfFailed shows a failed test what went wrong inside the page.
func (p *Page) logConsoleIfFailed(t testing.TB) {
	if !t.Failed() {
		return
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	for _, line := range p.console {
		t.Logf("page %s: %s", p.url, line)
	}
}

// Requests lists every URL the page requested so far, in order, the page's own URL
// first, as Chromium reports them (data: URLs included): a test proves with it that a
// page loads nothing from outside its server.
func (p *Page) Requests() []string {
	p.mu.Lock()
	defer p.mu.Unlock()
	return append([]string(nil), p.requests...)
}

// Eval evaluates the JavaScript expression expr in the page (a promise is awaited) and
// decodes its JSON value into out, which may be nil to drop it. It fails the test when
// the expression throws or its value does not decode into out.
func (p *Page) Eval(t testing.TB, expr string, out any) {
	t.Helper()
	raw, err := p.eval(expr)
	if err != nil {
		t.Fatalf("evaluate %q in %s: %v", expr, p.url, err)
	}
	if out == nil {
		return
	}
	if len(raw) == 0 { // undefined
		raw = []byte("null")
	}
	if err := json.Unmarshal(raw, out); err != nil {
		t.Fatalf("evaluate %q in %s: decode %s into %T: %v", expr, p.url, raw, out, err)
	}
}

// eval returns the JSON value of expr (empty for undefined).
func (p *Page) eval(expr string) ([]byte, error) {
	ctx, cancel := context.WithTimeout(p.ctx, callTimeout)
	defer cancel()
	return chromedp.Run(ctx, chromedp.Evaluate[[]byte](expr, chromedp.EvalAwaitPromise))
}

// Text is the innerText of the first element that matches the CSS selector, "" if none
// does: what a reader sees of it (hidden elements have none).
func (p *Page) Text(t testing.TB, selector string) string {
	t.Helper()
	text, err := p.text(selector)
	if err != nil {
		t.Fatalf("read text of %q in %s: %v", selector, p.url, err)
	}
	return text
}

func (p *Page) text(selector string) (string, error) {
	raw, err := p.eval(fmt.Sprintf(`(() => { const e = document.querySelector(%s); return e ? e.innerText : ""; })()`,
		jsString(selector)))
	if err != nil {
		return "", err
	}
	var s string
	err = json.Unmarshal(raw, &s)
	return s, err
}

// Count is how many elements match the CSS selector.
func (p *Page) Count(t testing.TB, selector string) int {
	t.Helper()
	n, err := p.count(selector)
	if err != nil {
		t.Fatalf("count %q in %s: %v", selector, p.url, err)
	}
	return n
}

func (p *Page) count(selector string) (int, error) {
	raw, err := p.eval(fmt.Sprintf(`document.querySelectorAll(%s).length`, jsString(selector)))
	if err != nil {
		return 0, err
	}
	var n int
	err = json.Unmarshal(raw, &n)
	return n, err
}

// WaitText waits until the innerText of the first element matching selector contains
// substr, looking again every 50 ms, and fails the test with the last text seen when
// timeout passes. It never reloads the page: it is how a test sees a live update.
func (p *Page) WaitText(t testing.TB, selector, substr string, timeout time.Duration) {
	t.Helper()
	last, err := "", error(nil)
	if !p.poll(timeout, func() bool {
		last, err = p.text(selector)
		return err == nil && strings.Contains(last, substr)
	}) {
		if err != nil {
			t.Fatalf("wait %v for %q to contain %q in %s: %v", timeout, selector, substr, p.url, err)
		}
		t.Fatalf("wait %v for %q to contain %q in %s: its text is still %q", timeout, selector, substr, p.url, last)
	}
}

// WaitGone waits until no element matches selector, and fails the test with how many
// still do when timeout passes.
func (p *Page) WaitGone(t testing.TB, selector string, timeout time.Duration) {
	t.Helper()
	n, err := 0, error(nil)
	if !p.poll(timeout, func() bool {
		n, err = p.count(selector)
		return err == nil && n == 0
	}) {
		if err != nil {
			t.Fatalf("wait %v for %q to be gone from %s: %v", timeout, selector, p.url, err)
		}
		t.Fatalf("wait %v for %q to be gone from %s: %d still match", timeout, selector, p.url, n)
	}
}

// poll calls done until it returns true or timeout passes; it reports done's last
// answer. The page changes on its own (server-sent events, timers), so looking again
// at an interval is the way to see it change.
func (p *Page) poll(timeout time.Duration, done func() bool) bool {
	deadline := time.Now().Add(timeout)
	tick := time.NewTicker(pollInterval)
	defer tick.Stop()
	for {
		if done() {
			return true
		}
		if time.Now().After(deadline) {
			return false
		}
		<-tick.C
	}
}

// Screenshot saves a PNG of the whole page (beyond the viewport's height) named name,
// such as "operator-page.png", in the screenshots directory (ScreenshotsEnv, else the
// test's temporary directory) and returns its path.
func (p *Page) Screenshot(t testing.TB, name string) string {
	t.Helper()
	if name == "" || filepath.Base(name) != name || filepath.Ext(name) != ".png" {
		t.Fatalf("screenshot %q: the name must be a plain file name ending in .png", name)
	}
	dir, err := screenshotsDir(t)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(p.ctx, callTimeout)
	defer cancel()
	png, err := chromedp.Run(ctx, chromedp.FullScreenshot(100)) // quality 100 is PNG
	if err != nil {
		t.Fatalf("screenshot %s: %v", p.url, err)
	}
	path := filepath.Join(dir, name)
	if err := os.WriteFile(path, png, 0o644); err != nil {
		t.Fatalf("screenshot %s: %v", p.url, err)
	}
	t.Logf("screenshot of %s: %s", p.url, path)
	return path
}

// screenshotsDir is ScreenshotsEnv's directory, made if missing, or a temporary one.
func screenshotsDir(t testing.TB) (string, error) {
	dir := os.Getenv(ScreenshotsEnv)
	if dir == "" {
		return t.TempDir(), nil
	}
	// go test runs each package in its own directory, so a relative path would
	// scatter the images over the packages.
	if !filepath.IsAbs(dir) {
		return "", fmt.Errorf("%s=%q: set it to an absolute directory (make screenshots uses $(CURDIR)/docs/img)", ScreenshotsEnv, dir)
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return "", fmt.Errorf("%s: make the screenshots directory: %w", ScreenshotsEnv, err)
	}
	return dir, nil
}

// jsString quotes s as a JavaScript string literal (JSON's is one).
func jsString(s string) string {
	b, err := json.Marshal(s)
	if err != nil {
		panic(errors.New("browsertest: a Go string always marshals")) // unreachable
	}
	return string(b)
}
