package webui

import (
	"bytes"
	"crypto/hmac"
	"crypto/sha256"
	"crypto/subtle"
	"embed"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"html/template"
	"net/http"
	"strings"
	"time"

	"github.com/flotilla-ci/flotilla/host/taskscaler/clock"
)

//go:embed assets
var assets embed.FS

// page is the parsed template; scriptHash and styleHash are the CSP hashes of its inline
// script and style, which the Content-Security-Policy allows and nothing else.
var page, scriptHash, styleHash = parse()

func parse() (*template.Template, string, string) {
	read := func(name string) string {
		b, err := assets.ReadFile("assets/" + name)
		if err != nil {
			panic(err)
		}
		return string(b)
	}
	// The CSS and the script are text of the template, not values, so that no value
	// escaping touches them.
	src := strings.Replace(strings.Replace(read("page.html"), "/*CSS*/", read("page.css"), 1), "/*JS*/", read("live.js"), 1)
	t := template.Must(template.New("page").Parse(src))
	// html/template drops comments from scripts and styles, so the hashes are of what
	// the page carries, taken from a rendering.
	var b strings.Builder
	if err := t.ExecuteTemplate(&b, "page", pageView{}); err != nil {
		panic(err)
	}
	between := func(open, close string) string {
		_, rest, ok := strings.Cut(b.String(), open)
		inner, _, ok2 := strings.Cut(rest, close)
		if !ok || !ok2 {
			panic("webui: the page has no " + open)
		}
		sum := sha256.Sum256([]byte(inner))
		return "'sha256-" + base64.StdEncoding.EncodeToString(sum[:]) + "'"
	}
	return t, between("<script>", "</script>"), between("<style>", "</style>")
}

// Options configure the page's Handler.
type Options struct {
	// Snapshot returns what the page shows now; it is called for every page and every
	// update of /events.
	Snapshot func() Snapshot
	// Token returns web_token ("" when unset); it is asked per request, so a reload
	// that changes it takes effect at once.
	Token func() string
	// Loopback reports whether listen_address is a loopback address: only there is the
	// page served without a token.
	Loopback func() bool
	// Interval is how often /events sends what changed (2s when zero).
	Interval time.Duration
	// Span is how far back the charts go (6h when zero).
	Span time.Duration
	// Clock drives /events (the wall clock when nil).
	Clock clock.Clock
}

// CookieName is the cookie that carries the page's credential after ?token= once.
const CookieName = "flotilla_web"

// Handler serves the page at / and its updates at /events, and 404 elsewhere.
//
// Who may see it: with web_token set, only a request with the token (Authorization:
// Bearer, the cookie set by a first ?token=, or ?token= itself); without it, anyone
// who reaches a loopback listen_address, and no one on another address (403, with how
// to set a token).
func Handler(o Options) http.Handler {
	if o.Interval <= 0 {
		o.Interval = 2 * time.Second
	}
	if o.Span <= 0 {
		o.Span = 6 * time.Hour
	}
	if o.Clock == nil {
		o.Clock = clock.Real{}
	}
	if o.Token == nil {
		o.Token = func() string { return "" }
	}
	if o.Loopback == nil {
		o.Loopback = func() bool { return false }
	}
	h := &handler{o: o}
	mux := http.NewServeMux()
	mux.HandleFunc("GET /{$}", h.page)
	mux.HandleFunc("GET /events", h.events)
	return mux
}

type handler struct{ o Options }

// cookieValue is what the cookie holds: a MAC of the token, not the token itself, so
// that the browser's cookie store never has web_token, and a new token voids it.
func cookieValue(token string) string {
	m := hmac.New(sha256.New, []byte(token))
	m.Write([]byte("flotilla operator page"))
	return hex.EncodeToString(m.Sum(nil))
}

func equal(a, b string) bool { return subtle.ConstantTimeCompare([]byte(a), []byte(b)) == 1 }

// allow answers the request itself (403, 401, or a redirect that drops ?token= from
// the address) unless it may see the page.
func (h *handler) allow(w http.ResponseWriter, r *http.Request) bool {
	token := h.o.Token()
	if token == "" {
		if h.o.Loopback() {
			return true
		}
		http.Error(w, "The operator's page is not served without a token on a listen_address that is not a loopback address.\n"+
			"Set web_token in config.toml (global section; at least 16 characters, for example the output of `openssl rand -hex 20`),\n"+
			"then open this page once as /?token=<web_token>; or set listen_address to 127.0.0.1:PORT.\n"+
			"/metrics, /healthz and /status are served as before.", http.StatusForbidden)
		return false
	}
	if auth, ok := strings.CutPrefix(r.Header.Get("Authorization"), "Bearer "); ok && equal(strings.TrimSpace(auth), token) {
		return true
	}
	if c, err := r.Cookie(CookieName); err == nil && equal(c.Value, cookieValue(token)) {
		return true
	}
	if q := r.URL.Query(); q.Has("token") {
		if !equal(q.Get("token"), token) {
			h.unauthorized(w, "the token in the address is not web_token")
			return false
		}
		http.SetCookie(w, &http.Cookie{Name: CookieName, Value: cookieValue(token), Path: "/", HttpOnly: true, SameSite: http.SameSiteStrictMode})
		if r.URL.Path == "/" {
			// Off the address bar and the history: the cookie carries on. The address
			// is relative, so that it holds behind a proxy that serves the page under
			// a path of its own.
			q.Del("token")
			loc := "./"
			if len(q) > 0 {
				loc += "?" + q.Encode()
			}
			w.Header().Set("Location", loc)
			w.WriteHeader(http.StatusSeeOther)
			return false
		}
		return true
	}
	h.unauthorized(w, "this page needs web_token")
	return false
}

