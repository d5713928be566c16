package pluginclient

import (
	"strings"
	"testing"
)

func TestTailIsBoundedAndKeepsTheCrashReport(t *testing.T) {
	// Whatever a plugin writes, the tail holds its line limits, not the input.
	const maxHeld = (tailKeep + crashLines + 1) * (maxLineBytes + 16)
	tests := []struct {
		name   string
		writes []string
		want   string // String()
	}{
		{"last lines without a crash", []string{"a\nb\nc\nd\ne\nf\n"}, "b\nc\nd\ne\nf"},
		{"a line split across writes", []string{"hel", "lo\nwor", "ld\n"}, "hello\nworld"},
		{"the panic line survives a long stack trace",
			[]string{"{\"@level\":\"info\"}\npanic: boom\n\ngoroutine 1 [running]:\n", strings.Repeat("main.f()\n\tf.go:1\n", 100)},
			"panic: boom\n\ngoroutine 1 [running]:\nmain.f()\n\tf.go:1\nmain.f()\n\tf.go:1\nmain.f()"},
		{"fatal error", []string{"fatal error: concurrent map writes\n"}, "fatal error: concurrent map writes"},
		{"a huge line without a newline", []string{strings.Repeat("x", 10<<20)}, ""},
		{"a huge line is cut", []string{strings.Repeat("x", 10<<20), "\nend\n"},
			strings.Repeat("x", maxLineBytes) + " …(cut)\nend"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var tl tail
			for _, w := range tt.writes {
				if n, err := tl.Write([]byte(w)); n != len(w) || err != nil {
					t.Fatalf("Write = %d, %v; want %d, nil", n, err, len(w))
				}
			}
			if got := tl.String(); got != tt.want {
				t.Errorf("String() = %q\nwant %q", got, tt.want)
			}
			held := cap(tl.partial)
			for _, l := range append(tl.lines, tl.crash...) {
				held += len(l)
			}
			if held > maxHeld {
				t.Errorf("the tail holds %d bytes; want at most %d", held, maxHeld)
			}
		})
	}
}
