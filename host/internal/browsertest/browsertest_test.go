package browsertest

import (
	"bytes"
	"fmt"
	"image"
	"image/color"
	"image/png"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// testPage polls /state from a JavaScript timer and shows it, so the test decides when
// the text changes; it loads an image, has a <noscript> part, and is taller than the
// viewports below (for the full-page screenshot).
const testPage = `<!doctype html>
<html><head><meta charset="utf-8"><title>browsertest</title></head>
<body style="margin:0">
<p id="status">waiting</p>
<noscript><p id="nojs">JavaScript is off</p></noscript>
<img id="dot" src="/dot.png" alt="dot">
<ul><li class="item">a</li><li class="item">b</li><li class="item">c</li></ul>
<p class="gone">leaves when the state changes</p>
<div style="height:1500px;background:#def">tall</div>
<script>
window.pageScriptRan = true;
setInterval(async () => {
  const s = await (await fetch("/state")).text();
  document.getElementById("status").textContent = s;
  if (s !== "waiting") document.querySelectorAll(".gone").forEach(e => e.remove());
}, 50);
</script>
</body></html>`

// server serves testPage on 127.0.0.1 and counts how often the page itself was loaded.
type server struct {
	*httptest.Server
	mu        sync.Mutex
	state     string
	pageLoads atomic.Int32
}

func newServer(t *testing.T) *server {
	s := &server{state: "waiting"}
	var img bytes.Buffer
	dot := image.NewRGBA(image.Rect(0, 0, 8, 8))
	for i := range dot.Pix {
		dot.Pix[i] = 0x80
	}
	dot.Set(0, 0, color.RGBA{R: 255, A: 255})
	if err := png.Encode(&img, dot); err != nil {
		t.Fatal(err)
	}
	mux := http.NewServeMux()
	mux.HandleFunc("GET /{$}", func(w http.ResponseWriter, r *http.Request) {
		s.pageLoads.Add(1)
		w.Header().Set("Content-Type", "text/html; charset=utf-8")
		fmt.Fprint(w, testPage)
	})
	mux.HandleFunc("GET /dot.png", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "image/png")
		w.Write(img.Bytes())
	})
	mux.HandleFunc("GET /state", func(w http.ResponseWriter, r *http.Request) {
		s.mu.Lock()
		defer s.mu.Unlock()
		w.Header().Set("Cache-Control", "no-store")
		fmt.Fprint(w, s.state)
	})
	s.Server = httptest.NewServer(mux)
	t.Cleanup(s.Close)
	return s
}

func (s *server) setState(v string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.state = v
}

func TestLiveUpdateWithoutReload(t *testing.T) {
	b := Start(t)
	srv := newServer(t)
	p := b.Open(t, srv.URL+"/", 800, 600)

	if got := p.Text(t, "#status"); got != "waiting" {
		t.Fatalf("status before the change = %q, want waiting", got)
	}
	if got := p.Count(t, "li.item"); got != 3 {
		t.Errorf("Count(li.item) = %d, want 3", got)
	}
	if got := p.Count(t, ".gone"); got != 1 {
		t.Errorf("Count(.gone) = %d, want 1", got)
	}
	if got := p.Text(t, "#no-such-element"); got != "" {
		t.Errorf("Text of a missing element = %q, want empty", got)
	}

	srv.setState("updated 42")
	p.WaitText(t, "#status", "updated 42", 10*time.Second)
	p.WaitGone(t, ".gone", 10*time.Second)
	if n := srv.pageLoads.Load(); n != 1 {
		t.Errorf("the page was loaded %d times, want 1: the update must come without a reload", n)
	}

	var ran bool
	p.Eval(t, "window.pageScriptRan === true", &ran)
	if !ran {
		t.Error("the page's script did not run with JavaScript on")
	}
	var sum int
	p.Eval(t, "Promise.resolve(40 + 2)", &sum)
	if sum != 42 {
		t.Errorf("Eval of a promise = %d, want 42", sum)
	}
	p.Eval(t, "void 0", nil)
}

func TestRequests(t *testing.T) {
	b := Start(t)
	srv := newServer(t)
	p := b.Open(t, srv.URL+"/", 800, 600)
	// Requests made after the load, by the page's script, are listed too.
	srv.setState("fetched")
	p.WaitText(t, "#status", "fetched", 10*time.Second)

	reqs := p.Requests()
	if len(reqs) == 0 || reqs[0] != srv.URL+"/" {
		t.Fatalf("Requests() = %q, want the page %s first", reqs, srv.URL+"/")
	}
	for _, want := range []string{srv.URL + "/dot.png", srv.URL + "/state"} {
		if !contains(reqs, want) {
			t.Errorf("Requests() = %q, want %s in it", reqs, want)
		}
	}
	for _, u := range reqs {
		if !strings.HasPrefix(u, srv.URL+"/") {
			t.Errorf("the page requested %s, outside its server %s", u, srv.URL)
		}
	}
}

func contains(list []string, s string) bool {
	for _, v := range list {
		if v == s {
			return true
		}
	}
	return false
}