func (h *handler) unauthorized(w http.ResponseWriter, why string) {
	w.Header().Set("WWW-Authenticate", `Bearer realm="flotilla"`)
	http.Error(w, why+": open /?token=<web_token> once (the browser keeps a cookie), or send Authorization: Bearer <web_token>.",
		http.StatusUnauthorized)
}

// secure sets the headers every answer of the page carries: nothing but the inline
// script and style may run, nothing is loaded from elsewhere, and nothing is cached or
// framed.
func secure(w http.ResponseWriter) {
	hd := w.Header()
	hd.Set("Content-Security-Policy", "default-src 'none'; script-src "+scriptHash+"; style-src "+styleHash+
		"; connect-src 'self'; img-src data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'")
	hd.Set("X-Content-Type-Options", "nosniff")
	hd.Set("Referrer-Policy", "no-referrer")
	hd.Set("Cache-Control", "no-store")
}

func (h *handler) page(w http.ResponseWriter, r *http.Request) {
	secure(w)
	if !h.allow(w, r) {
		return
	}
	var b bytes.Buffer
	if err := page.ExecuteTemplate(&b, "page", view(h.o.Snapshot(), h.o.Span)); err != nil {
		http.Error(w, "render the page: "+err.Error(), http.StatusInternalServerError)
		return
	}
	w.Header().Set("Content-Type", "text/html; charset=utf-8")
	_, _ = w.Write(b.Bytes())
}

// sections renders the parts of the page that /events replaces, by element id. A
// change in the runners (a reload) replaces them all at once.
func sections(v pageView) (map[string]string, string, error) {
	out := map[string]string{}
	render := func(id, name string, data any) error {
		var b strings.Builder
		if err := page.ExecuteTemplate(&b, name, data); err != nil {
			return fmt.Errorf("render %s: %w", name, err)
		}
		out[id] = b.String()
		return nil
	}
	if err := render("updated", "updated", v); err != nil {
		return nil, "", err
	}
	if err := render("banner", "banner", v); err != nil {
		return nil, "", err
	}
	var shape []string
	for _, r := range v.Runners {
		shape = append(shape, r.ID+"="+r.Name+"|"+r.Token)
		for _, s := range []string{"overview", "pool", "charts", "jobs", "decisions"} {
			if err := render(r.ID+"-"+s, s, r); err != nil {
				return nil, "", err
			}
		}
	}
	return out, strings.Join(shape, "\n"), nil
}

// events streams what changed on the page as Server-Sent Events: each message is a
// JSON object of element id → new inner HTML, the first one every section.
func (h *handler) events(w http.ResponseWriter, r *http.Request) {
	secure(w)
	if !h.allow(w, r) {
		return
	}
	rc := http.NewResponseController(w)
	w.Header().Set("Content-Type", "text/event-stream")
	w.Header().Set("X-Accel-Buffering", "no") // a proxy in front must not hold the stream back
	w.WriteHeader(http.StatusOK)
	if _, err := fmt.Fprint(w, "retry: 3000\n\n"); err != nil || rc.Flush() != nil {
		return
	}
	var sent map[string]string
	var sentShape string
	for {
		v := view(h.o.Snapshot(), h.o.Span)
		now, shape, err := sections(v)
		if err != nil {
			return
		}
		msg := map[string]string{}
		if sent == nil || shape != sentShape {
			var b strings.Builder
			if err := page.ExecuteTemplate(&b, "runners", v); err != nil {
				return
			}
			msg["runners"], msg["updated"], msg["banner"] = b.String(), now["updated"], now["banner"]
		} else {
			for id, html := range now {
				if sent[id] != html {
					msg[id] = html
				}
			}
		}
		sent, sentShape = now, shape
		if len(msg) > 0 {
			data, err := json.Marshal(msg)
			if err != nil {
				return
			}
			// JSON has no raw newline, so the message is one data line.
			if _, err := fmt.Fprintf(w, "data: %s\n\n", data); err != nil {
				return
			}
		} else if _, err := fmt.Fprint(w, ": nothing changed\n\n"); err != nil {
			return
		}
		if rc.Flush() != nil {
			return
		}
		t := h.o.Clock.NewTimer(h.o.Interval)
		select {
		case <-r.Context().Done():
			t.Stop()
			return
		case <-t.C():
		}
	}
}
