package executors

import (
	"bytes"
	"fmt"
	"math/rand/v2"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/flotilla-ci/flotilla/sdk/eventually"
	"github.com/flotilla-ci/flotilla/sdk/syncbuf"
)

func TestMaskWriter(t *testing.T) {
	tests := []struct {
		name    string
		secrets []string
		chunks  []string
		want    string
	}{
		{"whole", []string{"hunter2"}, []string{"pw=hunter2\n"}, "pw=[MASKED]\n"},
		{"split across writes", []string{"hunter2"}, []string{"pw=hun", "ter2 ok"}, "pw=[MASKED] ok"},
		{"byte by byte", []string{"s3cr3t"}, strings.Split("a s3cr3t b", ""), "a [MASKED] b"},
		{"overlapping secrets, longest wins", []string{"abc", "abcdef"}, []string{"xabcdefx abc"}, "x[MASKED]x [MASKED]"},
		{"secret at the very end", []string{"tail"}, []string{"the tail"}, "the [MASKED]"},
		{"no secrets", nil, []string{"plain"}, "plain"},
		{"partial prefix is kept", []string{"hunter2"}, []string{"hunt"}, "hunt"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var out bytes.Buffer
			w := NewMaskWriter(&out, tt.secrets)
			for _, c := range tt.chunks {
				if _, err := w.Write([]byte(c)); err != nil {
					t.Fatal(err)
				}
			}
			if err := w.Close(); err != nil {
				t.Fatal(err)
			}
			if out.String() != tt.want {
				t.Errorf("got %q, want %q", out.String(), tt.want)
			}
		})
	}
}

// logSink is the job log as a reader of it sees it: safe for the writes the quiet-period
// timer makes, and able to wait for some text with a deadline.
type logSink struct{ syncbuf.Buffer }

// waitFor polls until the log is want, without writing anything more.
func (s *logSink) waitFor(t *testing.T, want string) {
	t.Helper()
	eventually.NoError(t, fmt.Sprintf("log %q without further output", want), 10*time.Second, func() error {
		if got := s.String(); got != want {
			return fmt.Errorf("log is %q", got)
		}
		return nil
	})
}

// TestMaskWriterNeverHoldsALine: output that cannot be the start of a secret is written
// at once; the start of a secret at the end of the output is written after a short
// quiet period, with no further output; both without Close.
func TestMaskWriterNeverHoldsALine(t *testing.T) {
	var log logSink
	w := NewMaskWriter(&log, []string{"hunter2", "s3cr3t"})
	defer w.Close()
	if _, err := w.Write([]byte("line one\n")); err != nil {
		t.Fatal(err)
	}
	if got := log.String(); got != "line one\n" {
		t.Fatalf("after a line the log is %q: bytes held back that cannot be a secret", got)
	}
	if _, err := w.Write([]byte("progress: hu")); err != nil {
		t.Fatal(err)
	}
	if got := log.String(); got != "line one\nprogress: " {
		t.Fatalf("log = %q, want the start of a possible secret held back", got)
	}
	log.waitFor(t, "line one\nprogress: hu")
}

// TestMaskWriterSecretAcrossAPause: the rest of a secret that comes after its start was
// written (quiet period or Flush) is still replaced: the whole secret never appears.
func TestMaskWriterSecretAcrossAPause(t *testing.T) {
	quiet := func(_ *MaskWriter, log *logSink, want string) { log.waitFor(t, want) }
	flush := func(w *MaskWriter, _ *logSink, _ string) { _ = w.Flush() }
	tests := []struct {
		name        string
		pause       func(w *MaskWriter, log *logSink, want string)
		first, then string
		paused      string // the log after the pause
		want        string
	}{
		{"quiet period", quiet, "pw=hun", "ter2 ok\n", "pw=hun", "pw=hun[MASKED] ok\n"},
		{"flush", flush, "pw=hun", "ter2 ok\n", "pw=hun", "pw=hun[MASKED] ok\n"},
		{"flush, then not the secret", flush, "pw=hun", "gry\n", "pw=hun", "pw=hungry\n"},
		{"flush after a shorter secret", flush, "x abc", "def y", "x [MASKED]", "x [MASKED][MASKED] y"},
		{"flush in a longer secret", flush, "x abcdef", "gh y", "x [MASKED][MASKED]", "x [MASKED][MASKED][MASKED] y"},
		{"flush in a longer secret, then not it", flush, "x abcdef", "zz", "x [MASKED][MASKED]", "x [MASKED][MASKED]zz"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var log logSink
			w := NewMaskWriter(&log, []string{"hunter2", "abc", "abcdefgh", "def"})
			if _, err := w.Write([]byte(tt.first)); err != nil {
				t.Fatal(err)
			}
			tt.pause(w, &log, tt.paused)
			if got := log.String(); got != tt.paused {
				t.Fatalf("after the pause the log is %q, want %q", got, tt.paused)
			}
			if _, err := w.Write([]byte(tt.then)); err != nil {
				t.Fatal(err)
			}
			if err := w.Close(); err != nil {
				t.Fatal(err)
			}
			if got := log.String(); got != tt.want {
				t.Errorf("log = %q, want %q", got, tt.want)
			}
		})
	}
}

// redactAll is the reference: every secret replaced, left to right, longest first.
func redactAll(s string, secrets []string) string {
	slices.SortFunc(secrets, func(a, b string) int { return len(b) - len(a) })
	var b strings.Builder
	for i := 0; i < len(s); {
		n := 0
		for _, sec := range secrets {
			if sec != "" && strings.HasPrefix(s[i:], sec) {
				n = len(sec)
				break
			}
		}
		if n > 0 {
			b.WriteString(Masked)
			i += n
			continue
		}
		b.WriteByte(s[i])
		i++
	}
	return b.String()
}

// TestMaskWriterRandom: however the output is split, it is redacted as a whole; with
// flushes in between, no secret ever appears whole.
func TestMaskWriterRandom(t *testing.T) {
	r := rand.New(rand.NewPCG(7, 11))
	word := func(n int) string {
		b := make([]byte, n)
		for i := range b {
			b[i] = "abc"[r.IntN(3)]
		}
		return string(b)
	}
	for trial := range 20000 {
		secrets := make([]string, 1+r.IntN(3))
		for i := range secrets {
			secrets[i] = word(1 + r.IntN(5))
		}
		text := word(r.IntN(40))
		flushes := r.IntN(2) == 0
		var log logSink
		w := NewMaskWriter(&log, secrets)
		for rest := text; len(rest) > 0; {
			n := 1 + r.IntN(len(rest))
			_, _ = w.Write([]byte(rest[:n]))
			rest = rest[n:]
			if flushes && r.IntN(2) == 0 {
				_ = w.Flush()
			}
		}
		_ = w.Close()
		got := log.String()
		if !flushes {
			if want := redactAll(text, slices.Clone(secrets)); got != want {
				t.Fatalf("trial %d: secrets %q, text %q: got %q, want %q", trial, secrets, text, got, want)
			}
			continue
		}
		for _, s := range secrets {
			if strings.Contains(got, s) {
				t.Fatalf("trial %d: secrets %q, text %q: %q shows %q", trial, secrets, text, got, s)
			}
		}
	}
}