func TestJavaScriptOnAndOff(t *testing.T) {
	b := Start(t)
	srv := newServer(t)
	for _, tc := range []struct {
		name     string
		open     func(t testing.TB, url string, width, height int) *Page
		noscript string // the <noscript> paragraph's text
		scripts  bool   // whether the page's script ran
	}{
		{"Open", b.Open, "", true},
		{"OpenNoJS", b.OpenNoJS, "JavaScript is off", false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			p := tc.open(t, srv.URL+"/", 600, 400)
			if got := p.Text(t, "#nojs"); got != tc.noscript {
				t.Errorf("noscript text = %q, want %q", got, tc.noscript)
			}
			var ran bool
			p.Eval(t, "window.pageScriptRan === true", &ran)
			if ran != tc.scripts {
				t.Errorf("the page's script ran = %v, want %v", ran, tc.scripts)
			}
			if got := p.Text(t, "#status"); got != "waiting" {
				t.Errorf("status = %q, want the server-rendered waiting", got)
			}
		})
	}
}

func TestScreenshot(t *testing.T) {
	b := Start(t)
	srv := newServer(t)
	envDir := filepath.Join(t.TempDir(), "img") // made by Screenshot
	for _, tc := range []struct {
		name, env string
		width     int
	}{
		{"temporary directory", "", 1024},
		{ScreenshotsEnv, envDir, 390}, // a phone's width
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Setenv(ScreenshotsEnv, tc.env)
			p := b.Open(t, srv.URL+"/", tc.width, 500)
			path := p.Screenshot(t, "page.png")
			if tc.env != "" && filepath.Dir(path) != tc.env {
				t.Errorf("screenshot written to %s, want it in %s=%s", path, ScreenshotsEnv, tc.env)
			}
			f, err := os.Open(path)
			if err != nil {
				t.Fatal(err)
			}
			defer f.Close()
			img, err := png.Decode(f)
			if err != nil {
				t.Fatalf("decode %s as PNG: %v", path, err)
			}
			size := img.Bounds().Size()
			if size.X != tc.width {
				t.Errorf("screenshot width = %d, want the viewport's %d", size.X, tc.width)
			}
			if size.Y < 1500 {
				t.Errorf("screenshot height = %d, want the whole page (over 1500), not only the 500 px viewport", size.Y)
			}
		})
	}
}

// recorder stands for a test whose failure or skip is itself what is tested: Fatalf and
// Skipf record the message and end the goroutine as the testing package's do.
type recorder struct {
	testing.TB
	fatal, skip string
}

func (r *recorder) Helper() {}
func (r *recorder) Fatalf(format string, args ...any) {
	r.fatal = fmt.Sprintf(format, args...)
	runtime.Goexit()
}
func (r *recorder) Fatal(args ...any) {
	r.fatal = fmt.Sprint(args...)
	runtime.Goexit()
}
func (r *recorder) Skipf(format string, args ...any) {
	r.skip = fmt.Sprintf(format, args...)
	runtime.Goexit()
}

// record runs f with a recorder in its own goroutine, as a test body runs.
func record(t *testing.T, f func(r *recorder)) *recorder {
	r := &recorder{TB: t}
	done := make(chan struct{})
	go func() {
		defer close(done)
		f(r)
	}()
	<-done
	return r
}

func TestFailures(t *testing.T) {
	b := Start(t)
	srv := newServer(t)
	p := b.Open(t, srv.URL+"/", 800, 600)
	for _, tc := range []struct {
		name string
		env  string // ScreenshotsEnv
		do   func(r *recorder)
		want string // in the failure message
	}{
		{"WaitText shows the last text", "", func(r *recorder) {
			p.WaitText(r, "#status", "never", 300*time.Millisecond)
		}, `its text is still "waiting"`},
		{"WaitGone shows how many are left", "", func(r *recorder) {
			p.WaitGone(r, "li.item", 300*time.Millisecond)
		}, "3 still match"},
		{"Eval reports an exception", "", func(r *recorder) {
			p.Eval(r, `(() => { throw new Error(["bo", "om"].join("")) })()`, nil)
		}, "boom"},
		{"Text reports a bad selector", "", func(r *recorder) {
			p.Text(r, "li[")
		}, "li["},
		{"Screenshot wants a plain .png name", "", func(r *recorder) {
			p.Screenshot(r, "../escape.png")
		}, "plain file name"},
		{"a relative screenshots directory", "docs/img", func(r *recorder) {
			p.Screenshot(r, "x.png")
		}, "absolute"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Setenv(ScreenshotsEnv, tc.env)
			r := record(t, tc.do)
			if !strings.Contains(r.fatal, tc.want) {
				t.Errorf("failure message = %q, want it to contain %q", r.fatal, tc.want)
			}
		})
	}
}

func TestMissingChromium(t *testing.T) {
	t.Setenv("PATH", t.TempDir()) // no Chromium in it
	for _, tc := range []struct {
		require         string
		wantSkip, wantF bool
	}{
		{"", true, false},
		{"1", false, true},
	} {
		t.Run(RequireEnv+"="+tc.require, func(t *testing.T) {
			t.Setenv(RequireEnv, tc.require)
			r := record(t, func(r *recorder) { Start(r) })
			if (r.skip != "") != tc.wantSkip || (r.fatal != "") != tc.wantF {
				t.Errorf("skip = %q, fatal = %q; want skipped %v, failed %v", r.skip, r.fatal, tc.wantSkip, tc.wantF)
			}
		})
	}
}
