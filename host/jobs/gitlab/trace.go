package gitlab

import (
	"context"
	"errors"
	"fmt"
	"hash/crc32"
	"log/slog"
	"sync"
	"time"
)

// Why a job was stopped from the GitLab side; the cause of the job context.
var (
	// ErrJobCanceled: GitLab says the job is being canceled (Job-Status header).
	ErrJobCanceled = errors.New("job canceled on GitLab")
	// ErrJobGone: GitLab refuses updates of the job (403/404): canceled, erased, or
	// taken away from this runner.
	ErrJobGone = errors.New("job is no longer available on GitLab (403/404)")
)

// TraceOptions tune a Trace.
type TraceOptions struct {
	// Interval between uploads until the server asks for another (3s when zero).
	Interval time.Duration
	// ForceSendInterval: with no new output for this long, a state update is sent
	// anyway, so GitLab knows the job is alive and a cancellation is noticed (30s
	// when zero).
	ForceSendInterval time.Duration
	// Limit bounds the log in bytes (output_limit); 0 means 4 MiB.
	Limit int
	// OnStop is called once when GitLab wants the job stopped (cause ErrJobCanceled
	// or ErrJobGone).
	OnStop func(cause error)
	// Logger receives upload problems; it should name the job.
	Logger *slog.Logger
}

// Trace is a job log that is uploaded to GitLab as it grows: every Interval the bytes
// not yet sent go in one PATCH whose Content-Range starts where the server's copy
// ends. A 416 answer moves the start to the server's length and sends again; 403
// stops the job; X-GitLab-Trace-Update-Interval changes the interval.
type Trace struct {
	c     *Client
	job   *Job
	opts  TraceOptions
	log   *slog.Logger
	mu    sync.Mutex
	buf   []byte
	sent  int
	full  bool
	every time.Duration
	last  time.Time // last successful contact with the server
	wake  chan struct{}
	stop  chan struct{}
	done  chan struct{}
	once  sync.Once
	sonce sync.Once
}

// NewTrace returns the trace of job; Start begins uploading.
func (c *Client) NewTrace(job *Job, o TraceOptions) *Trace {
	if o.Interval <= 0 {
		o.Interval = 3 * time.Second
	}
	if o.ForceSendInterval <= 0 {
		o.ForceSendInterval = 30 * time.Second
	}
	if o.Limit <= 0 {
		o.Limit = 4 << 20
	}
	lg := o.Logger
	if lg == nil {
		lg = slog.Default().With("job", job.GitLabID)
	}
	return &Trace{c: c, job: job, opts: o, log: lg, every: o.Interval, last: time.Now(),
		wake: make(chan struct{}, 1), stop: make(chan struct{}), done: make(chan struct{})}
}

// Write appends to the log; it never fails, so a slow server never blocks the job.
// Past the limit output is dropped, with one notice in the log.
func (t *Trace) Write(p []byte) (int, error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.full {
		return len(p), nil
	}
	if room := t.opts.Limit - len(t.buf); len(p) > room {
		t.buf = append(t.buf, p[:max(room, 0)]...)
		t.buf = append(t.buf, fmt.Sprintf("\n\x1b[31;1mJob's log exceeded limit of %d bytes.\nJob execution will continue but no more output will be collected.\x1b[0;m\n", t.opts.Limit)...)
		t.full = true
		return len(p), nil
	}
	t.buf = append(t.buf, p...)
	return len(p), nil
}

// Bytes returns a copy of the whole log.
func (t *Trace) Bytes() []byte {
	t.mu.Lock()
	defer t.mu.Unlock()
	return append([]byte(nil), t.buf...)
}

// Interval returns the current upload interval (the server may have changed it).
func (t *Trace) Interval() time.Duration {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.every
}

// Output returns the checksum and size GitLab checks the final trace against.
func (t *Trace) Output() *Output {
	t.mu.Lock()
	defer t.mu.Unlock()
	return &Output{Checksum: fmt.Sprintf("crc32:%08x", crc32.ChecksumIEEE(t.buf)), Bytesize: len(t.buf)}
}

