package simulate

import (
	"encoding/json"
	"fmt"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"github.com/flotilla-ci/flotilla/host/internal/browsertest"
)

// TestBrowserSimulateReport opens the report of the example day (examples/simulate,
// with a sweep of idle_count) in headless Chromium, on a desktop and a phone, and
// checks what it shows against --json of the same run; it saves the screenshots
// docs/simulate.md shows (make screenshots). It skips without Chromium.
func TestBrowserSimulateReport(t *testing.T) {
	b := browsertest.Start(t)
	example := filepath.Join("..", "..", "examples", "simulate")
	base := []string{"--config", filepath.Join(example, "config.toml"), "--trace", filepath.Join(example, "trace.csv")}
	const sweep = "idle_count=0..10:5"
	page := filepath.Join(t.TempDir(), "report.html")
	if _, stderr, err := runCLI(t, append(base, "--report", page, "--sweep", sweep)...); err != nil {
		t.Fatalf("simulate --report: %v (%s)", err, stderr)
	}
	out, _, err := runCLI(t, append(base, "--json")...)
	if err != nil {
		t.Fatal(err)
	}
	var res Result
	if err := json.Unmarshal([]byte(out), &res); err != nil {
		t.Fatal(err)
	}
	out, _, err = runCLI(t, append(base, "--sweep", sweep, "--json")...)
	if err != nil {
		t.Fatal(err)
	}
	var sw Sweep
	if err := json.Unmarshal([]byte(out), &sw); err != nil {
		t.Fatal(err)
	}
	abs, err := filepath.Abs(page)
	if err != nil {
		t.Fatal(err)
	}
	url := "file://" + abs

	texts := func(t *testing.T, p *browsertest.Page, selector string) []string {
		t.Helper()
		var out []string
		p.Eval(t, fmt.Sprintf(`Array.from(document.querySelectorAll(%q)).map(e => e.textContent)`, selector), &out)
		return out
	}
	checkRequests := func(t *testing.T, p *browsertest.Page) {
		t.Helper()
		for _, r := range p.Requests() {
			if !strings.HasPrefix(r, "file://") && !strings.HasPrefix(r, "http://127.0.0.1:") {
				t.Errorf("the page requested %s: want nothing beyond file:// and 127.0.0.1", r)
			}
		}
	}

	t.Run("desktop", func(t *testing.T) {
		p := b.Open(t, url, 1280, 900)
		defer checkRequests(t, p)

		// The time axis: wall-clock times in the policy's zone, the date where it
		// changes, and a legend in words.
		ticks := texts(t, p, "#day svg .time-tick")
		clock := regexp.MustCompile(`^([01][0-9]|2[0-3]):[0-5][0-9]$`)
		if len(ticks) < 10 {
			t.Errorf("time ticks %q: want both panels' ticks", ticks)
		}
		for _, tk := range ticks {
			if !clock.MatchString(tk) {
				t.Errorf("time tick %q is not a wall-clock time", tk)
			}
		}
		if dates := texts(t, p, "#day svg .date-tick"); strings.Join(dates, ",") != "Mon 2 Mar,Tue 3 Mar" {
			t.Errorf("date ticks %q, want Mon 2 Mar and Tue 3 Mar", dates)
		}
		legend := strings.Join(texts(t, p, "#day svg .legend"), "|")
		for _, w := range []string{"busy instances (running a job)", "idle instances", "booting instances", "demand: jobs waiting or running"} {
			if !strings.Contains(legend, w) {
				t.Errorf("legend %q lacks %q", legend, w)
			}
		}
		if note := p.Text(t, "#day .note"); !strings.Contains(note, "wall-clock time in Europe/Berlin") {
			t.Errorf("the plot's note %q does not name the policy's zone", note)
		}

		// The tables hold the numbers of --json.
		for _, c := range []struct {
			selector, want string
		}{
			{`#wait td[data-key="wait_p50_s"]`, htmlSeconds(res.WaitP50S)},
			{`#wait td[data-key="wait_p95_s"]`, htmlSeconds(res.WaitP95S)},
			{`#wait td[data-key="wait_p99_s"]`, htmlSeconds(res.WaitP99S)},
			{`#wait td[data-key="zero_idle_wait_s"]`, htmlSeconds(res.ZeroIdleWaitS)},
			{`#cost td[data-key="instance_seconds"]`, groupThousands(res.InstanceSeconds)},
			{`#cost td[data-key="idle_instance_seconds"]`, groupThousands(res.IdleInstanceSeconds)},
			{`#floors td[data-key="clairvoyant_instance_seconds"]`, groupThousands(res.ClairvoyantInstanceSeconds)},
			{`#floors td[data-key="excess_over_floor"]`, fmt.Sprintf("%+.1f %%", 100*res.ExcessOverFloor)},
			{`#frontier tr[data-value="5"] td[data-key="wait_p95_s"]`, fmt.Sprintf("%.1f", sw.Points[1].WaitP95S)},
			{`#frontier tr[data-value="forecast"] td[data-key="cost_over_floor"]`, fmt.Sprintf("%.2f", sw.Forecast.CostOverFloor)},
		} {
			if got := p.Text(t, c.selector); got != c.want {
				t.Errorf("%s shows %q, want %q", c.selector, got, c.want)
			}
		}
		if want := fmt.Sprintf("%.1f s", res.WaitP95S); !strings.Contains(p.Text(t, "#glance"), want) {
			t.Errorf("at a glance %q lacks the wait p95 %s", p.Text(t, "#glance"), want)
		}

		// The frontier: a chart and one row per value and the forecast.
		if n := p.Count(t, "#frontier svg"); n != 1 {
			t.Errorf("%d frontier charts, want 1", n)
		}
		if labels := strings.Join(texts(t, p, "#frontier svg text"), "|"); !strings.Contains(labels, "forecast") || !strings.Contains(labels, "clairvoyant floor") {
			t.Errorf("the frontier chart's labels %q lack the forecast point or the floor", labels)
		}
		if n, want := p.Count(t, "#frontier tbody tr"), len(sw.Points)+1; n != want {
			t.Errorf("%d frontier rows, want %d", n, want)
		}
		// On a desktop nothing needs scrolling sideways: not the page, not a table.
		var overflow []string
		p.Eval(t, `[document.documentElement, ...document.querySelectorAll(".scroll")]
			.filter(e => e.scrollWidth > e.clientWidth).map(e => e.closest("section")?.id ?? "the page")`, &overflow)
		if len(overflow) > 0 {
			t.Errorf("wider than their box in a 1280 px window: %q", overflow)
		}
		p.Screenshot(t, "simulate-report.png")
	})

	t.Run("phone, no JavaScript", func(t *testing.T) {
		p := b.OpenNoJS(t, url, 390, 844)
		defer checkRequests(t, p)
		var layout struct {
			InnerWidth, ScrollWidth int
			FontSize                string
			TableScrolls            bool
			Overflow                string
		}
		p.Eval(t, `(() => {
			const s = document.querySelector("#frontier .scroll");
			return {
				InnerWidth: window.innerWidth,
				ScrollWidth: document.documentElement.scrollWidth,
				FontSize: getComputedStyle(document.body).fontSize,
				TableScrolls: s.scrollWidth > s.clientWidth,
				Overflow: getComputedStyle(s).overflowX,
			};
		})()`, &layout)
		// Without the viewport meta a phone lays the page out 980 px wide and shrinks it.
		if layout.InnerWidth != 390 {
			t.Errorf("layout viewport %d px wide on a 390 px phone: the viewport meta is missing or wrong", layout.InnerWidth)
		}
		if layout.ScrollWidth > 390 {
			t.Errorf("the page is %d px wide on a 390 px phone: wide content must scroll in its own box", layout.ScrollWidth)
		}
		if layout.FontSize != "16px" {
			t.Errorf("body text %s, want 16px", layout.FontSize)
		}
		if !layout.TableScrolls || layout.Overflow != "auto" {
			t.Errorf("the frontier table: scrolls %v, overflow-x %q: want a table that scrolls sideways", layout.TableScrolls, layout.Overflow)
		}
		if got := p.Text(t, `#wait td[data-key="wait_p95_s"]`); got != htmlSeconds(res.WaitP95S) {
			t.Errorf("wait p95 on the phone %q, want %q", got, htmlSeconds(res.WaitP95S))
		}
		p.Screenshot(t, "simulate-report-phone.png")
	})
}
