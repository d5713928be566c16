package chaos

import (
	"bytes"
	"io"
	"math/rand/v2"
	"net/http"
	"net/http/httptest"
	"sync"
	"time"
)

// faultProxy stands between a cloud plugin and its wire fake and makes requests time
// out: while on, a share of the requests hang and then lose their connection, either
// before reaching the fake or after the fake acted on them (the client cannot tell
// which, as with a real timeout). Off, it forwards everything.
type faultProxy struct {
	target string
	srv    *httptest.Server
	tr     *http.Transport

	mu   sync.Mutex
	p    float64
	rnd  *rand.Rand
	hits int
}

// startFaultProxy puts a proxy in front of the trial's cloud fake; it is a fault's
// prepare step.
func startFaultProxy(tr *trial) string {
	p := &faultProxy{target: tr.cloud.endpoint, tr: &http.Transport{Proxy: nil, MaxIdleConnsPerHost: 8}}
	p.srv = httptest.NewServer(p)
	tr.t.Cleanup(func() {
		p.srv.Close()
		p.tr.CloseIdleConnections()
	})
	if err := tr.cloud.setEndpoint(p.srv.URL); err != nil {
		tr.t.Fatal(err)
	}
	tr.proxy = p
	return ""
}

// set makes a share p of the requests time out, drawing from seed; p 0 turns the
// faults off. It returns how many requests timed out since the last set.
func (p *faultProxy) set(share float64, seed uint64) int {
	p.mu.Lock()
	defer p.mu.Unlock()
	n := p.hits
	p.p, p.hits = share, 0
	p.rnd = rand.New(rand.NewPCG(seed, seed+1))
	return n
}

// decide draws the fate of one request: whether it times out, how long it hangs, and
// whether the fake sees it first.
func (p *faultProxy) decide() (hit bool, hold time.Duration, acted bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.p == 0 || p.rnd.Float64() >= p.p {
		return false, 0, false
	}
	p.hits++
	return true, 500*time.Millisecond + time.Duration(p.rnd.Int64N(int64(2500*time.Millisecond))), p.rnd.IntN(2) == 0
}

func (p *faultProxy) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	body, err := io.ReadAll(r.Body)
	if err != nil {
		return
	}
	hit, hold, acted := p.decide()
	if hit {
		select {
		case <-time.After(hold):
		case <-r.Context().Done():
			return
		}
		if !acted {
			panic(http.ErrAbortHandler) // the connection drops; the fake never saw it
		}
	}
	req, err := http.NewRequestWithContext(r.Context(), r.Method, p.target+r.URL.RequestURI(), bytes.NewReader(body))
	if err != nil {
		http.Error(w, err.Error(), http.StatusBadGateway)
		return
	}
	req.Header = r.Header.Clone()
	resp, err := p.tr.RoundTrip(req)
	if err != nil {
		http.Error(w, err.Error(), http.StatusBadGateway)
		return
	}
	defer resp.Body.Close()
	respBody, err := io.ReadAll(resp.Body)
	if err != nil || hit {
		panic(http.ErrAbortHandler) // the fake acted; its answer is lost
	}
	for k, vs := range resp.Header {
		w.Header()[k] = vs
	}
	w.WriteHeader(resp.StatusCode)
	_, _ = w.Write(respBody)
}