// Start uploads in the background until Finish.
func (t *Trace) Start(ctx context.Context) {
	go func() {
		defer close(t.done)
		for {
			t.mu.Lock()
			every := t.every
			t.mu.Unlock()
			timer := time.NewTimer(every)
			select {
			case <-t.stop:
				timer.Stop()
				return
			case <-ctx.Done():
				timer.Stop()
				return
			case <-timer.C:
			case <-t.wake:
				timer.Stop()
			}
			t.tick(ctx)
		}
	}()
}

func (t *Trace) tick(ctx context.Context) {
	t.mu.Lock()
	pending := len(t.buf) - t.sent
	idle := time.Since(t.last)
	t.mu.Unlock()
	if pending > 0 {
		if err := t.send(ctx); err != nil {
			t.log.Warn("uploading job log", "error", err)
		}
		return
	}
	if idle >= t.opts.ForceSendInterval {
		// A silent job: tell GitLab it is alive, and learn whether it was canceled.
		r, err := t.c.UpdateJob(ctx, t.job.GitLabID, UpdateRequest{Token: t.job.Token, State: "running"})
		if err != nil {
			t.log.Warn("keep-alive update", "error", err)
			return
		}
		t.result(r)
	}
}

func (t *Trace) result(r UpdateResult) {
	t.mu.Lock()
	if r.UpdateInterval > 0 {
		t.every = r.UpdateInterval
	}
	if r.Accepted {
		t.last = time.Now()
	}
	t.mu.Unlock()
	switch {
	case r.Gone:
		t.stopJob(ErrJobGone)
	case r.Canceling:
		t.stopJob(ErrJobCanceled)
	}
}

func (t *Trace) stopJob(cause error) {
	t.sonce.Do(func() {
		t.log.Info("GitLab stopped the job", "reason", cause)
		if t.opts.OnStop != nil {
			t.opts.OnStop(cause)
		}
	})
}

// send uploads everything not yet sent, following the server's range on 416.
func (t *Trace) send(ctx context.Context) error {
	for attempt := 0; attempt < 3; attempt++ {
		t.mu.Lock()
		from := t.sent
		chunk := append([]byte(nil), t.buf[from:]...)
		t.mu.Unlock()
		if len(chunk) == 0 {
			return nil
		}
		r, err := t.c.PatchTrace(ctx, t.job.GitLabID, t.job.Token, from, chunk)
		if errors.Is(err, ErrRangeMismatch) {
			t.mu.Lock()
			// Resend from where the server's copy ends; if it claims more than we
			// have, it lost track entirely: start over from zero (trace_reset).
			if r.RemoteLength >= 0 && r.RemoteLength <= len(t.buf) {
				t.sent = r.RemoteLength
			} else {
				t.sent = 0
			}
			t.mu.Unlock()
			continue
		}
		if err != nil {
			return err
		}
		t.result(r)
		if r.Gone {
			return ErrJobGone
		}
		t.mu.Lock()
		t.sent = from + len(chunk)
		t.mu.Unlock()
		return nil
	}
	return fmt.Errorf("upload job log: the server's trace range kept changing")
}

// Finish stops the background uploads and sends what is left, retrying with back-off
// until it is accepted, the job is gone, or ctx ends.
func (t *Trace) Finish(ctx context.Context, backoff func(attempt int) time.Duration) error {
	t.once.Do(func() { close(t.stop) })
	<-t.done
	for attempt := 0; ; attempt++ {
		err := t.send(ctx)
		if err == nil || errors.Is(err, ErrJobGone) {
			return err
		}
		t.log.Warn("uploading the rest of the job log", "error", err, "attempt", attempt+1)
		select {
		case <-ctx.Done():
			return fmt.Errorf("upload job log: %w (last error: %v)", ctx.Err(), err)
		case <-time.After(backoff(attempt)):
		}
	}
}
